"""The authorization model f from any supported source: a state-dict format, TorchScript, or a factory.

``MODEL.FORMAT`` picks how the file is read: ``agw`` (this toolkit's and the paper's Baseline
family), ``torchreid``, ``fastreid`` (see ``modeling.formats``), ``torchscript`` (an archive from
``torch.jit.save``), ``module`` (``MODEL.FACTORY`` = ``package.module:function`` returns an
``nn.Module``; ``TEST.WEIGHT``, when given, is loaded into it), or ``auto`` (TorchScript archives
are recognised by their layout, state dicts by their keys; the choice is logged).

Whatever the source, the returned model is frozen, in eval mode, and takes a batch in this
toolkit's normalised space (ImageNet mean/std of ``INPUT.PIXEL_MEAN``/``PIXEL_STD``): PixelFade
always optimises there. A model that expects raw pixels instead (``INPUT.MODEL_INPUT pixels``,
values in [0, ``INPUT.PIXEL_RANGE``], normalising inside itself) is wrapped so it receives them.
"""

import importlib
import logging
import os
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

from configs import get_default_config
from data.splits import CROSS_MODALITY_DATASETS
from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, denormalize, normalize
from utils.errors import CheckpointError, ConfigError

from .build import build_model, resolve_device
from .checkpoint import read_checkpoint
from .clip_reid import sized_by_file
from .formats import AUTO_ORDER, MODEL_FORMATS

_log = logging.getLogger("pixelfade.model")
STATE_DICT_FORMATS = ("agw", "torchreid", "fastreid", "agw_vi", "irra", "clip")
# Formats whose architecture a checkpoint's shapes decide (MODEL.NAME only matters without one).
SIZED_BY_FILE = ("irra", "clip")
MODEL_INPUTS = ("normalized", "pixels")


class PixelInput(nn.Module):
    """Feeds a model that normalises by itself: normalised batch -> pixels in [0, pixel_range]."""

    def __init__(self, model, mean, std, pixel_range):
        super().__init__()
        self.model = model
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.pixel_range = float(pixel_range)

    def forward(self, images):
        return self.model(denormalize(images, self.mean, self.std) * self.pixel_range)


class OwnInputContract(nn.Module):
    """An image Re-ID evaluator scoring a run whose input contract is another family's (CLIP's mean/std and
    384 x 128 on a text-to-image run): each batch is taken back to pixels, normalised with the evaluator's own
    statistics and resized (bilinear) to its own input size, as the images it was trained on."""

    def __init__(self, model, run_mean, run_std, own_mean, own_std, own_size):
        super().__init__()
        self.model = model
        self.run_mean, self.run_std = tuple(run_mean), tuple(run_std)
        self.own_mean, self.own_std = tuple(own_mean), tuple(own_std)
        self.own_size = tuple(int(side) for side in own_size)

    def forward(self, images):
        own = normalize(denormalize(images, self.run_mean, self.run_std), self.own_mean, self.own_std)
        if tuple(own.shape[-2:]) != self.own_size:
            own = F.interpolate(own, size=self.own_size, mode="bilinear", align_corners=False)
        return self.model(own)


