"""Protection methods: one registered class per method, all with one interface.

A method is built from (model, cfg, device, rank) and called on a batch of normalised originals
with their global image indices; it returns a ``ProtectedBatch``. Its random numbers come from
one CPU ``torch.Generator`` (identical numbers to ``torch.manual_seed`` on the CPU, the same on
every device) whose state is saved with each finished batch, so a resumed run continues the
stream exactly. A new method registers itself with ``@METHODS.register("name")``.

PixelFade in reference mode keeps the reference code's stream: after seeding, the K stage masks
are drawn first (for a full batch), then each batch's noise, in batch order. Per-image mode
derives each image's noise and masks from (seed, image index) instead.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from utils.registry import Registry

from .baselines import additive_noise, gaussian_blur, mosaic
from .pixelfade import (
    PixelFadeParams,
    build_fade_masks,
    per_image_noise_and_masks,
    precision_dtype,
    protect_batch,
)

METHODS = Registry("protection method", config_key="PIXELFADE.METHOD")


@dataclass
class ProtectedBatch:
    protected: torch.Tensor
    noise: Optional[torch.Tensor]
    # fp32 features of ``protected`` when the method already computed them, else None.
    features: Optional[torch.Tensor] = None
    # Per image, the share of steps in which the feature constraint held (PixelFade only).
    constraint_held: Optional[torch.Tensor] = None


def rank_seed(seed, rank):
    """Each process of a multi-process reference-mode run gets its own stream (no shared noise)."""
    return seed if rank == 0 else seed * 1_000_003 + rank


class ProtectionMethod:
    """The interface: ``method(original, indices) -> ProtectedBatch`` and a saved random stream."""

    def __init__(self, model, cfg, device, rank=0):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(rank_seed(cfg.PIXELFADE.SEED, rank))
        self.initial_state = None

    def _stream_ready(self):
        """Call at the end of ``__init__``: the state a run starts from (after any set-up draws)."""
        self.initial_state = self.generator.get_state()

    def rng_state(self):
        return self.generator.get_state()

    def set_rng_state(self, state):
        self.generator.set_state(state)

    def __call__(self, original, indices):
        raise NotImplementedError


@METHODS.register("pixelfade")
class PixelFade(ProtectionMethod):
    """Noise-guided progressive replacement under the feature constraint (the paper's method)."""

    def __init__(self, model, cfg, device, rank=0):
        super().__init__(model, cfg, device, rank)
        pf = cfg.PIXELFADE
        self.per_image = pf.MODE == "per_image"
        self.seed = pf.SEED
        self.params = PixelFadeParams.from_cfg(cfg)
        self.autocast_dtype = precision_dtype(pf.PRECISION)
        self.channels_last = pf.CHANNELS_LAST
        self.image_shape = (3, *cfg.INPUT.IMG_SIZE)
        self.masks = None
        if not self.per_image:
            channels, height, width = self.image_shape
            num_elements = pf.BATCH_SIZE * channels * height * width
            self.masks = build_fade_masks(num_elements, self.params.fade_num_iter, generator=self.generator).to(
                self.device
            )
        self._stream_ready()

    def __call__(self, original, indices):
        if self.per_image:
            pairs = [
                per_image_noise_and_masks(
                    self.seed, int(index), self.image_shape, self.params.fade_num_iter, self.device
                )
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
        held = output.steps_constraint_held.float() / self.params.max_iter
        return ProtectedBatch(output.protected, noise, features, held)


class _ImageFilter(ProtectionMethod):
    """A comparison method that applies ``filter`` with the strength in ``cfg.PIXELFADE.<strength_key>``."""

    strength_key = ""

    def __init__(self, model, cfg, device, rank=0):
        super().__init__(model, cfg, device, rank)
        self.strength = cfg.PIXELFADE[self.strength_key]
        self._stream_ready()

    def __call__(self, original, indices):
        return ProtectedBatch(self.filter(original), None)


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


def build_method(cfg, model, device, rank=0):
    """The method named by PIXELFADE.METHOD, bound to ``model`` and this process's random stream."""
    return METHODS.get(cfg.PIXELFADE.METHOD)(model, cfg, device, rank)
