"""torchreid's OSNet (Zhou et al., ICCV 2019) with its module names, for its zoo and training files.

Written from the structure of ``KaiyangZhou/deep-person-reid:torchreid/models/osnet.py``;
the state-dict keys are torchreid's exactly, minus ``classifier.*`` (the training
identities, which feature extraction never uses):

* ``conv1.conv.weight``, ``conv1.bn.*``: 7x7/2 stem (its ``bn`` is an affine InstanceNorm2d in
  ``osnet_ibn_x1_0``), then a 3x3/2 max-pool;
* ``conv2`` = [OSBlock, OSBlock, transition], ``conv3`` the same, ``conv4`` = [OSBlock, OSBlock];
  a transition ``convK.2`` is Conv1x1 + AvgPool2d(2, 2) (keys ``convK.2.0.conv/bn``);
* ``conv5``: Conv1x1 (conv + BN + ReLU) at the last width;
* ``fc`` = [Linear(c -> 512), BatchNorm1d(512), ReLU] after global average pooling.

Eval output: the 512-d ``fc`` output after BN and ReLU (non-negative, not L2-normalised), at every
width. Nothing is downloaded: the layers start from torchreid's random initialisation.
"""
import torch
from torch import nn
from torch.nn import functional as F

from ..layers.init import NORMS_2D, init_reid_weights

# channels of the stem, conv2, conv3 and conv4/conv5 per width (torchreid's osnet_x* factories).
OSNET_CHANNELS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}
EMBEDDING_DIM = 512
BOTTLENECK_REDUCTION = 4  # OSBlock: mid channels = out / 4
GATE_REDUCTION = 16  # ChannelGate: hidden channels = mid // 16


class ConvLayer(nn.Module):
    """conv (no bias) -> norm -> ReLU; ``instance_norm`` makes the norm an affine InstanceNorm2d.

    The norm is called ``bn`` whichever it is, as in torchreid. Used for the stem and, with a 1x1
    kernel, for torchreid's ``Conv1x1``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, instance_norm=False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def conv1x1(in_channels, out_channels):
    """torchreid's ``Conv1x1``: 1x1 conv + BN + ReLU (keys ``conv.weight``, ``bn.*``)."""
    return ConvLayer(in_channels, out_channels, 1)


class Conv1x1Linear(nn.Module):
    """1x1 conv (no bias) followed by BN, no activation; ``bn=False`` leaves the conv alone."""

    def __init__(self, in_channels, out_channels, bn=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None

    def forward(self, x):
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


class LightConv3x3(nn.Module):
    """1x1 conv (linear) -> depthwise 3x3 conv -> BN -> ReLU, none of the convs with a bias."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, groups=out_channels)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Channel weights from the input itself: GAP -> fc1 (1x1, bias) -> ReLU -> fc2 -> sigmoid; x * gate."""

    def __init__(self, channels, reduction=GATE_REDUCTION):
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


def light_stream(channels, depth):
    """``depth`` LightConv3x3 in a row (receptive field 3 + 2 * (depth - 1))."""
    return nn.Sequential(*(LightConv3x3(channels, channels) for _ in range(depth)))


class OSBlock(nn.Module):
    """Omni-scale residual block: four streams of 1-4 LightConv3x3 share one ChannelGate.

    ``conv2a`` is one LightConv3x3 (not a Sequential), ``conv2b``/``conv2c``/``conv2d`` are
    Sequentials of 2/3/4. ``instance_norm`` adds ``IN`` (affine InstanceNorm2d) after the residual
    sum, before the final ReLU (the IBN variant's conv2 blocks).
    """

    def __init__(self, in_channels, out_channels, instance_norm=False):
        super().__init__()
        mid = out_channels // BOTTLENECK_REDUCTION
        self.conv1 = conv1x1(in_channels, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = light_stream(mid, 2)
        self.conv2c = light_stream(mid, 3)
        self.conv2d = light_stream(mid, 4)
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, out_channels)
        self.downsample = Conv1x1Linear(in_channels, out_channels) if in_channels != out_channels else None
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = sum(self.gate(stream(x1)) for stream in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(x2) + identity
        if self.IN is not None:
            out = self.IN(out)
        return F.relu(out)


def transition(channels):
    """Conv1x1 then 2x2 average pooling: halves the map between stages (``convK.2.0.*``)."""
    return nn.Sequential(conv1x1(channels, channels), nn.AvgPool2d(2, stride=2))


def embedding_head(in_channels, dim=EMBEDDING_DIM):
    """torchreid's ``fc``: Linear(in -> dim, bias) -> BatchNorm1d(dim) -> ReLU (keys ``fc.0``, ``fc.1``)."""
    return nn.Sequential(nn.Linear(in_channels, dim), nn.BatchNorm1d(dim), nn.ReLU())


def init_torchreid_params(module):
    """torchreid's ``_init_params``: He-normal fan_out convs (zero bias), norms 1/0, Linear N(0, 0.01) / 0."""
    init_reid_weights(module, norms=(nn.BatchNorm1d, *NORMS_2D), linear_std=0.01)


class OSNetTrunk(nn.Module):
    """OSNet from the stem to ``conv5``: (B, 3, H, W) -> (B, c3, H/16, W/16), not initialised.

    ``ibn`` gives the stem an InstanceNorm and adds ``IN`` to conv2's two OSBlocks (osnet_ibn_x1_0).
    With :func:`init_torchreid_params` this is PixelFade's ``osnet`` backbone (torchreid's OSNet
    without ``fc``/``classifier``).
    """

    def __init__(self, channels, ibn=False):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.out_channels = c3
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3, instance_norm=ibn)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Sequential(OSBlock(c0, c1, ibn), OSBlock(c1, c1, ibn), transition(c1))
        self.conv3 = nn.Sequential(OSBlock(c1, c2), OSBlock(c2, c2), transition(c2))
        self.conv4 = nn.Sequential(OSBlock(c2, c3), OSBlock(c3, c3))
        self.conv5 = conv1x1(c3, c3)

    def featuremaps(self, x):
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def forward(self, x):
        return self.featuremaps(x)


class OSNet(OSNetTrunk):
    """torchreid OSNet without its classifier: (B, 3, H, W) -> the 512-d ``fc`` embedding.

    The forward is the same in train and eval mode (there are no logits: this model only
    extracts features); ``feature_dim`` is 512.
    """

    def __init__(self, channels, ibn=False):
        super().__init__(channels, ibn)
        self.fc = embedding_head(self.out_channels)
        self.feature_dim = EMBEDDING_DIM
        init_torchreid_params(self)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.featuremaps(x), 1).flatten(1))


def osnet(width, ibn=False):
    """torchreid ``osnet_<width>`` (``osnet_ibn_x1_0`` with ``ibn``), classifier left out."""
    return OSNet(OSNET_CHANNELS[width], ibn=ibn)
