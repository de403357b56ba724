"""Checkpoint machinery every pipeline shares: the atomic ignite saver and the "same run?" comparison."""
import os

import torch
from ignite.handlers.checkpoint import BaseSaveHandler

from utils.file_io import atomic_write, os_errors_as_output_errors


def identity_changes(saved, current, limit=None):
    """``"key: old -> new, ..."`` for the settings in which two run identities differ ('' when equal)."""
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    return ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed[:limit])


class AtomicCheckpointSaver(BaseSaveHandler):
    """ignite save handler: atomic writes through utils.file_io, deletions deferred.

    ignite's ``Checkpoint`` deletes the checkpoint it drops *before* writing the new one; a full
    disk or a kill in between would leave none. Here a deletion waits until the next checkpoint
    is complete, so the folder always holds a whole one.
    """

    def __init__(self, dirname):
        self.dirname = dirname
        self._pending_removal = []

    def __call__(self, checkpoint, filename, metadata=None):
        atomic_write(os.path.join(self.dirname, filename),
                     lambda handle: torch.save(checkpoint, handle))
        for old in self._pending_removal:
            if old != filename:
                path = os.path.join(self.dirname, old)
                with os_errors_as_output_errors(path):
                    if os.path.exists(path):
                        os.remove(path)
        self._pending_removal = []

    def remove(self, filename):
        self._pending_removal.append(filename)
