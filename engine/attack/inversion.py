"""White-box feature inversion: the attacker holds the authorization model f and, for each protected
image x_p, searches the image x whose feature f(x) matches f(x_p) (Mahendran & Vedaldi, CVPR 2015;
SPEC-2 13.2).

Objective per image, x in pixel space [0, 1]:
    ||f(n(x)) - f(x_p)||^2 / ||f(x_p)||^2 + TV_WEIGHT * TV_2(x),
with n the normalisation f expects and TV_2 the mean over pixels of squared horizontal plus vertical
differences (beta = 2, which M&V prefer for CNN features: beta 1 leaves spikes). Adapted from M&V:
their alpha-norm bound is replaced by keeping pixels in [0, 1] after every step; Adam replaces
their momentum SGD (feature scales differ between Re-ID models, and Adam's step does not depend
on them); their 400-step schedule shape is kept (lr x1 for the first quarter, x0.1 for the middle
half, x0.01 for the last quarter). The images of a batch are independent: the loss is their sum.
"""
import time

import torch

from data.transforms import normalize
from evaluation.image_quality import to_pixels

# Learning-rate multipliers over the steps: (share of the steps at which it starts, multiplier).
LR_SCHEDULE = ((0.0, 1.0), (0.25, 0.1), (0.75, 0.01))


def total_variation(pixels):
    """Per-image TV with beta 2: mean over pixels of squared right and down differences (N values)."""
    right = (pixels[..., :-1, 1:] - pixels[..., :-1, :-1]).pow(2)
    down = (pixels[..., 1:, :-1] - pixels[..., :-1, :-1]).pow(2)
    return (right + down).flatten(1).mean(dim=1)


def relative_feature_error(features, target):
    """||features - target||^2 / ||target||^2 per image (N values)."""
    return (features - target).pow(2).sum(dim=1) / target.pow(2).sum(dim=1).clamp_min(1e-12)


def lr_multiplier(step, steps):
    multiplier = 1.0
    for start, value in LR_SCHEDULE:
        if step >= start * steps:
            multiplier = value
    return multiplier


def invert_features(model, target_features, start_pixels, mean, std, steps, lr, tv_weight):
    """Pixels x (N x C x H x W in [0, 1]) whose features match ``target_features``, from ``start_pixels``.

    Returns (pixels, {'feature_error_start', 'feature_error_end': per-image relative errors,
    'forward', 'backward': passes of f per image}). ``model`` takes normalised images.
    """
    pixels = start_pixels.detach().clone().clamp_(0.0, 1.0).requires_grad_(True)
    target = target_features.detach()
    optimizer = torch.optim.Adam([pixels], lr=lr)
    with torch.no_grad():
        start_error = relative_feature_error(model(normalize(pixels, mean, std)), target)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_multiplier(step, steps)
        features = model(normalize(pixels, mean, std))
        loss = (relative_feature_error(features, target) + tv_weight * total_variation(pixels)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0.0, 1.0)
    with torch.no_grad():
        end_error = relative_feature_error(model(normalize(pixels, mean, std)), target)
    return pixels.detach(), {"feature_error_start": start_error, "feature_error_end": end_error,
                             "forward": steps + 2, "backward": steps}


def invert_protected(model, protected, start_pixels, settings, device):
    """Invert a batch of protected images (normalised, as stored) through ``model``.

    Returns (recovered images in the normalised space, stats of ``invert_features`` with the
    target's forward pass counted, plus 'seconds' of wall time, CUDA synchronised).
    """
    mean, std = settings.pixel_mean, settings.pixel_std
    protected = protected.to(device)
    if settings.inversion_init == "protected":
        start_pixels = to_pixels(protected, mean, std)
    else:
        start_pixels = start_pixels.to(device).expand_as(protected)
    _synchronise(device)
    started = time.perf_counter()
    with torch.no_grad():
        target = model(protected)
    pixels, stats = invert_features(model, target, start_pixels, mean, std, settings.inversion_steps,
                                    settings.inversion_lr, settings.inversion_tv)
    _synchronise(device)
    stats["forward"] += 1
    stats["seconds"] = time.perf_counter() - started
    return normalize(pixels, mean, std), stats


def _synchronise(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
