"""torchreid's ResNet-50 (``torchreid/models/resnet.py``) with its module names, classifier left out.

Keys are torchvision's (``conv1``, ``bn1``, ``layerK.j.conv1-3`` / ``bn1-3``,
``layerK.0.downsample.{0,1}``), plus ``fc.0`` / ``fc.1`` for ``resnet50_fc512``. Unlike the AGW
ResNet of ``modeling.backbones`` the stem keeps its ReLU, and ``resnet50`` keeps last stride 2.

* ``resnet50``: 2048-d global-average-pooled layer4 output, no BN (``fc`` is None, no ``fc`` keys);
* ``resnet50_fc512``: last stride 1, then ``fc`` = [Linear(2048 -> 512), BatchNorm1d, ReLU], 512-d.
"""
from torch import nn
from torch.nn import functional as F

from .osnet import embedding_head, init_torchreid_params

RESNET50_LAYERS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """torchvision v1 bottleneck: the stride sits on the 3x3 ``conv2``."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """torchreid ResNet with Bottleneck blocks; ``fc_dim`` None keeps the pooled 2048-d feature."""

    def __init__(self, layers=RESNET50_LAYERS, last_stride=2, fc_dim=None):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], last_stride)
        if fc_dim is None:
            self.fc = None
            self.feature_dim = self.inplanes
        else:
            self.fc = embedding_head(self.inplanes, fc_dim)
            self.feature_dim = fc_dim
        init_torchreid_params(self)

    def _make_layer(self, planes, blocks, stride):
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        stage = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        stage += [Bottleneck(out_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def featuremaps(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        v = F.adaptive_avg_pool2d(self.featuremaps(x), 1).flatten(1)
        return v if self.fc is None else self.fc(v)


def resnet50():
    """torchreid ``resnet50``: last stride 2, 2048-d pooled feature."""
    return ResNet(RESNET50_LAYERS, last_stride=2, fc_dim=None)


def resnet50_fc512():
    """torchreid ``resnet50_fc512``: last stride 1, 512-d fc embedding."""
    return ResNet(RESNET50_LAYERS, last_stride=1, fc_dim=512)
