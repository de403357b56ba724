"""The AGW authorization Re-ID model, its backbones and safe checkpoint handling."""
from .baseline import Baseline
from .build import build_authorization_model, build_model, resolve_device
from .checkpoint import (
    LoadReport,
    convert_checkpoint,
    load_imagenet_backbone,
    load_reid_weights,
    read_checkpoint,
    state_dict_from,
)
from .errors import CheckpointError

__all__ = [
    "Baseline",
    "CheckpointError",
    "LoadReport",
    "build_authorization_model",
    "build_model",
    "convert_checkpoint",
    "load_imagenet_backbone",
    "load_reid_weights",
    "read_checkpoint",
    "resolve_device",
    "state_dict_from",
]
