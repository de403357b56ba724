"""Image-quality metrics of the recovery attack: PSNR, SSIM (piq, data_range 1) and MSE.

Two protocols:
- the reference's: each *batch tensor* is min-max scaled to [0, 1] on its own (candidate and
  original separately), then piq's batch means; the caller weights them by batch size;
- pixel space: undo the run's normalisation (INPUT.PIXEL_MEAN/STD), clamp to [0, 1], score each image.

PSNR of identical images is finite: piq adds 1e-8 to the MSE, so it is capped at
``PSNR_CAP_DB`` = 80 dB.

piq asserts its inputs lie in [0, data_range]; everything handed to it here is checked first
(shape, size, finite values) and scaled or clamped into [0, 1], so no piq assertion can surface.

``ImageQuality`` is the ignite Metric that scores batches under both protocols for an evaluator
Engine (the recovery attack's test split, README "recovery_attack.py").
"""
import math

import piq
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from data.transforms import denormalize
from utils.errors import NonFiniteError

PSNR_CAP_DB = -10.0 * math.log10(1e-8)
METRIC_NAMES = ("psnr", "ssim", "mse")
# The two protocols, as named in attack_results.json.
PROTOCOLS = ("reference_normalisation", "pixel_space")
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
    """ImageNet-normalized images -> what a viewer sees: pixel values clamped to [0, 1]."""
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


class ImageQuality(Metric):
    """ignite Metric: candidate images of each kind vs the originals, under both protocols.

    ``update((candidates, originals))`` takes ``{kind: B x C x H x W}`` and the B x C x H x W
    originals, all in the normalized space (``mean``, ``std``: INPUT.PIXEL_MEAN / PIXEL_STD);
    the reference protocol weights each batch's means by its image count, pixel space averages
    per image. ``compute()`` returns ``{'num_images': n, protocol: {kind: {metric: mean}}}``,
    stored whole under the metric's name (``metrics_result_mode='named'``).

    With ``groups`` (an output key such as 'modality'), each output also names the group of every
    image (or None), and the record adds ``per_<groups>``: {group: such a record of its images}, the
    reference protocol scaling each group's rows of a batch on their own. Infrared images are darker
    and simpler than visible ones, so one overall number hides the difference.
    """

    def __init__(self, kinds, mean, std, output_transform=lambda output: output, groups=None):
        self.kinds = tuple(kinds)
        self.mean, self.std = mean, std
        self.groups = groups
        self.required_output_keys = ("candidates", "original") + ((groups,) if groups else ())
        super().__init__(output_transform=output_transform, skip_unrolling=True,
                         metrics_result_mode="named")

    @reinit__is_reduced
    def reset(self):
        self._meters = {}

    def _meter(self, group, protocol, kind):
        return self._meters.setdefault((group, protocol, kind), QualityAccumulator())

    def _add(self, groups, kind, candidate, originals):
        """Score one batch (or a group's rows of it) once, into the meters of every group in ``groups``."""
        reference = reference_batch_metrics(candidate, originals)
        per_image = pixel_space_metrics(candidate, originals, self.mean, self.std)
        for group in groups:
            self._meter(group, "reference_normalisation", kind).add_batch_means(reference, originals.shape[0])
            self._meter(group, "pixel_space", kind).add_per_image(per_image)

    @reinit__is_reduced
    def update(self, output):
        candidates, originals, *labels = output
        rows_of = image_groups(labels[0] if labels else None)
        for kind in self.kinds:
            if len(rows_of) == 1:  # a batch of one group (visible-infrared batches never mix): scored once
                self._add((None, *rows_of.keys()), kind, candidates[kind], originals)
                continue
            self._add((None,), kind, candidates[kind], originals)
            for group, rows in rows_of.items():
                self._add((group,), kind, candidates[kind][rows], originals[rows])

    def _record(self, group):
        record = {"num_images": self._meters[group, "pixel_space", self.kinds[0]].count}
        for protocol in PROTOCOLS:
            record[protocol] = {kind: self._meters[group, protocol, kind].means() for kind in self.kinds}
        return record

    def compute(self):
        if (None, "pixel_space", self.kinds[0]) not in self._meters:
            raise NotComputableError("ImageQuality needs at least one batch before it can be "
                                     "computed")
        record = self._record(None)
        groups = sorted({group for group, _, _ in self._meters if group is not None})
        if groups:
            record[f"per_{self.groups}"] = {group: self._record(group) for group in groups}
        return record


def image_groups(labels):
    """{group: row indices (a LongTensor)} of one batch's per-image group labels; {} for None."""
    if labels is None:
        return {}
    labels = [str(label) for label in labels]
    return {group: torch.tensor([row for row, label in enumerate(labels) if label == group], dtype=torch.long)
            for group in sorted(set(labels))}
