"""Backbones of the authorization model; importing this package registers them all."""
from .registry import BACKBONES, build_backbone, register_backbone
from . import osnet, resnet, resnet_ibn_a, resnet_nl  # noqa: F401  (registration side effect)
from . import mobilenet, senet  # noqa: F401  (registration side effect)

__all__ = ["BACKBONES", "build_backbone", "register_backbone"]
