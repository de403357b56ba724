"""Comparison protections (blur, mosaic, additive noise) in normalised image space.

Each takes a batch [B, C, H, W] and a strength and returns a protected batch of the same shape;
``engine.methods`` registers them as protection methods, so PixelFade and the baselines are
scored through the same pipeline.
"""
import math

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur as _torchvision_blur

from utils.errors import ConfigError


def gaussian_blur(images, sigma):
    """Gaussian blur with reflect padding and kernel size ``2 * ceil(3 sigma) + 1``.

    Reflect padding needs the half-kernel below the image size, so the kernel is capped per axis
    at ``2 * (size - 1) + 1`` (only for images smaller than the blur itself).
    """
    _check_images(images, "gaussian_blur")
    _check_sigma(sigma)
    kernel = 2 * math.ceil(3 * sigma) + 1
    height, width = images.shape[-2:]
    kernel_size = [min(kernel, 2 * width - 1), min(kernel, 2 * height - 1)]
    return _torchvision_blur(images, kernel_size=kernel_size, sigma=[float(sigma), float(sigma)])


def mosaic(images, block):
    """Pixelate: each ``block x block`` cell (partial at the right/bottom edge) becomes its mean."""
    _check_images(images, "mosaic")
    _check_block(block)
    height, width = images.shape[-2:]
    cells = F.avg_pool2d(images, kernel_size=block, stride=block, ceil_mode=True)
    upsampled = cells.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return upsampled[..., :height, :width].contiguous()


def additive_noise(images, std, generator=None):
    """Add Gaussian noise of ``std`` in normalised units.

    Drawn on the generator's device (the global CPU stream when None) and moved to the images'
    device, so a seeded CPU generator gives the same noise on every device.
    """
    _check_images(images, "additive_noise")
    _check_std(std)
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
    return images + std * noise.to(images.device)


def _check_sigma(sigma):
    if not _is_number(sigma) or not 0 < sigma < float("inf"):
        raise ConfigError(f"gaussian_blur sigma (PIXELFADE.BLUR_SIGMA) must be a positive number, got {sigma!r}")


def _check_block(block):
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"mosaic block (PIXELFADE.MOSAIC_BLOCK) must be a positive integer, got {block!r}")


def _check_std(std):
    if not _is_number(std) or not 0 <= std < float("inf"):
        raise ConfigError(f"additive_noise std (PIXELFADE.NOISE_STD) must be a non-negative number, got {std!r}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_images(images, function):
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{function} expects a float tensor [B, C, H, W], got {shape}")
