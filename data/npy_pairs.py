"""The recovery attack's Dataset over saved original/protected pairs (``data.img_npy`` files).

``PairDataset`` memory-maps every saved batch of a split once; ``SavedBatches`` serves them whole
(one saved batch per training step) in the order of ``SavedBatchOrder``. File names, finding,
pairing and checking the files belong to :mod:`data.img_npy`; every problem with them is a
``DatasetError`` (``NonFiniteError`` for NaN or infinity) raised when a split is opened, before
any training.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from utils.errors import DatasetError

from .img_npy import batch_files, check_finite, find_pairs, npy_shape, open_npy, read_modalities, reference_file_order


class PairDataset(Dataset):
    """All pairs of a split, memory-mapped once; item i is (protected image, original image).

    ``load_batch(k)`` returns the k-th saved batch whole, so a training step reads one contiguous
    block per file instead of stacking single images. Opening checks every file: its shape
    (``image_shape``, or the first batch's, for all of them) and, once, with ``check_values``,
    that it holds no NaN or infinity.
    """

    def __init__(self, npy_dir, split, reference_order=False, image_shape=None, check_values=True):
        pairs = (reference_file_order if reference_order else find_pairs)(npy_dir, split)
        self.split = split
        self.batch_indices = [pair.index for pair in pairs]
        self._paths = [(pair.clean, pair.protected) for pair in pairs]
        self._label_paths = [(pair.ids, batch_files(npy_dir, split, pair.index).camids) for pair in pairs]
        shapes = [npy_shape(clean) for clean, _ in self._paths]
        if image_shape is None:
            expected, source = tuple(shapes[0][1:]), self._paths[0][0]
        else:
            expected, source = tuple(image_shape), "the train split"
        for (clean, protected), shape in zip(self._paths, shapes):
            if tuple(shape[1:]) != expected:
                raise DatasetError(f"{clean} and {protected} hold images of shape "
                                   f"{tuple(shape[1:])}; expected C x H x W = {expected} "
                                   f"(the shape of {source})")
        self.image_shape = expected
        self.batch_sizes = [shape[0] for shape in shapes]
        self._starts = np.cumsum([0] + self.batch_sizes)
        self._modalities = _batch_modalities([batch_files(npy_dir, split, pair.index).modality for pair in pairs],
                                             self.batch_sizes)
        self._arrays = None
        if check_values:
            self.check_values()

    def check_values(self):
        """Scan every file of the split once for NaN or infinity (``NonFiniteError``)."""
        for clean, protected in self._paths:
            check_finite(clean)
            check_finite(protected)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def _mapped(self):
        if self._arrays is None:
            self._arrays = [(open_npy(clean), open_npy(protected))
                            for clean, protected in self._paths]
        return self._arrays

    @property
    def num_batches(self):
        return len(self._paths)

    def __len__(self):
        return int(self._starts[-1])

    def __getitem__(self, item):
        if not 0 <= item < len(self):
            raise IndexError(f"image {item} out of range for {len(self)} '{self.split}' images")
        position = int(np.searchsorted(self._starts, item, side="right")) - 1
        offset = item - int(self._starts[position])
        clean, protected = self._mapped()[position]
        return _as_tensor(protected[offset]), _as_tensor(clean[offset])

    def batch_files(self, position):
        """(clean path, protected path) of the saved batch at ``position``."""
        return self._paths[position]

    def load_batch(self, position):
        """(protected, original) float32 tensors of the saved batch at ``position``."""
        clean, protected = self._mapped()[position]
        return _as_tensor(protected), _as_tensor(clean)

    @property
    def has_modalities(self):
        """Whether the pairs say each image's sensor (a visible-infrared run's)."""
        return self._modalities is not None

    def load_modalities(self, position):
        """The sensor names ('visible' / 'infrared') of the saved batch at ``position``, or None if unknown."""
        return None if self._modalities is None else self._modalities[position]

    def load_labels(self, position):
        """(pids, camids) int64 arrays of the saved batch at ``position``; camids None outside 'test'."""
        ids_path, camids_path = self._label_paths[position]
        pids = _read_labels(ids_path, self.batch_sizes[position])
        camids = None if camids_path is None else _read_labels(camids_path, self.batch_sizes[position])
        return pids, camids


def _read_labels(path, expected):
    try:
        labels = np.asarray(np.load(path), dtype=np.int64).ravel()
    except (OSError, ValueError, TypeError) as err:
        raise DatasetError(f"cannot read labels from {path} ({err}); expected {expected} integer ids") from None
    if labels.shape[0] != expected:
        raise DatasetError(f"{path} holds {labels.shape[0]} labels; expected {expected} (one per image)")
    return labels


def _batch_modalities(paths, sizes):
    """Each batch's sensor names when every batch of the split has its modality file, None when none has.

    A split with some of them is a ``DatasetError`` naming the first missing one: the per-modality
    scores would leave images out.
    """
    present = [os.path.isfile(path) for path in paths]
    if not any(present):
        return None
    if not all(present):
        missing = paths[present.index(False)]
        raise DatasetError(f"{missing} is missing, while {paths[present.index(True)]} is there; expected a "
                           "modality file for every batch of the split or for none (re-create the pairs with "
                           "protect_image.py --save_image_npy)")
    return [read_modalities(path, size) for path, size in zip(paths, sizes)]


def split_by_identity(pids, fraction, seed):
    """The held-out identities: ``round(fraction * identities)`` of them (at least 1 when fraction > 0),
    drawn with a seeded permutation, so a resumed run holds out the same ones. Returns a sorted list."""
    identities = sorted({int(pid) for pid in pids})
    if fraction <= 0:
        return []
    count = max(1, round(fraction * len(identities)))
    if count >= len(identities):
        raise DatasetError(f"ATTACK.VAL_FRACTION {fraction} would hold out all {len(identities)} train "
                           "identities; expected a smaller fraction, or 0 for no validation split")
    order = torch.randperm(len(identities), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(identities[k] for k in order[:count])


def _as_tensor(array):
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


class SavedBatches(Dataset):
    """A :class:`PairDataset` whose items are saved batches (for batch_size=None).

    With ``rows`` ({position: row indices}), item k is the batch at the k-th position of ``rows``
    restricted to those rows (a train or validation part); without, item k is batch k whole.
    """

    def __init__(self, pairs, rows=None):
        self.pairs = pairs
        self.rows = rows
        self.positions = list(range(pairs.num_batches)) if rows is None else sorted(rows)

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, item):
        position = self.positions[item]
        protected, original = self.pairs.load_batch(position)
        modalities = self.pairs.load_modalities(position)
        if self.rows is None:
            return protected, original, modalities
        keep = torch.as_tensor(self.rows[position], dtype=torch.long)
        return protected[keep], original[keep], None if modalities is None else modalities[keep.numpy()]


def identity_rows(pairs, held_out):
    """({position: train rows}, {position: validation rows}) of ``pairs`` for the held-out identities.

    Positions left with no row in a part are absent from it. No image is in both parts.
    """
    held_out = set(held_out)
    train, validation = {}, {}
    for position in range(pairs.num_batches):
        pids, _ = pairs.load_labels(position)
        is_held = np.array([int(pid) in held_out for pid in pids], dtype=bool)
        if (~is_held).any():
            train[position] = np.flatnonzero(~is_held).tolist()
        if is_held.any():
            validation[position] = np.flatnonzero(is_held).tolist()
    return train, validation


class SavedBatchOrder(Sampler):
    """Order of saved batches per epoch: a permutation seeded by (seed, epoch), or file order.

    The order depends only on the seed and the epoch, so a resumed run sees the same batches.
    """

    def __init__(self, num_batches, shuffle, seed):
        self.num_batches = num_batches
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_batches))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_batches, generator=generator).tolist())
