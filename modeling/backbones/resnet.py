"""ResNet with Bottleneck blocks, laid out like torchvision but with the AGW stem.

The AGW/PixelFade stem is conv1 -> bn1 -> maxpool with no ReLU (the reference comments the ReLU
out); the released weights were trained that way, so it is kept to reproduce their features.
State-dict keys equal torchvision's minus ``fc.*``.
"""
from torch import nn

from ..layers.init import init_reid_weights
from .registry import register_backbone

RESNET_DEPTHS = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 residual block with 4x channel expansion."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Four Bottleneck stages; ``last_stride`` 1 keeps a 16x8 map for a 256x128 input."""

    stem_relu = False

    def __init__(self, layers, last_stride=1):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=last_stride)
        self.out_channels = self.inplanes
        init_resnet_weights(self)

    def _make_block(self, inplanes, planes, stride, downsample):
        return Bottleneck(inplanes, planes, stride, downsample)

    def _make_layer(self, planes, blocks, stride):
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        stage = [self._make_block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        stage += [self._make_block(out_planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def stem(self, x):
        x = self.bn1(self.conv1(x))
        if self.stem_relu:
            x = nn.functional.relu(x, inplace=True)
        return self.maxpool(x)

    def forward(self, x):
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return x


def init_resnet_weights(module):
    """He-normal (fan_out) convolutions, unit-scale zero-shift norms: a trainable random start."""
    init_reid_weights(module)


@register_backbone("resnet50")
def resnet50(last_stride):
    return ResNet(RESNET_DEPTHS["resnet50"], last_stride)


@register_backbone("resnet101")
def resnet101(last_stride):
    return ResNet(RESNET_DEPTHS["resnet101"], last_stride)


@register_backbone("resnet152")
def resnet152(last_stride):
    return ResNet(RESNET_DEPTHS["resnet152"], last_stride)
