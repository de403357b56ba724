"""pix2pix U-Net generator (unet_128: 7 downsamplings, unet_256: 8).

The module tree mirrors pix2pix (``model.model.<i>...``) so state dicts written by the reference
attack load unchanged. Where the reference resizes inputs whose width is not 128 to 128x128 (and
back), this one pads to a multiple of 2**num_downs and crops, so the image is never resampled.
Activations are in place as in pix2pix: the LeakyReLU that opens each inner block rewrites its
input, so the skip connection carries the activated features.
"""
import functools

import torch
from torch import nn

from .padding import PaddedGenerator
from .registry import GENERATORS

MIN_DOWNSAMPLINGS = 5


class UnetSkipBlock(nn.Module):
    """One U-Net level: downsample, inner levels, upsample; inner levels concatenate a skip."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, output_activation=None):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(True), upconv]
            if output_activation is not None:
                layers.append(output_activation)
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=False)
            layers = [nn.LeakyReLU(0.2, True), downconv,
                      nn.ReLU(True), upconv, nn.BatchNorm2d(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1,
                                        bias=False)
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.BatchNorm2d(inner_nc), submodule,
                      nn.ReLU(True), upconv, nn.BatchNorm2d(outer_nc)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(PaddedGenerator):
    """U-Net with ``num_downs`` stride-2 levels; inputs are padded to a multiple of 2**num_downs."""

    def __init__(self, num_downs, input_nc=3, output_nc=3, ngf=64, output_activation=None):
        if num_downs < MIN_DOWNSAMPLINGS:
            raise ValueError(f"a U-Net generator needs at least {MIN_DOWNSAMPLINGS} downsamplings, "
                             f"got {num_downs}")
        super().__init__(size_factor=2 ** num_downs)
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - MIN_DOWNSAMPLINGS):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                   outermost=True, output_activation=output_activation)


# pix2pix's unet_128 and unet_256: 7 or 8 downsamplings (inputs padded to a multiple of 128 or 256).
for _size, _downsamplings in ((128, 7), (256, 8)):
    GENERATORS.register(f"unet_{_size}")(functools.partial(UnetGenerator, _downsamplings))
