"""Protection methods: one registered class per method, all with one interface.

A method is built from (model, cfg, device, rank) and called on a batch of normalised originals
with their global image indices; it returns a ``ProtectedBatch``. Its random numbers come from
one CPU ``torch.Generator`` (identical numbers to ``torch.manual_seed`` on the CPU, the same on
every device) whose state is saved with each finished batch, so a resumed run continues the
stream exactly. A new method registers itself with ``@METHODS.register("name")``.

PixelFade in reference mode keeps the reference code's stream: after seeding, the K stage masks
are drawn first (for a full batch), then each batch's noise, in batch order. Per-image mode
derives each image's noise and masks from (seed, image index) instead.

Every method reports its cost with ``passes_per_image()``: forward and backward passes of the
authorization model per protected image (and of AVIH's key model), counted from its loop.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from engine.methods.avih import AvihParams, avih_protect, load_key_model
from engine.methods.baselines import (
    additive_noise,
    gaussian_blur,
    mosaic,
    mosaic_topleft,
    on_pixels,
    pil_gaussian_blur,
    pixel_noise,
)
from engine.methods.pixelfade import (
    PixelFadeParams,
    build_fade_masks,
    per_image_noise_and_masks,
    precision_dtype,
    protect_batch,
)
from utils.registry import Registry

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

    def passes_per_image(self):
        """{"forward": n, "backward": m}: the authorization model's passes per protected image."""
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

    def passes_per_image(self):
        """One forward and backward per step, plus the original's and the result's features."""
        return {"forward": self.params.max_iter + 2, "backward": self.params.max_iter}


@METHODS.register("avih")
class Avih(ProtectionMethod):
    """AVIH (SPEC-2 15.2): feature, key-model and texture terms, optimised in pixel space.

    The N(0, 1) start is drawn from the run's stream, one batch after another.
    """

    def __init__(self, model, cfg, device, rank=0):
        super().__init__(model, cfg, device, rank)
        self.params = AvihParams.from_cfg(cfg)
        self.key_model = load_key_model(cfg.AVIH.KEY_MODEL, cfg.AVIH.KEY_NGF, self.device)
        self.mean, self.std = tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD)
        self._stream_ready()

    def __call__(self, original, indices):
        start = None
        if self.params.init == "random":
            start = torch.randn(original.shape, generator=self.generator).to(self.device)
        protected, features = avih_protect(self.model, self.key_model, original, start, self.params, self.mean, self.std)
        return ProtectedBatch(protected, None, features)

    def passes_per_image(self):
        steps = self.params.steps
        return {"forward": steps + 2, "backward": steps, "key_model_forward": steps, "key_model_backward": steps}


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


def build_method(cfg, model, device, rank=0):
    """The method named by PIXELFADE.METHOD, bound to ``model`` and this process's random stream."""
    return METHODS.get(cfg.PIXELFADE.METHOD)(model, cfg, device, rank)
