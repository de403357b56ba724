"""Resuming a training run: its latest resume point, read once and safely, and the "same run?" check.

Every trainer writes ``training_checkpoint_<epoch>.pt`` after each epoch (the latest only, replaced
atomically) holding ``progress.identity``, what must not change between an interrupted run and its
resumption, and ``progress.epoch``. Only the identity is the recipe's own; finding, reading and
comparing are shared here so that every trainer refuses another run's folder in the same words.
"""
from dataclasses import dataclass

import torch
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler

from engine.common.checkpoint import AtomicCheckpointSaver, identity_changes
from utils.errors import CheckpointError, RunConflictError
from utils.file_io import latest_numbered_file

CHECKPOINT_PREFIX = "training"
# How many differing settings a refusal names.
CHANGES_SHOWN = 6


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint to go on from: its path, its content (loaded once, on the CPU) and its finished epochs."""

    path: str
    saved: dict
    epoch: int


def latest_checkpoint(output_dir):
    """``<output_dir>/training_checkpoint_<N>.pt`` with the highest N, or None."""
    return latest_numbered_file(output_dir, CHECKPOINT_PREFIX + "_checkpoint_", ".pt")


def read_resume_point(path, elsewhere="another --output"):
    """``(ResumePoint, saved identity)`` of ``path``; CheckpointError naming it for anything unreadable."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        identity, epoch = saved["progress"]["identity"], int(saved["progress"]["epoch"])
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"cannot read the training checkpoint {path} ({reason}); delete it to train "
                              f"afresh, or pass {elsewhere}") from None
    return ResumePoint(path, saved, epoch), identity


def find_resume_point(output_dir, identity, elsewhere="another --output", defaults=None):
    """The ResumePoint of ``output_dir``, or None; RunConflictError if it holds another run's checkpoint.

    ``elsewhere`` names where a user may start afresh instead (the flag or the folder setting).
    ``defaults`` ({key: default value}): a checkpoint written before a setting existed ran as its default
    does, so a key of ``identity`` that the saved identity lacks compares as its default; adding a setting
    then refuses no older folder, unless the run resuming it sets that key otherwise.
    """
    path = latest_checkpoint(output_dir)
    if path is None:
        return None
    point, saved_identity = read_resume_point(path, elsewhere)
    if defaults:
        saved_identity = {**{key: defaults[key] for key in identity if key in defaults}, **saved_identity}
    changes = identity_changes(saved_identity, identity, CHANGES_SHOWN)
    if changes:
        raise RunConflictError(f"{path} was written by a different training run ({changes}); pass the same "
                               f"settings to resume it, or {elsewhere} to start afresh")
    return point


class _NoSave(BaseSaveHandler):
    """Save handler of the processes other than rank 0: rank 0 writes the files."""

    def __call__(self, checkpoint, filename, metadata=None):
        pass

    def remove(self, filename):
        pass


def epoch_checkpointer(to_save, output_dir, writes=True):
    """ignite ``Checkpoint`` of the resume point: numbered by epoch, the latest only, written atomically."""
    return Checkpoint(to_save, AtomicCheckpointSaver(output_dir) if writes else _NoSave(),
                      filename_prefix=CHECKPOINT_PREFIX, n_saved=1, include_self=True,
                      global_step_transform=lambda engine, _: engine.state.epoch)


def restore(point, to_save, checkpointer):
    """Load the resume point into the run's objects and its checkpointer (which file to replace next)."""
    Checkpoint.load_objects({**to_save, "checkpointer": checkpointer}, point.saved)
