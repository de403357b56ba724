"""fast-reid's ResNet-50 backbone (``build_resnet_backbone``) with torchvision key names.

Built from the toolkit's ``Bottleneck``/``ResNet`` (``modeling.backbones``) with fast-reid's
differences:

* the stem keeps its ReLU (conv1 -> bn1 -> ReLU -> max-pool);
* the stem max-pool is 3x3/2 with ``ceil_mode=True, padding=0`` since fast-reid v1.0.0 (commit
  42cadae, 2020-11-06), and 3x3/2 with ``padding=1`` up to v0.1.1. The weights cannot tell the two
  apart, so the caller chooses (``MODEL.FASTREID_MAXPOOL``: ``ceil`` or ``pad``);
* IBN-a (``WITH_IBN``): ``bn1`` of every block of stages 1-3 is half InstanceNorm, half BatchNorm
  (keys ``bn1.IN.*`` / ``bn1.BN.*``); stage 4 keeps plain ``bn1``;
* SE (``WITH_SE``): every block of all four stages rescales its ``bn3`` output channels, before the
  residual sum, by sigmoid(Linear(ReLU(Linear(global average)))) with bias-free Linear layers
  C -> C/16 -> C (keys ``se.fc.0.weight``, ``se.fc.2.weight``);
* non-local blocks (``WITH_NL``, R50: (0, 2, 3, 0)) after the last 2 blocks of stage 2 and the last
  3 of stage 3, keys ``NL_2.{0,1}.*`` and ``NL_3.{0,1,2}.*``, one inter channel.
"""
from torch import nn

from ..backbones.resnet import RESNET_DEPTHS, Bottleneck
from ..backbones.resnet_ibn_a import IBN
from ..backbones.resnet_nl import ResNetNL

MAXPOOL_VARIANTS = ("ceil", "pad")
R50_NON_LOCAL = (0, 2, 3, 0)
SE_REDUCTION = 16


def stem_maxpool(variant):
    """The stem max-pool of fast-reid >= v1.0.0 (``ceil``) or <= v0.1.1 (``pad``)."""
    if variant == "ceil":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    if variant == "pad":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    raise ValueError(f"max-pool variant must be one of {MAXPOOL_VARIANTS}, got {variant!r}")


class SELayer(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(W2 relu(W1 mean_hw(x))), W1: C -> C/16, W2: C/16 -> C, no biases."""

    def __init__(self, channels, reduction=SE_REDUCTION):
        super().__init__()
        hidden = int(channels / reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class SEBottleneck(Bottleneck):
    """Bottleneck whose bn3 output is rescaled by an SE layer before the residual sum."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__(inplanes, planes, stride, downsample)
        self.se = SELayer(planes * self.expansion)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


class FastReIDResNet(ResNetNL):
    """fast-reid's ResNet with the stem ReLU, a chosen stem max-pool and optional IBN / SE / NL.

    Without ``with_nl`` the ``NL_k`` lists are empty (no keys), so the plain variants have exactly
    torchvision's keys minus ``fc``.
    """

    stem_relu = True

    def __init__(self, layers=RESNET_DEPTHS["resnet50"], last_stride=1, maxpool="ceil",
                 with_ibn=False, with_se=False, with_nl=False, non_local_counts=R50_NON_LOCAL):
        self.with_ibn = bool(with_ibn)  # read by _make_block during ResNet.__init__
        self.with_se = bool(with_se)
        self.with_nl = bool(with_nl)
        counts = tuple(non_local_counts) if with_nl else (0, 0, 0, 0)
        super().__init__(layers, last_stride, non_local_counts=counts, inter_channels=1)
        self.maxpool_variant = maxpool
        self.maxpool = stem_maxpool(maxpool)

    def _make_block(self, inplanes, planes, stride, downsample):
        block_class = SEBottleneck if self.with_se else Bottleneck
        block = block_class(inplanes, planes, stride, downsample)
        if self.with_ibn and planes != 512:  # IBN in stages 1-3 only
            block.bn1 = IBN(planes)
        return block
