"""The authorization Re-ID model: the AGW family, other ecosystems' formats, safe checkpoint handling."""
from .baseline import Baseline
from .authorization import build_authorization_model, feature_dim
from .build import build_model, resolve_device
from .checkpoint import (
    LoadReport,
    convert_checkpoint,
    load_imagenet_backbone,
    load_reid_weights,
    read_checkpoint,
    state_dict_from,
)
from .errors import CheckpointError
from . import agw_vi, fastreid, torchreid  # noqa: F401  (register their formats)
from . import clip_reid  # noqa: F401  (registers irra and clip; imports open_clip on first use)

__all__ = [
    "Baseline",
    "CheckpointError",
    "LoadReport",
    "build_authorization_model",
    "feature_dim",
    "build_model",
    "convert_checkpoint",
    "load_imagenet_backbone",
    "load_reid_weights",
    "read_checkpoint",
    "resolve_device",
    "state_dict_from",
]
