"""The AGW model family (the toolkit's and the paper's ``Baseline``), built randomly or from ImageNet.

It is registered as the ``agw`` checkpoint format.
"""

import functools
import logging
import os

import torch

from configs import ConfigError

from .backbones import BACKBONES, build_backbone
from .baseline import Baseline
from .checkpoint import REID_IGNORED_PREFIXES, load_imagenet_backbone, load_reid_weights
from .errors import CheckpointError
from .formats import MODEL_FORMATS, ModelFormat
from .load_report import state_signature

PRETRAIN_CHOICES = ("imagenet", "self")
SWITCH_VALUES = {"on": True, "off": False, True: True, False: False}

_log = logging.getLogger("pixelfade.model")


def build_model(cfg, num_classes=0):
    """A Baseline for cfg.MODEL, randomly initialised from MODEL.INIT_SEED.

    With MODEL.PRETRAIN_CHOICE 'imagenet' and MODEL.PRETRAIN_PATH set, the backbone is then read
    from that local torchvision-format file (nothing is downloaded).
    """
    choice = cfg.MODEL.PRETRAIN_CHOICE
    if choice not in PRETRAIN_CHOICES:
        raise ConfigError(f"MODEL.PRETRAIN_CHOICE must be one of {PRETRAIN_CHOICES}, got {choice!r}")
    model = _build_initialized(cfg, num_classes)
    path = cfg.MODEL.PRETRAIN_PATH
    if choice == "imagenet" and path:
        if not os.path.isfile(path):
            raise ConfigError(
                f"MODEL.PRETRAIN_PATH: ImageNet weights file not found: {path} (weights are never "
                "downloaded; give a local torchvision-format file or leave it empty)"
            )
        load_imagenet_backbone(model, path, _log)
    return model


def resolve_device(device):
    """torch.device for 'auto' (CUDA when present, else CPU), a device string or a torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"MODEL.DEVICE: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE is {device!r} but CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"MODEL.DEVICE is {device!r} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return resolved


def _build_initialized(cfg, num_classes):
    """Random Baseline; the global RNG is left untouched so callers' seeding is unaffected."""
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    last_stride = cfg.MODEL.LAST_STRIDE
    if last_stride not in (1, 2):
        raise ConfigError(f"MODEL.LAST_STRIDE must be 1 or 2, got {last_stride!r}")
    gem = cfg.MODEL.GENERALIZED_MEAN_POOL
    if gem not in SWITCH_VALUES:
        raise ConfigError(f"MODEL.GENERALIZED_MEAN_POOL must be 'on' or 'off', got {gem!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.MODEL.INIT_SEED)
        try:
            backbone = build_backbone(cfg.MODEL.NAME, last_stride)
        except ConfigError as err:
            raise ConfigError(f"MODEL.NAME: {err}") from None
        return Baseline(backbone, num_classes, SWITCH_VALUES[gem], in_planes=backbone.out_channels)


def _build_agw(cfg):
    model = _build_initialized(cfg, 0)
    model.architecture = cfg.MODEL.NAME
    return model


def _load_agw(model, state, source, logger):
    architecture = f"the AGW Baseline with MODEL.NAME {getattr(model, 'architecture', '?')}"
    try:
        return load_reid_weights(model, state, logger, source=source, architecture=architecture)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {fitting_agw_hint(state, 'global_pool.p' in model.state_dict())}") from None


@functools.cache
def _agw_signature(name):
    """Key -> shape of the AGW Baseline (GeM on) on backbone ``name``, built on the meta device: no memory,
    no initialisation, about 0.05-0.3 s per backbone; the global random stream is left as it was."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        backbone = build_backbone(name, 1)
        model = Baseline(backbone, 0, True, in_planes=backbone.out_channels)
    return state_signature(model.state_dict(), REID_IGNORED_PREFIXES)


def fitting_agw_settings(state):
    """``[(MODEL.NAME, generalized_mean_pool), ...]`` of the registered backbones whose Baseline ``state`` fits
    exactly (keys and shapes; the classifier aside). Only the pooling's ``p`` tells GeM from average pooling."""
    given = state_signature(state, REID_IGNORED_PREFIXES)
    fits = []
    for name in BACKBONES.names():
        with_gem = _agw_signature(name)
        if given == with_gem:
            fits.append((name, True))
        elif given == {key: shape for key, shape in with_gem.items() if not key.startswith("global_pool.")}:
            fits.append((name, False))
    return fits


def fitting_agw_hint(state, generalized_mean_pool):
    """Which MODEL.NAME (and MODEL.GENERALIZED_MEAN_POOL) the weights would fit, as part of one error line."""
    fits = fitting_agw_settings(state)
    if not fits:
        return ("they fit none of the AGW backbones (MODEL.NAME); a torchreid or fast-reid file needs "
                "MODEL.FORMAT torchreid|fastreid (or auto)")
    choices = []
    for gem in (generalized_mean_pool, not generalized_mean_pool):
        names = " or ".join(name for name, fit_gem in fits if fit_gem == gem)
        if names:
            switch = "on" if gem else "off"
            pooling = "" if gem == generalized_mean_pool else f" with MODEL.GENERALIZED_MEAN_POOL {switch}"
            choices.append(f"MODEL.NAME {names}{pooling}")
    return f"they fit {'; or '.join(choices)}"


def _looks_like_agw(state):
    return any(key.startswith("base.") for key in state) and any(key.startswith("bottleneck.") for key in state)


MODEL_FORMATS.register("agw")(
    ModelFormat(
        name="agw",
        architectures=(),
        build=_build_agw,
        load=_load_agw,
        detect=_looks_like_agw,
        feature_doc="BNNeck output (BatchNorm1d after GeM or average pooling), the paper's authorization feature",
    )
)
