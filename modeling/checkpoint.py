"""Safe reading of Re-ID / ImageNet checkpoints and strict loading into the AGW model.

Every file goes through ``torch.load(weights_only=True)`` first; what that refuses (the released
AGW files are whole pickled modules) goes through :mod:`modeling.safe_unpickle`, which rebuilds
tensors and containers only. Nothing in a checkpoint is ever executed.
"""
import os
from collections import OrderedDict
from collections.abc import Mapping

import torch

from utils.file_io import atomic_torch_save

from .errors import CheckpointError
from .load_report import LoadReport
from .safe_unpickle import ModuleRecord, load_untrusted, module_record_state_dict

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NESTED_STATE_ENTRIES = ("state_dict", "model", "net")  # net: the AGW cross-modality train.py
REID_IGNORED_PREFIXES = ("classifier.", "base.fc.")
IMAGENET_IGNORED_PREFIXES = ("fc.", "last_linear.", "classifier.")
IMAGENET_ABSENT_PREFIXES = ("NL_",)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "convert_checkpoint",
    "load_imagenet_backbone",
    "load_reid_weights",
    "read_checkpoint",
    "state_dict_from",
]


def read_checkpoint(path):
    """The tensors of the checkpoint at ``path`` by name (wrapper prefixes removed, CPU).

    Accepts plain state dicts, dicts with a 'state_dict' or 'model' entry, DataParallel /
    torch.compile prefixes, and pickled whole modules (zip or legacy torch format).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # refused or unreadable: the restricted reader either reads it or says why
        content = load_untrusted(path)
    return state_dict_from(content, path)


def state_dict_from(content, source="state dict"):
    """Flat OrderedDict[str, Tensor] from whatever a checkpoint held; ``source`` names it in errors."""
    raw = _find_tensors(content, source)
    state = OrderedDict()
    for key, tensor in raw.items():
        name = strip_wrapper_prefixes(key)
        if name in state:
            raise CheckpointError(f"{source}: key '{key}' collides with another once prefixes are removed")
        state[name] = tensor.detach()
    return state


def strip_wrapper_prefixes(key):
    """'module._orig_mod.base.x' -> 'base.x': drop DataParallel / torch.compile wrappers."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                stripped = True
    return key


def _find_tensors(content, source):
    if isinstance(content, ModuleRecord):
        try:
            return module_record_state_dict(content)
        except CheckpointError as err:
            raise CheckpointError(f"{source}: {err}") from None
    if isinstance(content, Mapping):
        if content and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
            return content
        for entry in NESTED_STATE_ENTRIES:
            if entry in content:
                return _find_tensors(content[entry], f"{source}['{entry}']")
        keys = ", ".join(repr(k) for k in list(content)[:10])
        raise CheckpointError(
            f"{source}: no weights found: expected a mapping of names to tensors or a "
            f"'state_dict'/'model'/'net' entry; it has keys {keys or '(none)'}"
        )
    raise CheckpointError(f"{source}: holds a {type(content).__name__}, not weights")


def compare_state_dicts(target_state, state, source, ignored_prefixes, absent_prefixes=()):
    """LoadReport of ``state`` against ``target_state``: ignored, unexpected, missing and mismatched keys.

    ``ignored_prefixes`` is a tuple of key prefixes, or a predicate on a key for formats whose
    ignored keys are not all prefixes.
    """
    is_ignored = ignored_prefixes if callable(ignored_prefixes) else (lambda key: key.startswith(ignored_prefixes))
    report = LoadReport(source)
    for key, tensor in state.items():
        if is_ignored(key):
            report.ignored.append(key)
        elif key not in target_state:
            report.unexpected.append(key)
        elif tensor.shape != target_state[key].shape:
            report.mismatched[key] = (tuple(tensor.shape), tuple(target_state[key].shape))
        else:
            report.loaded.append(key)
    for key in target_state:
        if key in state or is_ignored(key) or key.endswith("num_batches_tracked"):
            continue  # num_batches_tracked only counts training steps; features never read it
        if key.startswith(absent_prefixes):
            report.kept_initial.append(key)
        else:
            report.missing.append(key)
    return report


def _apply(module, state, report, logger, architecture="the model"):
    if not report.ok:
        details = "; ".join(report.problem_lines())
        raise CheckpointError(f"{report.source}: weights do not fit {architecture}: {details}")
    module.load_state_dict(OrderedDict((key, state[key]) for key in report.loaded), strict=False)
    if logger is not None:
        logger.info(report.summary())
    return report


def read_state(state_or_path, source=None):
    """``(state dict, source)`` from a checkpoint path or a mapping; ``source`` names it in errors."""
    if isinstance(state_or_path, (str, os.PathLike)):
        source = os.fspath(state_or_path)
        return read_checkpoint(source), source
    if isinstance(state_or_path, Mapping):
        source = source or "state dict"
        return state_dict_from(state_or_path, source), source
    raise TypeError(f"expected a checkpoint path or a state dict, got {type(state_or_path).__name__}")


def load_reid_weights(model, state_or_path, logger=None, source=None, architecture="the model"):
    """Copy a Re-ID checkpoint (path or mapping) into ``model``; returns the LoadReport.

    ``classifier.*`` (identities of the training set) and an unused backbone ``fc`` are ignored.
    Any missing, unexpected or wrong-shape key raises CheckpointError with the grouped report:
    an unexpected ``base.NL_*`` or ``global_pool.p`` means MODEL.NAME or GENERALIZED_MEAN_POOL
    differ from the checkpoint's training and the features would silently be wrong.
    """
    state, source = read_state(state_or_path, source)
    report = compare_state_dicts(model.state_dict(), state, source, REID_IGNORED_PREFIXES)
    return _apply(model, state, report, logger, architecture)


def load_imagenet_backbone(model, path, logger=None):
    """Copy torchvision-format ImageNet weights into ``model.base``; ``fc.*`` is ignored and the
    non-local blocks keep their identity initialisation. Returns the LoadReport."""
    source = os.fspath(path)
    state = read_checkpoint(source)
    report = compare_state_dicts(
        model.base.state_dict(), state, source, IMAGENET_IGNORED_PREFIXES, IMAGENET_ABSENT_PREFIXES
    )
    return _apply(model.base, state, report, logger)


def convert_checkpoint(src, dst):
    """Rewrite any accepted checkpoint as a plain state-dict file loadable with weights_only.

    All tensors are kept, the classifier included (loading ignores it); the write is atomic.
    Returns the state dict written.
    """
    state = OrderedDict((key, tensor.clone()) for key, tensor in read_checkpoint(src).items())
    atomic_torch_save(state, os.path.abspath(os.fspath(dst)))
    return state
