"""Errors of the modeling package (kept apart so every module can raise them)."""


class CheckpointError(Exception):
    """A checkpoint file that cannot be read safely, or whose weights do not fit the model."""
