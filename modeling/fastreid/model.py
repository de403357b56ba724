"""fast-reid's ``Baseline`` meta-architecture at evaluation: backbone -> pooling -> BNNeck.

State-dict keys equal those of current fast-reid (``backbone.*``, ``heads.pool_layer.p``,
``heads.bottleneck.0.*``) minus the classifier and the ``pixel_mean``/``pixel_std`` buffers, so a
load report names keys the way the user's file does.
"""
from torch import nn

from ..layers.gem_pool import GeneralizedMeanPooling, generalized_mean
from .resnet import FastReIDResNet

# Head pooling: global average (Base-bagtricks), GeM with fixed p = 3 (fast-reid
# ``GeneralizedMeanPooling``, Base-AGW) or GeM with a learnable p (``GeneralizedMeanPoolingP``,
# key ``heads.pool_layer.p``: Base-SBS, and v0.1.1's ``gempool``).
POOLINGS = ("avg", "gem", "gem_p")
FIXED_GEM_P = 3.0
GEM_EPS = 1e-6


class FixedGeM(nn.Module):
    """GeM with a constant exponent (no state-dict key): (mean_hw clamp(x, eps)^p)^(1/p)."""

    def __init__(self, p=FIXED_GEM_P, eps=GEM_EPS):
        super().__init__()
        self.p = float(p)
        self.eps = eps

    def forward(self, x):
        return generalized_mean(x, self.p, self.eps)

    def extra_repr(self):
        return f"p={self.p} (fixed), eps={self.eps}"


def pooling_layer(kind):
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "gem":
        return FixedGeM()
    if kind == "gem_p":
        return GeneralizedMeanPooling(initial_p=FIXED_GEM_P, eps=GEM_EPS)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")


class EmbeddingHead(nn.Module):
    """Pooling, then the BNNeck: a BatchNorm2d on the (B, C, 1, 1) pooled map (fast-reid freezes
    its bias in training). Returns the BNNeck output (B, C), which fast-reid's eval returns
    whatever ``NECK_FEAT`` says."""

    def __init__(self, channels=2048, pooling="avg"):
        super().__init__()
        self.pooling = pooling
        self.pool_layer = pooling_layer(pooling)
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(channels))
        nn.init.ones_(self.bottleneck[0].weight)
        nn.init.zeros_(self.bottleneck[0].bias)

    def set_pooling(self, kind):
        if kind != self.pooling:
            self.pool_layer = pooling_layer(kind)
            self.pooling = kind

    def forward(self, x):
        return self.bottleneck(self.pool_layer(x)).flatten(1)


class FastReIDModel(nn.Module):
    """Eval-mode fast-reid R50 Re-ID model: (B, 3, H, W) normalised input -> (B, 2048) BNNeck feature."""

    def __init__(self, architecture, last_stride=1, maxpool="ceil", pooling="avg",
                 with_ibn=False, with_se=False, with_nl=False):
        super().__init__()
        self.architecture = architecture
        self.backbone = FastReIDResNet(last_stride=last_stride, maxpool=maxpool, with_ibn=with_ibn,
                                       with_se=with_se, with_nl=with_nl)
        self.feature_dim = int(self.backbone.out_channels)
        self.heads = EmbeddingHead(self.feature_dim, pooling)
        self.eval()

    @property
    def pooling(self):
        return self.heads.pooling

    def set_pooling(self, kind):
        """Swap the head pooling (``avg``, ``gem``, ``gem_p``); the loader does this from the keys."""
        self.heads.set_pooling(kind)

    def forward(self, x):
        return self.heads(self.backbone(x))
