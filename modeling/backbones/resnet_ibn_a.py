"""ResNet-50-IBN-a: half instance-norm, half batch-norm after conv1 of the blocks of stages 1-3.

Unlike the plain AGW ResNet, the IBN-a stem keeps its ReLU (as the reference and the IBN-Net
ImageNet weights do). State-dict keys: ``layerK.j.bn1.IN.*`` / ``layerK.j.bn1.BN.*`` in stages
1-3, plain ``bn1.*`` in stage 4; no ``fc``.
"""
import torch
from torch import nn

from .registry import register_backbone
from .resnet import RESNET_DEPTHS, Bottleneck, ResNet


class IBN(nn.Module):
    """Instance-normalise the first half of the channels, batch-normalise the rest."""

    def __init__(self, planes):
        super().__init__()
        self.half = planes // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


class ResNetIBNa(ResNet):
    """ResNet-50 whose blocks in stages 1-3 normalise conv1 with IBN; the stem keeps its ReLU."""

    stem_relu = True

    def _make_block(self, inplanes, planes, stride, downsample):
        block = Bottleneck(inplanes, planes, stride, downsample)
        if planes != 512:
            block.bn1 = IBN(planes)
        return block


@register_backbone("resnet50_ibn_a")
def resnet50_ibn_a(last_stride):
    return ResNetIBNa(RESNET_DEPTHS["resnet50"], last_stride)
