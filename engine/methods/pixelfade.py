"""PixelFade (Progressive Pixel Fading) as small pure functions plus one batch loop.

Numbers match the reference code (iSEE-Laboratory/PixelFade) in reference mode; the loop is
faster by construction: only the input gradient is computed (frozen model, no weight gradients,
no retained graph) and the constraint test stays on the device (no host sync per step).
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from engine.methods.base import METHODS, ProtectedBatch, ProtectionMethod
from utils.errors import ConfigError

PRECISIONS = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PER_IMAGE_SEED_FACTOR = 1_000_003
EPSILON_MODES = ("absolute", "relative")
# How noise enters the image: the paper's stages one per step, all stages at step 0, or never
# (the constraint alone: the ablations of the paper's two operations).
REPLACEMENTS = ("progressive", "one_shot", "none")


@dataclass(frozen=True)
class PixelFadeParams:
    """Hyper-parameters of the loop; defaults are the reference's command-line defaults."""

    max_iter: int = 100
    fade_num_iter: int = 5
    warmup_iter: int = 5
    momentum: float = 0.6
    beta: float = 0.01
    beta_temp: float = 0.04
    epsilon: float = 0.03
    epsilon_mode: str = "absolute"
    tail_iters: int = 5
    replacement: str = "progressive"

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_cfg(cls, cfg):
        """Read ``cfg.PIXELFADE``."""
        pf = cfg.PIXELFADE
        return cls(
            max_iter=pf.MAX_ITER,
            fade_num_iter=pf.FADE_NUM_ITER,
            warmup_iter=pf.WARMUP_ITER,
            momentum=pf.MOMENTUM,
            beta=pf.BETA,
            beta_temp=pf.BETA_TEMP,
            epsilon=pf.EPSILON,
            epsilon_mode=pf.EPSILON_MODE,
            tail_iters=pf.TAIL_ITERS,
            replacement=pf.REPLACEMENT,
        )

    def validate(self):
        """Raise ConfigError naming the option (and its config key) for a nonsense value."""
        keys = {
            "max_iter": "PIXELFADE.MAX_ITER",
            "fade_num_iter": "PIXELFADE.FADE_NUM_ITER",
            "warmup_iter": "PIXELFADE.WARMUP_ITER",
            "momentum": "PIXELFADE.MOMENTUM",
            "beta": "PIXELFADE.BETA",
            "beta_temp": "PIXELFADE.BETA_TEMP",
            "epsilon": "PIXELFADE.EPSILON",
            "epsilon_mode": "PIXELFADE.EPSILON_MODE",
            "tail_iters": "PIXELFADE.TAIL_ITERS",
        }
        choices = {"epsilon_mode": ("PIXELFADE.EPSILON_MODE", EPSILON_MODES),
                   "replacement": ("PIXELFADE.REPLACEMENT", REPLACEMENTS)}
        minimum = {"max_iter": 1, "fade_num_iter": 1, "warmup_iter": 0, "tail_iters": 0}
        for name, (key, allowed) in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} ({key}) must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for field in fields(self):
            if field.name in choices:
                continue
            value = getattr(self, field.name)
            label = f"{field.name} ({keys[field.name]})"
            if field.name in minimum:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{label} must be an integer, got {value!r}")
                if value < minimum[field.name]:
                    raise ConfigError(f"{label} must be >= {minimum[field.name]}, got {value}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                    raise ConfigError(f"{label} must be a number, got {value!r}")
                if field.name == "momentum" and not 0.0 <= value < 1.0:
                    raise ConfigError(f"{label} must be in [0, 1), got {value}")
                if field.name != "momentum" and not 0.0 < value < float("inf"):
                    raise ConfigError(f"{label} must be a positive finite number, got {value}")


class ProtectOutput(NamedTuple):
    """Result of ``protect_batch``; all tensors detached, float32, on the input's device.

    ``features`` and ``final_loss`` are those of the *returned* image (one extra forward), not of
    the image before the last update that the reference code reports.
    """

    protected: torch.Tensor  # [B, C, H, W], normalised space, NCHW-contiguous
    final_loss: torch.Tensor  # [B] feature MSE of each returned image against its original
    steps_constraint_held: torch.Tensor  # [B] int64: steps whose constraint test passed
    features: torch.Tensor  # [B, D] model features of the returned images


def precision_dtype(name):
    """Map ``PIXELFADE.PRECISION`` ('none' | 'bf16' | 'fp16') to an autocast dtype (or None)."""
    if name not in PRECISIONS:
        raise ConfigError(f"PIXELFADE.PRECISION must be one of {tuple(PRECISIONS)}, got {name!r}")
    return PRECISIONS[name]


def fade_pick_size(num_elements, num_stages):
    """Elements per stage, computed as the reference does: ``int(N * (1 / K))``.

    This is one less than ``N // K`` when ``N / K`` is an integer that ``1 / K`` rounds below
    (e.g. N = K = 49: 49 * (1/49) = 0.999...); never for K <= 11 and N < 200,000.
    """
    return int(num_elements * (1 / num_stages))


def build_fade_masks(num_elements, num_stages, generator=None):
    """Disjoint random stage masks, BoolTensor [K, N] on the CPU, in the reference's random stream.

    Stage i draws ``torch.randperm(num_remaining, generator)[:pick]`` over the not-yet-picked
    positions in increasing order; ``N - K * pick`` elements are never picked (never replaced).
    With ``generator=None`` the global CPU generator is used, as the reference does.
    """
    if num_elements < 1 or num_stages < 1:
        raise ValueError(
            f"build_fade_masks needs num_elements >= 1 and num_stages >= 1, got {num_elements}, {num_stages}"
        )
    pick = fade_pick_size(num_elements, num_stages)
    masks = torch.zeros(num_stages, num_elements, dtype=torch.bool)
    remaining = torch.arange(num_elements)
    for stage in range(num_stages):
        order = torch.randperm(remaining.numel(), generator=generator)
        picked = remaining[order[:pick]]
        masks[stage, picked] = True
        remaining = remaining[~masks[stage, remaining]]
    return masks


def make_reference_masks(seed, batch_size, image_shape, num_stages):
    """``torch.manual_seed(seed)`` then the masks of a full batch: the reference's stream start.

    Each batch's noise then comes from ``reference_noise`` in batch order.
    """
    channels, height, width = _image_shape(image_shape)
    torch.manual_seed(seed)
    return build_fade_masks(batch_size * channels * height * width, num_stages)


def reference_noise(original):
    """The batch's noise as the reference draws it: ``randn_like`` from the global generator of
    ``original``'s device (seeded by ``torch.manual_seed`` together with the CPU one)."""
    return torch.randn_like(original)


def per_image_seed(seed, image_index):
    """Seed of one image's own generator: ``(seed * 1_000_003 + image_index) mod 2**64``."""
    return (int(seed) * PER_IMAGE_SEED_FACTOR + int(image_index)) % (1 << 64)


def per_image_noise_and_masks(seed, image_index, image_shape, num_stages, device=None):
    """One image's noise [C, H, W] and stage masks [K, C*H*W], independent of batch and process.

    Drawn on the CPU from a generator seeded with ``per_image_seed`` (masks first, then noise),
    so the numbers are the same on every device; then moved to ``device``.
    """
    channels, height, width = _image_shape(image_shape)
    generator = torch.Generator().manual_seed(per_image_seed(seed, image_index))
    masks = build_fade_masks(channels * height * width, num_stages, generator=generator)
    noise = torch.randn(channels, height, width, generator=generator)
    return noise.to(device), masks.to(device)


def partial_replace(protected, noise, stage_mask, active=None):
    """Copy ``noise`` into ``protected`` where the stage mask is set (out of place).

    ``stage_mask`` (bool, or float 0/1 to skip the conversion) is shaped like ``protected`` or
    flat with at least ``protected.numel()`` entries (a smaller last batch uses the first ones).
    ``active`` (bool, scalar or per sample [B]) gates the copy on the device, without a host
    sync. Implemented as ``lerp`` with 0/1 weights, which is exact and several times faster on
    CPU than a boolean ``where``.
    """
    weight = _mask_like(stage_mask, protected).to(protected.dtype)
    if active is not None:
        weight = weight * _per_sample_view(active, protected).to(protected.dtype)
    return torch.lerp(protected, noise, weight)


def normalized_gradient(grad):
    """``grad / mean(|grad|)`` per sample over C, H, W: the step follows the direction only.

    A sample whose gradient is exactly zero gets a zero step (the reference divides by zero).
    """
    dims = tuple(range(1, grad.dim()))
    scale = grad.abs().mean(dim=dims, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    return grad / scale


def feature_loss(features, target, per_sample):
    """Mean squared feature error: a batch scalar (reference) or one value per sample [B]."""
    squared = (features.float() - target.float()) ** 2
    if per_sample:
        return squared.reshape(squared.shape[0], -1).mean(dim=1)
    return squared.mean()


def input_gradient(model, protected, target, per_sample, autocast_dtype=None):
    """``(loss, d loss / d protected)`` with ``torch.autograd.grad`` on the input only.

    Per sample, the gradient is that of the summed per-sample losses; in eval mode samples are
    independent, so each sample's gradient is its own loss's gradient. Its scale differs from
    the batch-mean loss's gradient by a per-sample constant, which ``normalized_gradient`` removes.
    The model call runs under autocast when ``autocast_dtype`` is set; loss and gradient are fp32.
    """
    image = protected.detach().requires_grad_(True)
    with _autocast(image.device, autocast_dtype):
        features = model(image)
    loss = feature_loss(features, target, per_sample)
    (grad,) = torch.autograd.grad(loss.sum() if per_sample else loss, image)
    return loss.detach(), grad


def constraint_bound(target, params, per_sample):
    """The value the feature loss is tested against: EPSILON, or EPSILON * mean(f(x)^2).

    In relative mode the scale is the mean square of the original features over the same
    elements as the loss: the whole batch (reference mode) or each image (per-image mode).
    """
    if params.epsilon_mode == "absolute":
        return params.epsilon
    return params.epsilon * feature_loss(target, torch.zeros_like(target), per_sample)


def constraint_update(protected, momentum_buf, grad, loss, step, params, lo, hi, bound=None):
    """One constraint step: momentum of the normalised gradient, step size by the constraint test.

    ``condition = (loss < bound) & (step < max_iter - tail_iters)`` (``bound``: ``constraint_bound``)
    keeps ``loss``'s shape
    (scalar for the batch, [B] per sample); the step is ``beta`` where it holds, ``beta_temp``
    elsewhere; the result is clamped to [lo, hi] (tensors: one bound for the batch or one per
    sample; max-then-min equals clamp and is faster on CPU). Everything stays on the device.
    """
    momentum_buf = params.momentum * momentum_buf + normalized_gradient(grad)
    in_tail = step >= params.max_iter - params.tail_iters
    condition = (loss < (params.epsilon if bound is None else bound)) & (not in_tail)
    step_size = torch.where(condition, params.beta, params.beta_temp).to(momentum_buf.dtype)
    protected = protected - momentum_buf * _per_sample_view(step_size, protected)
    return torch.minimum(torch.maximum(protected, lo), hi), momentum_buf, condition


def replacement_mask(stage_masks, step, replacement):
    """The mask whose noise is copied in at ``step``, or None when nothing is replaced.

    'progressive' (the paper): stage ``step mod K``. 'one_shot': ``stage_masks`` holds the union
    of all stages (``one_shot_masks``), copied at step 0 only. 'none': never.
    """
    if replacement == "progressive":
        return stage_masks[step % len(stage_masks)]
    if replacement == "one_shot" and step == 0:
        return stage_masks[0]
    return None


def one_shot_masks(stage_masks):
    """The union of the disjoint stage masks (0/1 weights), as a one-element list."""
    return [torch.stack(stage_masks).amax(dim=0)]


@contextmanager
def frozen_parameters(model):
    """Turn off ``requires_grad`` of every parameter inside the block; restore the flags after."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def protect_batch(model, original, masks, noise, params, per_image=False, autocast_dtype=None, channels_last=False):
    """Protect one batch of normalised images [B, C, H, W] (README, "The algorithm").

    Reference mode: ``masks`` is the run's BoolTensor [K, N >= B*C*H*W] (a smaller last batch
    uses the first entries), the value range [lo, hi] and the constraint test (batch-mean loss)
    are shared by the whole batch. Per-image mode: ``masks`` is [B, K, C*H*W]; range, loss,
    test and step size are per image, so an image's result does not depend on its batch.

    The model must be in eval mode. Its parameters are frozen for the call only (the flags are
    restored), so no weight gradient is computed. ``channels_last`` converts the model in place
    (memory layout only, idempotent) and the inputs; ``autocast_dtype`` applies to the model
    calls only, the update runs in fp32.
    """
    _check_batch(model, original, masks, noise, params, per_image)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    original = original.detach().float().contiguous(memory_format=memory_format)
    noise = noise.detach().to(device=original.device, dtype=torch.float32).contiguous(memory_format=memory_format)
    stage_masks = _stage_masks(masks, original, per_image, memory_format)
    if params.replacement == "one_shot":
        stage_masks = one_shot_masks(stage_masks)
    lo, hi = _value_range(original, per_image)
    batch = original.shape[0]
    with frozen_parameters(model):
        with torch.no_grad(), _autocast(original.device, autocast_dtype):
            target = model(original).float()
        protected = original.clone()
        momentum_buf = torch.zeros_like(original)
        bound = constraint_bound(target, params, per_image)
        condition = torch.ones(batch if per_image else (), dtype=torch.bool, device=original.device)
        held = torch.zeros(batch, dtype=torch.int64, device=original.device)
        for step in range(params.max_iter):
            active = None if step < params.warmup_iter else condition
            mask = replacement_mask(stage_masks, step, params.replacement)
            if mask is not None:
                protected = partial_replace(protected, noise, mask, active)
            loss, grad = input_gradient(model, protected, target, per_image, autocast_dtype)
            protected, momentum_buf, condition = constraint_update(
                protected, momentum_buf, grad, loss, step, params, lo, hi, bound
            )
            held = held + condition
        with torch.no_grad(), _autocast(original.device, autocast_dtype):
            features = model(protected).float()
    final_loss = feature_loss(features, target, per_sample=True)
    return ProtectOutput(protected.contiguous(), final_loss, held, features)


def _image_shape(image_shape):
    if len(image_shape) != 3 or any(int(size) < 1 for size in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
    return tuple(int(size) for size in image_shape)


def _autocast(device, dtype):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _per_sample_view(values, like):
    """A scalar stays a scalar; a [B] vector becomes [B, 1, 1, 1] to broadcast over ``like``."""
    if values.dim() == 0:
        return values
    if values.numel() != like.shape[0]:
        raise ValueError(f"expected a scalar or {like.shape[0]} per-sample values, got shape {tuple(values.shape)}")
    return values.view(-1, *([1] * (like.dim() - 1)))


def _mask_like(stage_mask, protected):
    if stage_mask.shape == protected.shape:
        return stage_mask
    flat = stage_mask.reshape(-1)
    if flat.numel() < protected.numel():
        raise ValueError(f"stage mask has {flat.numel()} entries, fewer than the batch's {protected.numel()} elements")
    return flat[: protected.numel()].view(protected.shape)


def _stage_masks(masks, original, per_image, memory_format):
    """K stage masks as 0/1 float weights shaped like the batch, on its device and memory format."""
    if per_image:
        stages = masks.transpose(0, 1).reshape(masks.shape[1], *original.shape)
    else:
        stages = masks[:, : original.numel()].reshape(masks.shape[0], *original.shape)
    stages = stages.to(device=original.device, dtype=original.dtype)
    return [stage.contiguous(memory_format=memory_format) for stage in stages]


def _value_range(original, per_image):
    if per_image:
        return original.amin(dim=(1, 2, 3), keepdim=True), original.amax(dim=(1, 2, 3), keepdim=True)
    return original.min(), original.max()


def _check_batch(model, original, masks, noise, params, per_image):
    if not isinstance(params, PixelFadeParams):
        raise TypeError(f"params must be a PixelFadeParams, got {type(params).__name__}")
    if any(module.training for module in model.modules()):
        raise ValueError("protect_batch needs the model in eval mode (call model.eval() first)")
    if original.dim() != 4 or not original.is_floating_point():
        raise ValueError(f"original must be a float tensor [B, C, H, W], got {original.dtype} {tuple(original.shape)}")
    if noise.shape != original.shape:
        raise ValueError(f"noise must be shaped like original {tuple(original.shape)}, got {tuple(noise.shape)}")
    stages = params.fade_num_iter
    if per_image:
        expected = (original.shape[0], stages, original[0].numel())
        if tuple(masks.shape) != expected:
            raise ValueError(f"per-image masks must be [B, K, C*H*W] = {expected}, got {tuple(masks.shape)}")
    elif masks.dim() != 2 or masks.shape[0] != stages or masks.shape[1] < original.numel():
        raise ValueError(
            f"reference masks must be [K={stages}, N >= {original.numel()}] (built for a full batch), "
            f"got {tuple(masks.shape)}"
        )


@METHODS.register("pixelfade")
class PixelFade(ProtectionMethod):
    """Noise-guided progressive replacement under the feature constraint (the paper's method).

    Reference mode keeps the reference code's stream: after seeding, the K stage masks are drawn
    first (for a full batch), then each batch's noise, in batch order. Per-image mode derives each
    image's noise and masks from (seed, image index) instead.
    """

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
