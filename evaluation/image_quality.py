"""Image-quality metrics of the recovery attack: PSNR, SSIM (piq, data_range 1) and MSE.

Two protocols:
- the reference's: each *batch tensor* is min-max scaled to [0, 1] on its own (candidate and
  original separately), then piq's batch means; the caller weights them by batch size;
- pixel space: undo the ImageNet normalisation, clamp to [0, 1], score each image.

PSNR of identical images is finite: piq adds 1e-8 to the MSE, so it is capped at
``PSNR_CAP_DB`` = 80 dB.

piq asserts its inputs lie in [0, data_range]; everything handed to it here is checked first
(shape, size, finite values) and scaled or clamped into [0, 1], so no piq assertion can surface.
"""
import math

import piq
import torch

from data.transforms import denormalize
from utils.errors import NonFiniteError

PSNR_CAP_DB = -10.0 * math.log10(1e-8)
METRIC_NAMES = ("psnr", "ssim", "mse")
# piq's SSIM uses an 11 x 11 Gaussian window without padding: smaller images have no SSIM.
SSIM_KERNEL_SIZE = 11
DATA_RANGE = 1.0


def min_max_scale(batch):
    """The whole tensor scaled to [0, 1]; a constant tensor (no range) maps to zeros."""
    low, high = batch.min(), batch.max()
    span = high - low
    if span == 0:
        return torch.zeros_like(batch)
    return ((batch - low) / span).clamp_(0.0, 1.0)


def reference_batch_metrics(candidate, original):
    """{'psnr', 'ssim', 'mse'} batch means after the reference's per-batch min-max scaling."""
    _check_pair(candidate, original)
    candidate = min_max_scale(candidate.detach().float())
    original = min_max_scale(original.detach().float())
    _check_unit_range(candidate, original)
    return {
        "psnr": float(piq.psnr(candidate, original, data_range=DATA_RANGE, reduction="mean")),
        "ssim": float(piq.ssim(candidate, original, data_range=DATA_RANGE, reduction="mean")),
        "mse": float(torch.mean((candidate - original) ** 2)),
    }


def to_pixels(images, mean, std):
    """ImageNet-normalised images -> what a viewer sees: pixel values clamped to [0, 1]."""
    return denormalize(images, mean, std).clamp(0.0, 1.0)


def pixel_space_metrics(candidate, original, mean, std):
    """Per-image {'psnr', 'ssim', 'mse'} tensors (shape B) of normalised inputs, in pixel space."""
    _check_pair(candidate, original)
    candidate = to_pixels(candidate.detach().float(), mean, std)
    original = to_pixels(original.detach().float(), mean, std)
    _check_unit_range(candidate, original)
    return {
        "psnr": piq.psnr(candidate, original, data_range=DATA_RANGE, reduction="none"),
        "ssim": piq.ssim(candidate, original, data_range=DATA_RANGE, reduction="none"),
        "mse": torch.mean((candidate - original) ** 2, dim=(1, 2, 3)),
    }


def _check_pair(candidate, original):
    """Shapes piq accepts and finite values; raised before anything reaches piq."""
    if candidate.shape != original.shape or candidate.dim() != 4:
        raise ValueError("image-quality metrics need two B x C x H x W tensors of one shape, got "
                         f"{tuple(candidate.shape)} and {tuple(original.shape)}")
    if min(candidate.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_KERNEL_SIZE} x {SSIM_KERNEL_SIZE} "
                         f"pixels, got {tuple(candidate.shape[-2:])}")
    for name, images in (("candidate", candidate), ("original", original)):
        if not bool(torch.isfinite(images).all()):
            raise NonFiniteError(f"the {name} images hold NaN or infinite values; image-quality "
                                 "metrics need finite images")


def _check_unit_range(*tensors):
    """What piq asserts, as a ValueError (a bug here): values within [0, DATA_RANGE]."""
    for images in tensors:
        if bool(images.min() < 0) or bool(images.max() > DATA_RANGE):
            raise ValueError(f"image-quality inputs must lie in [0, {DATA_RANGE}] after scaling, "
                             f"got [{float(images.min())}, {float(images.max())}]")


class QualityAccumulator:
    """Image-weighted means of metrics given per batch (means x size) or per image."""

    def __init__(self):
        self.sums = {name: 0.0 for name in METRIC_NAMES}
        self.count = 0

    def add_batch_means(self, metrics, batch_size):
        """Add a batch's mean metrics weighted by its image count (the reference's average)."""
        for name in METRIC_NAMES:
            self.sums[name] += float(metrics[name]) * batch_size
        self.count += batch_size

    def add_per_image(self, metrics):
        """Add per-image metric tensors of one batch."""
        sizes = {int(metrics[name].numel()) for name in METRIC_NAMES}
        if len(sizes) != 1:
            raise ValueError(f"per-image metrics of unequal lengths: {sorted(sizes)}")
        for name in METRIC_NAMES:
            self.sums[name] += float(metrics[name].double().sum())
        self.count += sizes.pop()

    def means(self):
        """{'psnr', 'ssim', 'mse'} averaged over all images added; empty -> ValueError."""
        if self.count == 0:
            raise ValueError("no images were added to the quality accumulator")
        return {name: self.sums[name] / self.count for name in METRIC_NAMES}
