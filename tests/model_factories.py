"""Small Re-ID-like networks for the tests: model-format fixtures (MODEL.FACTORY points here) and a tiny backbone."""
import torch
from torch import nn


class TinyReID(nn.Module):
    """Conv -> BN -> ReLU -> pool -> linear: a 16-d feature, deterministic from a fixed seed."""

    def __init__(self):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 2, 16)
        torch.random.set_rng_state(generator_state)
        self.pool = nn.AdaptiveAvgPool2d((4, 2))
        self.eval()

    def forward(self, images):
        return self.features(images)

    def features(self, images):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(images)))).flatten(1))


class NormalizingReID(TinyReID):
    """Takes pixels in [0, 255] and normalises them itself, like an export with preprocessing inside."""

    def forward(self, pixels):
        mean = torch.tensor([0.485, 0.456, 0.406], device=pixels.device).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device=pixels.device).view(1, 3, 1, 1) * 255
        return self.features((pixels - mean) / std)


def tiny_reid():
    return TinyReID()


class TinyBackbone(nn.Module):
    """Two strided convs: a 32-channel feature map, fast enough for whole training runs in a test."""

    out_channels = 32

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())

    def forward(self, x):
        return self.body(x)


def register_tiny_backbone(name):
    """``name`` as a MODEL.NAME building :class:`TinyBackbone` (once per process)."""
    from modeling.backbones import BACKBONES, register_backbone

    if name not in BACKBONES:
        register_backbone(name)(lambda last_stride: TinyBackbone())
    return name
