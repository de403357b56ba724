"""What storing a protected image as an 8-bit PNG does to it: the quantisation a PNG file applies, and back.

PixelFade optimises in normalised float space; a storage service keeps 8-bit images. These
functions quantise exactly as a PNG file would (denormalise, clamp to [0, 1], round to 1/255) so
Re-ID can be scored on what a service would really read back.
"""
from dataclasses import dataclass

import torch

from data.transforms import denormalize, normalize


def quantize_to_uint8(images, mean, std):
    """Normalised float batch (B,3,H,W) -> uint8 pixels as a lossless PNG stores them."""
    pixels = denormalize(images.detach().float(), mean, std).clamp_(0.0, 1.0)
    return torch.round(pixels * 255.0).to(torch.uint8)


def dequantize(pixels, mean, std):
    """uint8 pixels (B,3,H,W) -> the normalised float batch the Re-ID model reads."""
    return normalize(pixels.float() / 255.0, mean, std)


@dataclass(frozen=True)
class PixelCodec:
    """The 8-bit pixels a viewer or a storage service sees, and back, for one mean/std."""

    mean: tuple
    std: tuple

    def to_pixels(self, images):
        return quantize_to_uint8(images, self.mean, self.std)

    def to_input(self, pixels):
        return dequantize(pixels, self.mean, self.std)
