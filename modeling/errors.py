"""Errors of the modeling package (the toolkit-wide family lives in ``utils.errors``)."""
from utils.errors import CheckpointError

__all__ = ["CheckpointError"]
