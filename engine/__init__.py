"""Protection engine: the PixelFade algorithm, comparison baselines and the run machinery."""
from .baselines import BASELINES, build_baseline
from .pixelfade import PixelFadeParams, ProtectOutput, protect_batch

__all__ = ["BASELINES", "PixelFadeParams", "ProtectOutput", "build_baseline", "protect_batch"]
