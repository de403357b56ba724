"""Protection methods: tensors in, tensors out, no files (PixelFade, its reference loop, AVIH, baselines).

Importing the package registers every method; ``build_method`` builds the one PIXELFADE.METHOD names.
"""
from . import avih, baselines, pixelfade  # noqa: F401  (each registers its methods)
from .base import METHODS, ProtectedBatch, build_method  # noqa: F401
