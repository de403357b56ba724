"""Protect images as they arrive, in a service's own process: one object, built once.

    from engine.protect.protector import Protector
    protector = Protector.from_checkpoint("ckpt/market1501_resnet50_nl_model_120.pth",
                                          config_file="configs/AGW_baseline_market1501.yml", device="cuda")
    result = protector.protect([Image.open(path) for path in paths])
    result.images()               # protected 8-bit PIL images at INPUT.IMG_SIZE, to store
    result.protected_features     # what the service indexes (fp32, one row per image)

The data-set command (``protect_image.py``) protects its batches through the same ``Protector``
(``protect_batch``), so a service and a run give the same protected images for the same
settings, seed and call order. Settings are the config keys of ``configs/defaults.py``,
validated exactly as the command validates them.
"""

import time
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from configs import load_config, set_values
from data.transforms import build_eval_transform
from engine.methods import build_method
from engine.methods.codec import PixelCodec
from engine.protect.settings import validate_protect_config
from evaluation.features import extract_features
from evaluation.protection_stats import protection_statistics
from modeling import build_authorization_model, resolve_device
from utils.errors import ConfigError


@dataclass
class ProtectionOutput:
    """One call's results, one row per image, in the order the images were given."""

    original: torch.Tensor
    protected: torch.Tensor
    pixels: torch.Tensor
    noise: torch.Tensor | None
    original_features: torch.Tensor
    protected_features: torch.Tensor
    # Per image: feature_mse, cosine, noise_share, closer_to_noise and constraint_held (a share of steps).
    stats: dict
    # Wall time of the protection method alone (device synchronised), without feature extraction.
    method_seconds: float = 0.0

    def images(self):
        """The protected images as 8-bit RGB PIL images, as a lossless PNG would store them."""
        return [Image.fromarray(image.permute(1, 2, 0).cpu().numpy()) for image in self.pixels]

    @staticmethod
    def concatenate(parts):
        """Join the outputs of consecutive batches into one."""
        first = parts[0]
        joined = {}
        for name in ("original", "protected", "pixels", "noise", "original_features", "protected_features"):
            values = [getattr(part, name) for part in parts]
            joined[name] = None if any(v is None for v in values) else torch.cat(values)
        joined["stats"] = {key: torch.cat([part.stats[key] for part in parts]) for key in first.stats}
        joined["method_seconds"] = sum(part.method_seconds for part in parts)
        return ProtectionOutput(**joined)


def protector_config(cfg=None, config_file="", overrides=None):
    """Defaults < ``cfg`` or ``config_file`` < ``overrides`` ({"PIXELFADE.EPSILON": 0.05, ...}), validated.

    An int given for a float key becomes a float, as on the command line; OUTPUT_DIR is not used.
    """
    if cfg is not None and config_file:
        raise ConfigError("Protector: give a config or a config_file, not both")
    merged = load_config(config_file) if cfg is None else cfg.clone()
    merged.defrost()
    if not merged.OUTPUT_DIR:
        merged.OUTPUT_DIR = "unused"
    try:
        set_values(merged, dict(overrides or {}))
    except KeyError as err:
        raise ConfigError(f"Protector: unknown config key {err.args[0]!r} (see configs/defaults.py)") from None
    merged.freeze()
    validate_protect_config(merged)
    return merged


def _frozen(model, device):
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device)


