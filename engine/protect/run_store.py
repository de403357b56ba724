"""The output folder of a protection run: what is written where, atomically, and how a rerun resumes.

Layout (``<output>/``):
- ``manifest.json``: the run's fingerprint; a rerun with another fingerprint is refused.
- ``records/<split>-<i>.pt``: one file per finished batch (global image indices, labels, features,
  per-image statistics, the random-generator state after the batch). It is written last, so its
  presence is what marks a batch as done.
- ``img_npy/``: the reference layout (``clean-s-i-images.npy``, ``encry-s-i-images.npy``,
  ``s-i-ids.npy``, ``test-i-camids.npy``) for the recovery attack, with ``--save_image_npy``.
- ``imgs/<split>_<i>.png``: original (top) / protected (bottom) grids of the first batches.
- ``png/<split>/<index>.png`` (or ``protected/<relative path>`` for a plain folder): the protected
  images as lossless 8-bit PNG, with storage realism on.
"""
import json
import os

import torch

from data import img_npy
from utils.errors import RunConflictError
from utils.file_io import atomic_torch_save, atomic_write_text, write_png

MANIFEST = "manifest.json"


class RunStore:
    """Reads and writes one run's output folder; every write is atomic (temp file + rename)."""

    def __init__(self, output_dir):
        self.output_dir = output_dir
        self.records_dir = os.path.join(output_dir, "records")
        self.npy_dir = img_npy.npy_dir_of(output_dir)
        self.grid_dir = os.path.join(output_dir, "imgs")

    def path(self, *parts):
        return os.path.join(self.output_dir, *parts)

    def open_run(self, fingerprint):
        """Create the folder, or check that the run already there is this one (resume)."""
        os.makedirs(self.records_dir, exist_ok=True)
        manifest_path = self.path(MANIFEST)
        if os.path.exists(manifest_path):
            with open(manifest_path) as handle:
                previous = json.load(handle).get("fingerprint", {})
            differing = sorted(
                key for key in set(previous) | set(fingerprint)
                if previous.get(key) != fingerprint.get(key)
            )
            if differing:
                details = "; ".join(
                    f"{key}: {previous.get(key)!r} there, {fingerprint.get(key)!r} now"
                    for key in differing
                )
                raise RunConflictError(
                    f"output directory {self.output_dir} holds a different run's files "
                    f"({details}). Use another --output, or delete that folder to start over."
                )
            return False
        if os.listdir(self.records_dir):
            raise RunConflictError(
                f"output directory {self.output_dir} has batch records but no {MANIFEST}; "
                "it was not written by this tool's current run. Use another --output."
            )
        atomic_write_text(json.dumps({"fingerprint": fingerprint}, indent=2), manifest_path)
        return True

    def record_path(self, split, batch_index):
        return os.path.join(self.records_dir, f"{split}-{batch_index}.pt")

    def has_batch(self, split, batch_index):
        return os.path.exists(self.record_path(split, batch_index))

    def batch_state(self, split, batch_index, item_keys):
        """'missing', 'done' (the record names exactly ``item_keys``) or 'stale' (other images)."""
        if not self.has_batch(split, batch_index):
            return "missing"
        return "done" if self.load_batch(split, batch_index).get("items") == list(item_keys) else "stale"

    def remove_batches_from(self, split, num_batches):
        """Delete the files of ``split``'s batches numbered ``num_batches`` and above (left by a larger
        data set), so the folder holds only this run's batches."""
        prefix = f"{split}-"
        for name in os.listdir(self.records_dir):
            if name.startswith(prefix) and name.endswith(".pt") and name[len(prefix):-3].isdigit():
                batch_index = int(name[len(prefix):-3])
                if batch_index >= num_batches:
                    self._remove_batch_files(split, batch_index)

    def _remove_batch_files(self, split, batch_index):
        pairs = img_npy.batch_files(self.npy_dir, split, batch_index)
        paths = [self.record_path(split, batch_index), os.path.join(self.grid_dir, f"{split}_{batch_index}.png")]
        paths += [path for path in pairs if path is not None]
        for path in paths:
            if os.path.exists(path):
                os.remove(path)

    def load_batch(self, split, batch_index):
        return torch.load(self.record_path(split, batch_index), map_location="cpu", weights_only=True)

    def save_record(self, split, batch_index, record):
        atomic_torch_save(record, self.record_path(split, batch_index))

    def save_pairs(self, split, batch_index, original, protected, pids, camids):
        """The reference's ``img_npy`` files for one batch, written by ``data.img_npy``."""
        img_npy.write_batch(img_npy.npy_dir_of(self.output_dir), split, batch_index, original, protected, pids,
                            camids)

    def save_png(self, relative_path, pixels):
        write_png(pixels, self.path(relative_path))

    def write_text(self, name, text):
        atomic_write_text(text, self.path(name))
