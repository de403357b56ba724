"""The random start of the Re-ID backbones: He-normal convolutions, unit-scale norms, optional N(0, std) linears.

One pass over ``module.modules()`` in order, so the random draws (and a seeded model's weights) do not
depend on which backbone family asks.
"""
from torch import nn

NORMS_2D = (nn.BatchNorm2d, nn.InstanceNorm2d)


def init_reid_weights(module, norms=NORMS_2D, linear_std=None):
    """He-normal (fan_out) convs with zero bias; ``norms`` with affine weights to 1/0; Linear to N(0, std)/0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, norms) and layer.affine:
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif linear_std is not None and isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0, linear_std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
