"""One protection method bound to a model and a random stream: originals in, protected images out.

Reference mode keeps the reference code's random stream: after seeding, the K stage masks are
drawn first (for a full batch), then each batch's noise, in batch order. The stream lives in a
CPU ``torch.Generator`` (identical numbers to ``torch.manual_seed`` on the CPU, and the same noise
on every device), and its state is saved with each finished batch so a resumed run continues it
exactly. Per-image mode derives each image's noise and masks from (seed, image index) instead.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from utils.errors import ConfigError

from .baselines import BASELINES, build_baseline
from .pixelfade import (
    PixelFadeParams,
    build_fade_masks,
    per_image_noise_and_masks,
    precision_dtype,
    protect_batch,
)

MODES = ("reference", "per_image")


@dataclass
class ProtectedBatch:
    protected: torch.Tensor
    noise: Optional[torch.Tensor]
    # fp32 features of ``protected`` when the method already computed them, else None.
    features: Optional[torch.Tensor] = None


def rank_seed(seed, rank):
    """Each process of a multi-process reference-mode run gets its own stream (no shared noise)."""
    return seed if rank == 0 else seed * 1_000_003 + rank


class BatchProtector:
    """Protects batches with ``cfg.PIXELFADE.METHOD`` (pixelfade or a baseline)."""

    def __init__(self, model, cfg, device, rank=0):
        pf = cfg.PIXELFADE
        self.method = pf.METHOD
        if self.method != "pixelfade" and self.method not in BASELINES:
            raise ConfigError(
                f"PIXELFADE.METHOD (--method) must be one of pixelfade, {', '.join(BASELINES)}; got {self.method!r}"
            )
        if pf.MODE not in MODES:
            raise ConfigError(f"PIXELFADE.MODE (--mode) must be one of {MODES}; got {pf.MODE!r}")
        self.model = model
        self.device = torch.device(device)
        self.per_image = pf.MODE == "per_image"
        self.seed = pf.SEED
        self.params = PixelFadeParams.from_cfg(cfg)
        self.autocast_dtype = precision_dtype(pf.PRECISION)
        self.channels_last = pf.CHANNELS_LAST
        self.image_shape = (3, *cfg.INPUT.IMG_SIZE)
        self.generator = torch.Generator().manual_seed(rank_seed(pf.SEED, rank))
        self.baseline = None if self.method == "pixelfade" else build_baseline(self.method, cfg)
        self.masks = None
        if self.method == "pixelfade" and not self.per_image:
            num_elements = pf.BATCH_SIZE * self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
            self.masks = build_fade_masks(num_elements, self.params.fade_num_iter, generator=self.generator).to(self.device)
        self.initial_state = self.generator.get_state()

    def rng_state(self):
        return self.generator.get_state()

    def set_rng_state(self, state):
        self.generator.set_state(state)

    def __call__(self, original, indices):
        """Protect ``original`` (B,3,H,W, normalised, on the device); ``indices`` are global image indices."""
        if self.baseline is not None:
            return ProtectedBatch(self.baseline(original, generator=self.generator), None)
        if self.per_image:
            pairs = [
                per_image_noise_and_masks(self.seed, int(index), self.image_shape, self.params.fade_num_iter, self.device)
                for index in indices
            ]
            noise = torch.stack([pair[0] for pair in pairs])
            masks = torch.stack([pair[1] for pair in pairs])
        else:
            noise = torch.randn(original.shape, generator=self.generator).to(self.device)
            masks = self.masks
        output = protect_batch(
            self.model,
            original,
            masks,
            noise,
            self.params,
            per_image=self.per_image,
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
        )
        features = output.features if self.autocast_dtype is None else None
        return ProtectedBatch(output.protected, noise, features)
