"""Errors of the modeling package (the toolkit-wide family lives in ``utils.errors``)."""
from utils.errors import CheckpointError, ConfigError

__all__ = ["CheckpointError", "check_architecture"]


def check_architecture(name, known, family, model_format):
    """ConfigError naming MODEL.NAME, the format and the ``known`` names unless ``name`` is one of them."""
    if name not in known:
        raise ConfigError(f"MODEL.NAME {name!r} is not {family} architecture (MODEL.FORMAT {model_format}); "
                          f"known: {', '.join(known)}")
