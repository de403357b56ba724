"""pix2pix's 'normal' initialization, which the reference attack uses for its generator."""
from torch import nn

INIT_GAIN = 0.02


def init_pix2pix_weights(module, gain=INIT_GAIN):
    """Conv and linear weights ~ N(0, gain), biases 0; BatchNorm weights ~ N(1, gain), biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
    return module
