"""What storing a protected image as an 8-bit PNG does to it, and writing such PNGs durably.

PixelFade optimises in normalised float space; a storage service keeps 8-bit images. These
functions quantise exactly as a PNG file would (denormalise, clamp to [0, 1], round to 1/255) so
Re-ID can be scored on what a service would really read back.
"""
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from data.transforms import denormalize, normalize
from utils.file_io import atomic_save_image


def quantize_to_uint8(images, mean, std):
    """Normalised float batch (B,3,H,W) -> uint8 pixels as a lossless PNG stores them."""
    pixels = denormalize(images.detach().float(), mean, std).clamp_(0.0, 1.0)
    return torch.round(pixels * 255.0).to(torch.uint8)


def dequantize(pixels, mean, std):
    """uint8 pixels (B,3,H,W) -> the normalised float batch the Re-ID model reads."""
    return normalize(pixels.float() / 255.0, mean, std)


def write_png(pixels, path):
    """Write one uint8 (3,H,W) image losslessly and atomically (no half-written file on a crash)."""
    atomic_save_image(Image.fromarray(pixels.cpu().permute(1, 2, 0).numpy()), path)


def read_png(path):
    """Read a PNG written by ``write_png`` back as uint8 (3,H,W)."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class PixelCodec:
    """The 8-bit pixels a viewer or a storage service sees, and back, for one mean/std."""

    mean: tuple
    std: tuple

    def to_pixels(self, images):
        return quantize_to_uint8(images, self.mean, self.std)

    def to_input(self, pixels):
        return dequantize(pixels, self.mean, self.std)