def is_torchscript_archive(path):
    """A ``torch.jit.save`` archive holds ``code/`` and ``constants.pkl``; a ``torch.save`` file does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in name for name in names) and any(name.endswith("constants.pkl") for name in names)


def detect_format(state, source):
    """The first state-dict format (in ``AUTO_ORDER``) whose keys ``state`` has."""
    for name in AUTO_ORDER:
        if name in MODEL_FORMATS and MODEL_FORMATS.get(name).detect(state):
            return name
    sample = ", ".join(list(state)[:4])
    raise CheckpointError(
        f"{source}: MODEL.FORMAT auto cannot tell the format from its keys ({sample}, ...); set MODEL.FORMAT "
        f"to one of {', '.join(MODEL_FORMATS.names())}, torchscript or module"
    )


def load_factory(spec):
    """The callable named by ``MODEL.FACTORY`` (``package.module:function``)."""
    module_name, _, function_name = str(spec).partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"MODEL.FACTORY must be 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"MODEL.FACTORY: cannot import {module_name} ({err})") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ConfigError(f"MODEL.FACTORY: {module_name} has no function {function_name}")
    return factory


def _from_factory(cfg, checkpoint_path, logger):
    model = load_factory(cfg.MODEL.FACTORY)()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"MODEL.FACTORY {cfg.MODEL.FACTORY} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint_path:
        state = {k: v for k, v in read_checkpoint(checkpoint_path).items() if not k.startswith("classifier.")}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{checkpoint_path}: weights do not fit MODEL.FACTORY {cfg.MODEL.FACTORY}: "
                f"{len(result.missing_keys)} missing (e.g. {', '.join(result.missing_keys[:3])}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {', '.join(result.unexpected_keys[:3])})"
            )
        logger.info("%s: loaded into %s", checkpoint_path, cfg.MODEL.FACTORY)
    return model


def _from_torchscript(checkpoint_path, logger):
    if not checkpoint_path:
        raise ConfigError("MODEL.FORMAT torchscript needs the archive: pass --reid_ckpt_path (TEST.WEIGHT)")
    try:
        model = torch.jit.load(checkpoint_path, map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{checkpoint_path}: not a loadable TorchScript archive ({str(err).splitlines()[0]})"
        ) from None
    logger.info("%s: TorchScript archive loaded", checkpoint_path)
    return model


def _from_state_dict(cfg, fmt, checkpoint_path, logger):
    if not checkpoint_path:
        return build_model(cfg) if fmt == "agw" else MODEL_FORMATS.get(fmt).build(cfg)
    state = read_checkpoint(checkpoint_path)
    if fmt == "auto":
        fmt = detect_format(state, checkpoint_path)
        logger.info("%s: MODEL.FORMAT auto -> %s", checkpoint_path, fmt)
    model_format = MODEL_FORMATS.get(fmt)
    model = model_format.build(sized_by_file(cfg) if fmt in SIZED_BY_FILE else cfg)
    model_format.load(model, state, checkpoint_path, logger)
    return model


def resolve_format(cfg, checkpoint_path):
    """The format a run uses: MODEL.FORMAT, with ``auto`` settled for TorchScript archives and for an
    untrained model (no checkpoint to tell: the AGW, or its two-stem network on a visible-infrared data set)."""
    fmt = cfg.MODEL.FORMAT
    if fmt == "auto" and checkpoint_path and is_torchscript_archive(checkpoint_path):
        return "torchscript"
    if fmt == "auto" and not checkpoint_path:
        return "agw_vi" if cfg.DATASETS.NAMES in CROSS_MODALITY_DATASETS else "agw"
    return fmt


def build_authorization_model(cfg, checkpoint_path, device, logger=None):
    """The frozen model f of PixelFade: eval mode, no parameter requires grad, normalised input, on ``device``.

    ``checkpoint_path`` empty means an untrained model of the configured architecture (random
    from MODEL.INIT_SEED, or, for agw, an ImageNet backbone from MODEL.PRETRAIN_PATH).
    """
    logger = logger or _log
    if checkpoint_path and not os.path.isfile(checkpoint_path):
        raise CheckpointError(f"Re-ID checkpoint not found: {checkpoint_path} (--reid_ckpt_path / TEST.WEIGHT)")
    if cfg.INPUT.MODEL_INPUT not in MODEL_INPUTS:
        raise ConfigError(f"INPUT.MODEL_INPUT must be one of {', '.join(MODEL_INPUTS)}, got {cfg.INPUT.MODEL_INPUT!r}")
    fmt = resolve_format(cfg, checkpoint_path)
    if cfg.MODEL.FORMAT == "auto" and fmt == "torchscript":
        logger.info("%s: MODEL.FORMAT auto -> torchscript (a torch.jit archive)", checkpoint_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.MODEL.INIT_SEED)
        if fmt == "torchscript":
            model = _from_torchscript(checkpoint_path, logger)
        elif fmt == "module":
            model = _from_factory(cfg, checkpoint_path, logger)
        else:
            model = _from_state_dict(cfg, fmt, checkpoint_path, logger)
    if not checkpoint_path:
        logger.warning(
            "no Re-ID checkpoint given: the authorization model %s (%s) is not Re-ID trained (MODEL.INIT_SEED=%d)",
            cfg.MODEL.NAME,
            fmt,
            cfg.MODEL.INIT_SEED,
        )
    if cfg.INPUT.MODEL_INPUT == "pixels":
        model = PixelInput(model, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.PIXEL_RANGE)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(resolve_device(device))


def feature_dim(model, cfg, device):
    """The length of the model's feature vector (its ``feature_dim``, else one forward pass on zeros)."""
    inner = model.model if isinstance(model, PixelInput) else model
    dim = getattr(inner, "feature_dim", None)
    if isinstance(dim, int):
        return dim
    height, width = cfg.INPUT.IMG_SIZE
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, height, width, device=device)).shape[1])


def parse_eval_model(entry):
    """``'FORMAT:NAME:PATH'`` of TEST.EVAL_MODELS -> (format, name, path); NAME may be empty."""
    parts = str(entry).split(":", 2)
    if len(parts) != 3 or not parts[2]:
        raise ConfigError(f"TEST.EVAL_MODELS entry {entry!r} must be 'FORMAT:NAME:PATH' (NAME may be empty)")
    fmt, name, path = parts
    if not os.path.isfile(path):
        raise ConfigError(f"TEST.EVAL_MODELS entry {entry!r}: file not found: {path}")
    return fmt or "auto", name, path


def build_eval_models(cfg, device, logger=None):
    """The extra scoring models of TEST.EVAL_MODELS, as ``{label: model}`` in the config's order.

    Each takes the same input as the authorization model (INPUT.*); only format, name and weights
    differ. Where the run's input is CLIP's (a text-to-image run) and the evaluator is an image Re-ID
    format, it sees its own contract instead (``OwnInputContract``: the defaults' mean/std and size).
    """
    models = {}
    for entry in cfg.TEST.EVAL_MODELS:
        fmt, name, path = parse_eval_model(entry)
        sub = cfg.clone()
        sub.defrost()
        sub.MODEL.FORMAT = fmt
        if name:
            sub.MODEL.NAME = name
        sub.freeze()
        model = build_authorization_model(sub, path, device, logger)
        if runs_on_clip_input(cfg) and fmt not in SIZED_BY_FILE:
            own = get_default_config().INPUT
            model = OwnInputContract(model, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, own.PIXEL_MEAN, own.PIXEL_STD,
                                     own.IMG_SIZE).eval()
        models[f"{fmt}:{name or os.path.basename(path)}"] = model
    return models


def runs_on_clip_input(cfg):
    """Whether the run's images are normalised with CLIP's statistics (a text-to-image run's default)."""
    return tuple(cfg.INPUT.PIXEL_MEAN) == CLIP_PIXEL_MEAN and tuple(cfg.INPUT.PIXEL_STD) == CLIP_PIXEL_STD
