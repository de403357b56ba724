"""torchreid's OSNet-AIN (``torchreid/models/osnet_ain.py``) with its module names, classifier left out.

Differences from :mod:`.osnet` (torchreid's osnet_ain.py), all visible in the keys:

* the stem norm ``conv1.bn`` is an affine InstanceNorm2d (weight and bias only);
* a block's four streams are ``conv2.{t}.layers.{k}.*`` (stream t has t+1 LightConv3x3);
* the transitions are separate modules ``pool2`` / ``pool3`` (``pool2.0.conv``, ``pool2.0.bn``);
* stage blocks: conv2 = [INin, INin], conv3 = [OSBlock, INin], conv4 = [INin, OSBlock], where an
  INin block has ``conv3.conv`` with no BN and ``IN`` normalising that output inside the residual.

Head and eval output as OSNet: GAP -> ``fc`` (Linear -> BN1d -> ReLU), 512-d, non-negative.
"""
from torch import nn
from torch.nn import functional as F

from .osnet import (
    EMBEDDING_DIM,
    OSNET_CHANNELS,
    BOTTLENECK_REDUCTION,
    ChannelGate,
    Conv1x1Linear,
    ConvLayer,
    conv1x1,
    embedding_head,
    init_torchreid_params,
    light_stream,
    transition,
)

NUM_STREAMS = 4


class LightConvStream(nn.Module):
    """``depth`` LightConv3x3 under the name ``layers`` (keys ``layers.{k}.conv1/conv2/bn``)."""

    def __init__(self, channels, depth):
        super().__init__()
        self.layers = light_stream(channels, depth)

    def forward(self, x):
        return self.layers(x)


class OSBlockAIN(nn.Module):
    """OSNet-AIN block; ``instance_norm`` makes it torchreid's ``OSBlockINin``.

    OSBlockINin: ``conv3`` is a bare 1x1 conv and ``IN`` (affine InstanceNorm2d) normalises its
    output before the residual sum. Plain OSBlock: ``conv3`` is conv + BN, no ``IN``.
    """

    def __init__(self, in_channels, out_channels, instance_norm):
        super().__init__()
        mid = out_channels // BOTTLENECK_REDUCTION
        self.conv1 = conv1x1(in_channels, mid)
        self.conv2 = nn.ModuleList(LightConvStream(mid, depth) for depth in range(1, NUM_STREAMS + 1))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, out_channels, bn=not instance_norm)
        self.downsample = Conv1x1Linear(in_channels, out_channels) if in_channels != out_channels else None
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = sum(self.gate(stream(x1)) for stream in self.conv2)
        x3 = self.conv3(x2)
        if self.IN is not None:
            x3 = self.IN(x3)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(x3 + identity)


def _stage(in_channels, out_channels, instance_norms):
    blocks = [OSBlockAIN(in_channels, out_channels, instance_norms[0])]
    blocks += [OSBlockAIN(out_channels, out_channels, flag) for flag in instance_norms[1:]]
    return nn.Sequential(*blocks)


class OSNetAIN(nn.Module):
    """torchreid OSNet-AIN without its classifier: (B, 3, H, W) -> the 512-d ``fc`` embedding."""

    def __init__(self, channels):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3, instance_norm=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c0, c1, (True, True))
        self.pool2 = transition(c1)
        self.conv3 = _stage(c1, c2, (False, True))
        self.pool3 = transition(c2)
        self.conv4 = _stage(c2, c3, (True, False))
        self.conv5 = conv1x1(c3, c3)
        self.fc = embedding_head(c3)
        self.feature_dim = EMBEDDING_DIM
        init_torchreid_params(self)

    def featuremaps(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        return self.conv5(self.conv4(x))

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.featuremaps(x), 1).flatten(1))


def osnet_ain(width):
    """torchreid ``osnet_ain_<width>``, classifier left out."""
    return OSNetAIN(OSNET_CHANNELS[width])
