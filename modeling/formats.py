"""Checkpoint formats: how a Re-ID model of one ecosystem becomes the authorization model.

A format knows the architectures it can build (``MODEL.NAME`` values), how to build one (an
eval-mode ``nn.Module`` that maps a batch in this toolkit's normalised space, (B, 3, H, W), to
features (B, D), with a ``feature_dim`` attribute), how to load a state dict into it (the
classifier ignored; anything else missing, unexpected or of the wrong shape is a
``CheckpointError`` naming the file and the architecture), and how to recognise its state dicts
for ``MODEL.FORMAT auto``. Each format registers itself in ``MODEL_FORMATS``; ``modeling.build``
picks one. TorchScript archives and Python factories (``torchscript``, ``module``) are not state
dicts and are handled in ``modeling.build``.
"""
from dataclasses import dataclass
from typing import Callable

from utils.registry import Registry

MODEL_FORMATS = Registry("model format", config_key="MODEL.FORMAT")
# Formats tried by MODEL.FORMAT auto, in this order; the first whose ``detect`` accepts the keys wins.
AUTO_ORDER = ("agw_vi", "fastreid", "torchreid", "irra", "clip", "agw")


@dataclass(frozen=True)
class ModelFormat:
    """One checkpoint format; see the module docstring for what each part must do."""

    name: str
    architectures: tuple
    build: Callable  # (cfg) -> nn.Module with .feature_dim, eval mode
    load: Callable  # (model, state, source, logger) -> LoadReport; CheckpointError on mismatch
    detect: Callable  # (state) -> bool
    feature_doc: str = ""  # how the format's features are defined (README table)
