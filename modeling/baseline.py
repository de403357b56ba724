"""AGW Re-ID model: backbone -> GeM (or average) pooling -> BNNeck -> optional classifier."""
from torch import nn

from .layers.gem_pool import GeneralizedMeanPooling


class Baseline(nn.Module):
    """The authorization model f of PixelFade.

    Eval mode returns the BNNeck feature (B, in_planes), the feature PixelFade constrains and
    Re-ID ranks with. Train mode returns (classifier logits, pooled feature) as the AGW recipe
    trains it, and therefore needs ``num_classes > 0``.

    A backbone returning a feature map (B, C, H, W) is pooled by ``global_pool``; one returning
    an already pooled (B, C) tensor (mobilenet) goes straight to the BNNeck, as in the paper's
    code, while ``global_pool`` (and its ``p``) stays in the model and its state dict.
    """

    def __init__(self, backbone, num_classes=0, generalized_mean_pool=True, in_planes=2048):
        super().__init__()
        self.base = backbone
        self.in_planes = in_planes
        self.num_classes = num_classes
        self.global_pool = GeneralizedMeanPooling() if generalized_mean_pool else nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.BatchNorm1d(in_planes)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)
        if num_classes > 0:
            self.classifier = nn.Linear(in_planes, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)

    @property
    def feature_dim(self):
        """Length of the eval-mode feature: the BNNeck size (``in_planes``)."""
        return self.bottleneck.num_features

    def forward(self, x):
        trunk = self.base(x)
        pooled = trunk if trunk.dim() == 2 else self.global_pool(trunk).flatten(1)
        feature = self.bottleneck(pooled)
        if not self.training:
            return feature
        if self.num_classes <= 0:
            raise RuntimeError(
                "Baseline built with num_classes=0 has no classifier; call .eval() for features "
                "or build it with num_classes > 0 to train"
            )
        return self.classifier(feature), pooled
