"""Comparison protections (blur, mosaic, additive noise), in normalised space or on 8-bit pixels.

The first group takes a normalised batch [B, C, H, W] and a strength. The literature's variants
(SPEC-2 15.1, privacy-reid's data loader) work on the resized 8-bit image: ``exact_pixels``
recovers it from the normalised batch, ``mosaic_topleft``, ``pil_gaussian_blur`` and
``pixel_noise`` apply the operation to uint8 pixels, and ``engine.methods.codec.dequantize`` normalises
the result with the data loader's arithmetic. ``engine.methods`` registers all of them, so
PixelFade and the baselines are scored through the same pipeline.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torchvision.transforms.functional import gaussian_blur as _torchvision_blur

from configs.checks import is_number
from engine.methods.base import METHODS, ProtectedBatch, ProtectionMethod
from engine.methods.codec import dequantize, quantize_to_uint8
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


def exact_pixels(images, mean, std):
    """The uint8 image [B, C, H, W] that ``images`` were normalised from, checked to round-trip.

    Raises ConfigError when normalising the recovered pixels does not give ``images`` back bit
    for bit: the inputs were not made from 8-bit images with this INPUT.PIXEL_MEAN / PIXEL_STD.
    """
    _check_images(images, "exact_pixels")
    pixels = quantize_to_uint8(images, mean, std)
    if not torch.equal(dequantize(pixels, mean, std).to(images.dtype), images):
        raise ConfigError(
            "INPUT.PIXEL_MEAN / INPUT.PIXEL_STD: the 8-bit baselines need images normalised from 8-bit pixels with "
            f"mean {tuple(mean)} and std {tuple(std)}; these images do not round-trip"
        )
    return pixels


def mosaic_topleft(pixels, block):
    """Each ``block x block`` cell (partial at the right/bottom edge) filled with its top-left pixel."""
    _check_pixels(pixels, "mosaic_topleft")
    _check_block(block)
    height, width = pixels.shape[-2:]
    corners = pixels[..., ::block, ::block]
    filled = corners.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return filled[..., :height, :width].contiguous()


def pil_gaussian_blur(pixels, radius):
    """PIL's ``ImageFilter.GaussianBlur(radius)`` on each RGB uint8 image (radius = PIL's sigma)."""
    _check_pixels(pixels, "pil_gaussian_blur")
    _check_sigma(radius)
    blurred = []
    for image in pixels.cpu():
        array = image.permute(1, 2, 0).contiguous().numpy()
        result = Image.fromarray(array, "RGB").filter(ImageFilter.GaussianBlur(radius=radius))
        blurred.append(torch.from_numpy(np.array(result)).permute(2, 0, 1))
    return torch.stack(blurred).to(pixels.device)


def pixel_noise(pixels, std, generator=None):
    """``uint8(clip(p / 255 + N(0, std), 0, 1) * 255)`` in float64, truncating as ``np.uint8`` does.

    The draw is a float64 normal of the generator (the global CPU stream when None), on the CPU.
    """
    _check_pixels(pixels, "pixel_noise")
    _check_std(std)
    noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float64)
    noisy = (pixels.cpu().double() / 255.0 + std * noise).clamp(0.0, 1.0)
    return (noisy * 255.0).to(torch.uint8).to(pixels.device)


def on_pixels(images, mean, std, operation):
    """Apply a uint8 ``operation`` to the 8-bit image behind a normalised batch; normalise the result."""
    return dequantize(operation(exact_pixels(images, mean, std)), mean, std).to(images.dtype)


def _check_pixels(pixels, function):
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.dtype != torch.uint8 or pixels.shape[1] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"{function} expects a uint8 tensor [B, 3, H, W], got {shape}")


def _check_sigma(sigma):
    if not is_number(sigma) or not 0 < sigma < float("inf"):
        raise ConfigError(f"gaussian_blur sigma (PIXELFADE.BLUR_SIGMA) must be a positive number, got {sigma!r}")


def _check_block(block):
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"mosaic block (PIXELFADE.MOSAIC_BLOCK) must be a positive integer, got {block!r}")


def _check_std(std):
    if not is_number(std) or not 0 <= std < float("inf"):
        raise ConfigError(f"additive_noise std (PIXELFADE.NOISE_STD) must be a non-negative number, got {std!r}")


def _check_images(images, function):
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{function} expects a float tensor [B, C, H, W], got {shape}")


class _ImageFilter(ProtectionMethod):
    """A comparison method that applies ``filter`` with the strength in ``cfg.PIXELFADE.<strength_key>``."""

    strength_key = ""

    def __init__(self, model, cfg, device, rank=0):
        super().__init__(model, cfg, device, rank)
        self.strength = cfg.PIXELFADE[self.strength_key]
        self._stream_ready()

    def __call__(self, original, indices):
        return ProtectedBatch(self.filter(original), None)

    def passes_per_image(self):
        return {"forward": 0, "backward": 0}


@METHODS.register("blur")
class GaussianBlur(_ImageFilter):
    """Gaussian blur of PIXELFADE.BLUR_SIGMA (normalised space)."""

    strength_key = "BLUR_SIGMA"

    def filter(self, original):
        return gaussian_blur(original, self.strength)


@METHODS.register("mosaic")
class Mosaic(_ImageFilter):
    """Pixelation into PIXELFADE.MOSAIC_BLOCK cells."""

    strength_key = "MOSAIC_BLOCK"

    def filter(self, original):
        return mosaic(original, self.strength)


@METHODS.register("noise")
class AdditiveNoise(_ImageFilter):
    """Gaussian noise of std PIXELFADE.NOISE_STD added in normalised units, from the run's stream."""

    strength_key = "NOISE_STD"

    def filter(self, original):
        return additive_noise(original, self.strength, generator=self.generator)


class _PixelFilter(_ImageFilter):
    """A literature baseline with a fixed strength, applied to the 8-bit image behind the batch."""

    def __init__(self, model, cfg, device, rank=0):
        ProtectionMethod.__init__(self, model, cfg, device, rank)
        self.mean, self.std = tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD)
        self._stream_ready()

    def filter(self, original):
        return on_pixels(original, self.mean, self.std, self.pixel_filter)


@METHODS.register("mosaic24_topleft")
class MosaicTopLeft(_PixelFilter):
    """privacy-reid's mosaic 24: each 24 x 24 cell filled with its top-left pixel."""

    def pixel_filter(self, pixels):
        return mosaic_topleft(pixels, 24)


@METHODS.register("blur12_pil")
class PilBlur(_PixelFilter):
    """privacy-reid's blur 12: PIL GaussianBlur(radius=12)."""

    def pixel_filter(self, pixels):
        return pil_gaussian_blur(pixels, 12.0)


@METHODS.register("noise0.5_uint8")
class PixelNoise(_PixelFilter):
    """privacy-reid's noise 0.5: N(0, 0.5) on [0, 1] pixels from the run's stream, clipped, to uint8."""

    def pixel_filter(self, pixels):
        return pixel_noise(pixels, 0.5, generator=self.generator)
