"""SE-ResNet, SE-ResNeXt and SENet-154 trunks laid out like Cadene's ``pretrainedmodels`` SENet.

PixelFade (through ReID-Survey / reid-strong-baseline) keeps Cadene's module names, so its
checkpoints hold ``base.layer0.conv1.weight``, ``base.layer0.bn1.*`` (SENet-154: ``conv1..3`` and
``bn1..3``), then ``base.layer{1-4}.{j}.conv{1,2,3}.weight``, ``.bn{1,2,3}.*``,
``.se_module.fc{1,2}.{weight,bias}`` and ``.downsample.{0,1}.*``. The classification head
(``avg_pool``, ``dropout``, ``last_linear``) is left out: it has no part in the Re-ID feature, and
``avg_pool``/``dropout`` hold no weights anyway.

Architecture facts kept from the Caffe-converted originals:

* stem: 7x7/2 conv (SENet-154: three 3x3 convs, the first with stride 2) -> BN -> ReLU, then
  ``MaxPool2d(3, 2, ceil_mode=True)`` without padding;
* SE-ResNet blocks stride their first 1x1 conv; SE-ResNeXt (32 groups, width
  ``floor(planes * 4 / 64) * 32``) and SENet-154 (64 groups) blocks stride the grouped 3x3 conv;
* squeeze-and-excitation (1x1 convs with bias, reduction 16) rescales the bn3 output before the
  residual addition;
* projection shortcuts are 1x1 convs, except SENet-154 stages 2-4 which use 3x3 with padding 1;
* the stride of stage 4 is ``last_stride`` (1 in the Re-ID recipe: a 16x8 map at 256x128).
"""
import math
from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from .registry import register_backbone
from .resnet import init_resnet_weights

SE_REDUCTION = 16
EXPANSION = 4


class SEModule(nn.Module):
    """Channel gate: global average -> 1x1 conv (C -> C/r) -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels, reduction):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1)

    def forward(self, x):
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = self.fc2(F.relu(self.fc1(gate), inplace=True))
        return x * gate.sigmoid()


class _SEBlock(nn.Module):
    """conv1-bn1-relu, conv2-bn2-relu, conv3-bn3, SE, + shortcut, relu (shared by all three kinds)."""

    def _build(self, inplanes, width1, width2, planes, groups, reduction, conv1_stride,
               conv2_stride, downsample):
        out_planes = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, width1, kernel_size=1, stride=conv1_stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width1)
        self.conv2 = nn.Conv2d(width1, width2, kernel_size=3, stride=conv2_stride, padding=1,
                               groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width2)
        self.conv3 = nn.Conv2d(width2, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.se_module = SEModule(out_planes, reduction)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.se_module(self.bn3(self.conv3(out)))
        return F.relu(out + shortcut, inplace=True)


class SEResNetBottleneck(_SEBlock):
    """SE-ResNet block (Caffe style): the stride sits on the first 1x1 conv."""

    def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None):
        super().__init__()
        self._build(inplanes, planes, planes, planes, groups, reduction, stride, 1, downsample)


class SEResNeXtBottleneck(_SEBlock):
    """SE-ResNeXt block (type C, base width 4): grouped 3x3 conv carrying the stride."""

    def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None, base_width=4):
        super().__init__()
        width = math.floor(planes * base_width / 64) * groups
        self._build(inplanes, width, width, planes, groups, reduction, 1, stride, downsample)


class SEBottleneck(_SEBlock):
    """SENet-154 block: 1x1 to 2*planes, grouped 3x3 (stride) to 4*planes, 1x1 to 4*planes."""

    def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None):
        super().__init__()
        self._build(inplanes, planes * 2, planes * 4, planes, groups, reduction, 1, stride,
                    downsample)


class SENet(nn.Module):
    """``layer0`` stem and four SE stages; forward returns the stage-4 map (B, 2048, H/16, W/16).

    ``input_3x3`` selects the SENet-154 stem (three 3x3 convs ending at ``inplanes`` channels);
    ``downsample_kernel_size``/``downsample_padding`` apply to the shortcuts of stages 2-4 (stage 1
    always uses a 1x1 projection).
    """

    def __init__(self, block, layers, groups, reduction=SE_REDUCTION, inplanes=64, input_3x3=False,
                 downsample_kernel_size=1, downsample_padding=0, last_stride=1):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.inplanes = inplanes
        if input_3x3:
            stem = [
                ("conv1", nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)),
                ("bn1", nn.BatchNorm2d(64)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False)),
                ("bn2", nn.BatchNorm2d(64)),
                ("relu2", nn.ReLU(inplace=True)),
                ("conv3", nn.Conv2d(64, inplanes, 3, stride=1, padding=1, bias=False)),
                ("bn3", nn.BatchNorm2d(inplanes)),
                ("relu3", nn.ReLU(inplace=True)),
            ]
        else:
            stem = [
                ("conv1", nn.Conv2d(3, inplanes, 7, stride=2, padding=3, bias=False)),
                ("bn1", nn.BatchNorm2d(inplanes)),
                ("relu1", nn.ReLU(inplace=True)),
            ]
        # Caffe weights: ceil_mode instead of padding (different windows at the borders).
        stem.append(("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)))
        self.layer0 = nn.Sequential(OrderedDict(stem))
        stage_args = dict(block=block, groups=groups, reduction=reduction)
        self.layer1 = self._make_layer(planes=64, blocks=layers[0], stride=1, kernel=1, padding=0,
                                       **stage_args)
        shortcut = dict(kernel=downsample_kernel_size, padding=downsample_padding)
        self.layer2 = self._make_layer(planes=128, blocks=layers[1], stride=2, **shortcut, **stage_args)
        self.layer3 = self._make_layer(planes=256, blocks=layers[2], stride=2, **shortcut, **stage_args)
        self.layer4 = self._make_layer(planes=512, blocks=layers[3], stride=last_stride, **shortcut,
                                       **stage_args)
        self.out_channels = self.inplanes
        init_resnet_weights(self)

    def _make_layer(self, block, planes, blocks, groups, reduction, stride, kernel, padding):
        out_planes = planes * EXPANSION
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=kernel, stride=stride,
                          padding=padding, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        stage = [block(self.inplanes, planes, groups, reduction, stride, downsample)]
        self.inplanes = out_planes
        stage += [block(out_planes, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.layer0(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return x


# name -> (block, blocks per stage, groups): the SE-ResNet and SE-ResNeXt depths.
SE_VARIANTS = {
    "se_resnet50": (SEResNetBottleneck, (3, 4, 6, 3), 1),
    "se_resnet101": (SEResNetBottleneck, (3, 4, 23, 3), 1),
    "se_resnet152": (SEResNetBottleneck, (3, 8, 36, 3), 1),
    "se_resnext50": (SEResNeXtBottleneck, (3, 4, 6, 3), 32),
    "se_resnext101": (SEResNeXtBottleneck, (3, 4, 23, 3), 32),
}


def _se_variant(block, layers, groups):
    def build(last_stride):
        return SENet(block, layers, groups=groups, last_stride=last_stride)
    return build


for _name, (_block, _layers, _groups) in SE_VARIANTS.items():
    register_backbone(_name)(_se_variant(_block, _layers, _groups))


@register_backbone("senet154")
def senet154(last_stride):
    return SENet(SEBottleneck, (3, 8, 36, 3), groups=64, inplanes=128, input_3x3=True,
                 downsample_kernel_size=3, downsample_padding=1, last_stride=last_stride)
