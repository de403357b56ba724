"""pix2pix ResNet generator: 7x7 stem, 2 stride-2 convs, n residual blocks, 2 transposed convs.

The module tree mirrors pix2pix (``model.<i>`` and ``model.<i>.conv_block.<j>``) so the reference's
state dicts load unchanged. Reflection padding inside, as in pix2pix.
"""
import functools

from torch import nn

from .padding import PaddedGenerator
from .registry import GENERATORS

NUM_DOWNSAMPLINGS = 2


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, BN, ReLU, pad, conv3x3, BN)(x)."""

    def __init__(self, channels):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(PaddedGenerator):
    """Image-to-image ResNet; inputs are padded to a multiple of 4 (its total stride)."""

    def __init__(self, n_blocks, input_nc=3, output_nc=3, ngf=64, output_activation=None):
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        super().__init__(size_factor=2 ** NUM_DOWNSAMPLINGS)
        layers = [nn.ReflectionPad2d(3),
                  nn.Conv2d(input_nc, ngf, kernel_size=7, bias=False),
                  nn.BatchNorm2d(ngf),
                  nn.ReLU(True)]
        for level in range(NUM_DOWNSAMPLINGS):
            channels = ngf * 2 ** level
            layers += [nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1,
                                 bias=False),
                       nn.BatchNorm2d(channels * 2),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 2 ** NUM_DOWNSAMPLINGS) for _ in range(n_blocks)]
        for level in range(NUM_DOWNSAMPLINGS, 0, -1):
            channels = ngf * 2 ** level
            layers += [nn.ConvTranspose2d(channels, channels // 2, kernel_size=3, stride=2,
                                          padding=1, output_padding=1, bias=False),
                       nn.BatchNorm2d(channels // 2),
                       nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7)]
        if output_activation is not None:
            layers.append(output_activation)
        self.model = nn.Sequential(*layers)


# pix2pix's resnet_6blocks and resnet_9blocks: 6 or 9 residual blocks between the down- and upsamplings.
for _blocks in (6, 9):
    GENERATORS.register(f"resnet_{_blocks}blocks")(functools.partial(ResnetGenerator, _blocks))
