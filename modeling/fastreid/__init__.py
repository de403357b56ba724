"""fast-reid (JDAI-CV/fast-reid) R50 checkpoints as authorization models; importing registers
the ``fastreid`` model format (see :mod:`modeling.fastreid.format`)."""
from .format import ARCHITECTURES, FASTREID_FORMAT, build, detect, load
from .model import EmbeddingHead, FastReIDModel, FixedGeM
from .resnet import FastReIDResNet, SEBottleneck, SELayer, stem_maxpool

__all__ = [
    "ARCHITECTURES",
    "FASTREID_FORMAT",
    "EmbeddingHead",
    "FastReIDModel",
    "FastReIDResNet",
    "FixedGeM",
    "SEBottleneck",
    "SELayer",
    "build",
    "detect",
    "load",
    "stem_maxpool",
]