class Protector:
    """A protection method (PixelFade by default) bound to one authorization model and its settings.

    Deterministic: the same settings, seed and sequence of calls give the same protected images.
    In reference mode the random stream runs on from call to call (as from batch to batch in a
    run); in per-image mode each image's noise depends only on (seed, its index), so give
    ``indices`` (for instance a database id) to make each image's result independent of the call.
    """

    def __init__(self, model, cfg=None, *, config_file="", overrides=None, device="cpu"):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Protector: model must be a torch.nn.Module, got {type(model).__name__}")
        self._bind(model, protector_config(cfg, config_file, overrides), device, rank=0)

    @classmethod
    def from_checkpoint(cls, checkpoint_path, cfg=None, *, config_file="", overrides=None, device="cpu"):
        """Build the authorization model from a checkpoint of any ``MODEL.FORMAT`` (auto by default)."""
        settings = protector_config(cfg, config_file, overrides)
        protector = cls.__new__(cls)
        protector._bind(build_authorization_model(settings, checkpoint_path, device), settings, device, rank=0)
        return protector

    @classmethod
    def for_run(cls, model, cfg, device, rank):
        """The data-set run's protector: ``cfg`` was validated once, when the run's config was built."""
        protector = cls.__new__(cls)
        protector._bind(model, cfg, device, rank)
        return protector

    def _bind(self, model, cfg, device, rank):
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = _frozen(model, self.device)
        self.method = build_method(self.cfg, self.model, self.device, rank)
        self.transform = build_eval_transform(self.cfg)
        self.codec = PixelCodec(tuple(self.cfg.INPUT.PIXEL_MEAN), tuple(self.cfg.INPUT.PIXEL_STD))
        self.next_index = 0

    @property
    def batch_size(self):
        return self.cfg.PIXELFADE.BATCH_SIZE

    def to_batch(self, images):
        """PIL images (any size: resized to INPUT.IMG_SIZE) or a normalised (N, 3, H, W) tensor -> tensor."""
        if isinstance(images, torch.Tensor):
            height, width = self.cfg.INPUT.IMG_SIZE
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, height, width):
                raise ConfigError(
                    f"Protector: a tensor batch must be (N, 3, {height}, {width}) normalised images "
                    f"(INPUT.IMG_SIZE), got {tuple(images.shape)}"
                )
            return images.float()
        images = list(images)
        if not images or not all(isinstance(image, Image.Image) for image in images):
            raise ConfigError("Protector: give a non-empty list of PIL images or a normalised tensor batch")
        return torch.stack([self.transform(image.convert("RGB")) for image in images])

    def protect(self, images, indices=None):
        """Protect a list of PIL images or a normalised tensor batch, ``BATCH_SIZE`` images at a time.

        ``indices`` (one integer per image) seed per-image mode; by default images are numbered
        on from the previous call.
        """
        batch = self.to_batch(images)
        if indices is None:
            indices = torch.arange(self.next_index, self.next_index + len(batch))
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.shape != (len(batch),):
            raise ConfigError(f"Protector: {len(batch)} images need {len(batch)} indices, got {tuple(indices.shape)}")
        self.next_index = int(indices.max()) + 1
        parts = [
            self.protect_batch(batch[start:start + self.batch_size].to(self.device),
                               indices[start:start + self.batch_size])
            for start in range(0, len(batch), self.batch_size)
        ]
        return ProtectionOutput.concatenate(parts)

    def protect_batch(self, original, indices):
        """One batch of at most ``BATCH_SIZE`` normalised images already on the device (the run's step)."""
        if len(original) > self.batch_size:
            raise ConfigError(f"Protector.protect_batch: {len(original)} images > PIXELFADE.BATCH_SIZE {self.batch_size}")
        started = time.perf_counter()
        result = self.method(original, indices)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        method_seconds = time.perf_counter() - started
        chunk = self.cfg.TEST.IMS_PER_BATCH
        protected_features = result.features
        if protected_features is None:
            protected_features = extract_features(self.model, result.protected, chunk)
        original_features = extract_features(self.model, original, chunk)
        stats = protection_statistics(original, result.protected, result.noise, original_features, protected_features)
        held = result.constraint_held
        stats["constraint_held"] = torch.zeros_like(stats["feature_mse"]) if held is None else held.to(
            stats["feature_mse"].device)
        return ProtectionOutput(
            original=original,
            protected=result.protected,
            pixels=self.codec.to_pixels(result.protected),
            noise=result.noise,
            original_features=original_features,
            protected_features=protected_features,
            stats=stats,
            method_seconds=method_seconds,
        )
