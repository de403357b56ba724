"""AVIH (Su et al., ICCV 2023) ported to Re-ID as small pure functions plus one batch loop.

AVIH searches a pixel image x_adv in [0, 1] whose authorization-model features match the
original's and that the key model G decodes back to the original, while a local-variance term
makes it look like noise (SPEC-2 15.2). The release protects one image at a time; here a batch is
optimised at once with every term, step size and step decay kept per image, so each image gets
what a batch of one would give. f reads x_adv normalised with INPUT.PIXEL_MEAN / PIXEL_STD; so
does G, as ``tools/train_key_model.py`` trains it (the recovery attack's 'strong' generator: a
normalised protected image in, pixels out).
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data.transforms import denormalize, normalize
from engine.methods.base import METHODS, ProtectedBatch, ProtectionMethod
from engine.methods.pixelfade import frozen_parameters, normalized_gradient
from modeling.checkpoint import load_reid_weights
from modeling.generators import build_generator
from utils.errors import CheckpointError, ConfigError

KEY_GENERATOR = "resnet_9blocks"
INITS = ("random", "original")
TEXTURE_KERNEL = 4
DECAY_FACTOR = 0.85
DECAY_EVERY = 16


@dataclass(frozen=True)
class AvihParams:
    """AVIH's settings; the defaults are the release's."""

    steps: int = 800
    init: str = "random"
    alpha: float = 0.01
    momentum: float = 0.3
    key_weight: float = 0.2
    texture_weight: float = 0.001

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"AVIH.STEPS must be an integer >= 1, got {self.steps!r}")
        if self.init not in INITS:
            raise ConfigError(f"AVIH.INIT must be one of {', '.join(INITS)}, got {self.init!r}")
        for key, value in (("AVIH.ALPHA", self.alpha), ("AVIH.KEY_WEIGHT", self.key_weight),
                           ("AVIH.TEXTURE_WEIGHT", self.texture_weight), ("AVIH.MOMENTUM", self.momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")
        if self.alpha == 0 or self.momentum >= 1:
            raise ConfigError(f"AVIH.ALPHA must be > 0 and AVIH.MOMENTUM < 1, got {self.alpha!r}, {self.momentum!r}")

    @classmethod
    def from_cfg(cls, cfg):
        avih = cfg.AVIH
        return cls(steps=avih.STEPS, init=avih.INIT, alpha=avih.ALPHA, momentum=avih.MOMENTUM,
                   key_weight=avih.KEY_WEIGHT, texture_weight=avih.TEXTURE_WEIGHT)


def local_variance_loss(pixels):
    """Per image [B]: each channel's 4 x 4 box sums (stride 1), their unbiased variance, summed over channels.

    The release's ``loss_vc`` takes the variance over the whole batch; per image it equals the
    release at its batch size of one.
    """
    batch, channels, height, width = pixels.shape
    kernel = torch.ones(1, 1, TEXTURE_KERNEL, TEXTURE_KERNEL, dtype=pixels.dtype, device=pixels.device)
    sums = F.conv2d(pixels.reshape(batch * channels, 1, height, width), kernel)
    return sums.reshape(batch, channels, -1).var(dim=2, unbiased=True).sum(dim=1)


def avih_loss(features, target, recovered, original_pixels, adv_pixels, params):
    """Per image [B]: feature MSE + key_weight * MSE(clamp(G(x_adv), 0, 1), x) + texture_weight * L_vc."""
    feature_term = ((features.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    key_term = ((recovered.float().clamp(0.0, 1.0) - original_pixels) ** 2).flatten(1).mean(dim=1)
    return feature_term + params.key_weight * key_term + params.texture_weight * local_variance_loss(adv_pixels)


def avih_update(adv, momentum_buf, grad, alpha, momentum):
    """``g = m * g + grad / mean|grad|`` per image, then ``x_adv = clamp(x_adv - alpha * g, 0, 1)``."""
    momentum_buf = momentum * momentum_buf + normalized_gradient(grad)
    adv = (adv - alpha.view(-1, *([1] * (adv.dim() - 1))) * momentum_buf).clamp(0.0, 1.0)
    return adv, momentum_buf


def decay_step_sizes(alpha, increases, loss, previous, step):
    """Per image: from step 2 on, count steps whose loss rose; every 16th multiplies alpha by 0.85."""
    if step < 2:
        return alpha, increases
    increases = increases + (loss > previous).to(increases.dtype)
    decay = increases == DECAY_EVERY
    return torch.where(decay, alpha * DECAY_FACTOR, alpha), torch.where(decay, 0, increases)


def avih_protect(model, key_model, original, start, params, mean, std):
    """Protect a normalised batch [B, C, H, W]; returns (protected, its fp32 features), normalised.

    ``start``: the initial x_adv in pixel units (AVIH's N(0, 1) draw, not clamped before the first
    step, as in the release), or None to start from the original. Both models must be in eval mode;
    their parameters are frozen for the call.
    """
    original = original.detach().float()
    pixels = denormalize(original, mean, std).clamp(0.0, 1.0)
    adv = pixels.clone() if start is None else start.detach().to(original)
    batch = original.shape[0]
    alpha = torch.full((batch,), float(params.alpha), device=original.device)
    increases = torch.zeros(batch, dtype=torch.int64, device=original.device)
    momentum_buf = torch.zeros_like(adv)
    previous = None
    with frozen_parameters(model), frozen_parameters(key_model):
        with torch.no_grad():
            target = model(original).float()
        for step in range(params.steps):
            image = adv.detach().requires_grad_(True)
            normalised = normalize(image, mean, std)
            loss = avih_loss(model(normalised), target, key_model(normalised), pixels, image, params)
            (grad,) = torch.autograd.grad(loss.sum(), image)
            adv, momentum_buf = avih_update(image.detach(), momentum_buf, grad, alpha, params.momentum)
            loss = loss.detach()
            alpha, increases = decay_step_sizes(alpha, increases, loss, previous, step)
            previous = loss
        protected = normalize(adv, mean, std)
        with torch.no_grad():
            features = model(protected).float()
    return protected.contiguous(), features


def load_key_model(path, ngf, device):
    """The key model G from AVIH.KEY_MODEL: a resnet_9blocks generator (no output activation), eval mode."""
    if not path or not os.path.isfile(path):
        raise CheckpointError(
            f"AVIH.KEY_MODEL {path!r}: file not found; expected the weights of a {KEY_GENERATOR} key model "
            "(tools/train_key_model.py writes Generator_weight_strong.pth)"
        )
    generator = build_generator(KEY_GENERATOR, ngf=ngf, output_activation="none")
    load_reid_weights(generator, path, architecture=f"a {KEY_GENERATOR} key model with AVIH.KEY_NGF {ngf}")
    return generator.to(device).eval()


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
