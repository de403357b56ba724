"""Original/protected image pairs saved by ``protect_image.py --save_image_npy``.

Layout (SPEC 3): ``<output>/img_npy/`` holds, per split s in {train, test} and batch index i,
``clean-s-i-images.npy`` and ``encry-s-i-images.npy`` (float32, B x 3 x H x W, ImageNet-normalised)
and ``s-i-ids.npy`` (plus ``test-i-camids.npy``). One saved file is one batch of the attack.

Every problem with these files is a ``DatasetError`` (``NonFiniteError`` for NaN or infinity) that
names the file and what was expected; the checks run when a split is opened, before any training.
"""
import os
import re

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from utils.errors import DatasetError, NonFiniteError

NPY_DIRNAME = "img_npy"
SPLITS = ("train", "test")
_IMAGES_PATTERN = re.compile(r"^(clean|encry)-(train|test)-(\d+)-images\.npy$")
# Elements per block of the one-off NaN/infinity scan (64 MiB of float32).
FINITE_CHECK_BLOCK = 1 << 24


def resolve_npy_dir(path):
    """The folder holding the pairs: ``path/img_npy`` (a run's output folder) or ``path`` itself."""
    nested = os.path.join(path, NPY_DIRNAME)
    if os.path.isdir(nested):
        return nested
    if os.path.isdir(path) and any(_IMAGES_PATTERN.match(name) for name in os.listdir(path)):
        return path
    raise DatasetError(
        f"no saved image pairs found: neither {nested} nor {path} holds "
        "clean-/encry-<split>-<i>-images.npy files (run protect_image.py with --save_image_npy "
        "first)")


def _image_files(npy_dir, split):
    """{batch_index: {'clean': path, 'encry': path}} of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    found = {}
    try:
        names = os.listdir(npy_dir)
    except OSError as err:
        raise DatasetError(f"cannot list the pair folder {npy_dir}: {err.strerror}") from None
    for name in names:
        match = _IMAGES_PATTERN.match(name)
        if match and match.group(2) == split:
            found.setdefault(int(match.group(3)), {})[match.group(1)] = os.path.join(npy_dir, name)
    return found


def _open_npy(path):
    """The .npy file memory-mapped (its data is not read)."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise DatasetError(f"cannot read {path} as a .npy array: {reason}") from None


def _npy_shape(path):
    """Shape of a .npy file without reading its data."""
    return _open_npy(path).shape


def _check_images_file(path):
    array = _open_npy(path)
    if array.ndim != 4:
        raise DatasetError(f"{path}: expected a B x C x H x W array of images, got shape "
                           f"{array.shape}")
    if array.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: expected float32 images, got dtype {array.dtype}")
    if array.shape[0] < 1:
        raise DatasetError(f"{path}: expected at least one image, got shape {array.shape}")
    return array.shape


def _check_pair(index, clean_path, protected_path, ids_path):
    clean_shape = _check_images_file(clean_path)
    protected_shape = _check_images_file(protected_path)
    if clean_shape != protected_shape:
        raise DatasetError(f"shape mismatch in batch {index}: {clean_path} is {clean_shape} but "
                           f"{protected_path} is {protected_shape}; expected equal shapes")
    ids_shape = _npy_shape(ids_path)
    if ids_shape != (clean_shape[0],):
        raise DatasetError(f"{ids_path} holds {ids_shape} ids but {clean_path} holds "
                           f"{clean_shape[0]} images; expected one id per image")


def check_finite(path, block=FINITE_CHECK_BLOCK):
    """Scan a saved image file once, block by block, for NaN or infinity (NonFiniteError)."""
    array = _open_npy(path)
    if array.dtype.kind != "f" or array.size == 0:
        return
    per_image = max(1, int(np.prod(array.shape[1:])))
    step = max(1, block // per_image)
    for start in range(0, array.shape[0], step):
        chunk = np.asarray(array[start:start + step])
        finite = np.isfinite(chunk).reshape(chunk.shape[0], -1).all(axis=1)
        if not finite.all():
            image = start + int(np.argmin(finite))
            raise NonFiniteError(f"{path} holds NaN or infinite values (first in image {image} "
                                 "of the batch); expected finite images: re-create the pairs "
                                 "with protect_image.py --save_image_npy")


def _pairs(npy_dir, split, sort_key):
    files = _image_files(npy_dir, split)
    if not files:
        raise DatasetError(f"no '{split}' pairs in {npy_dir} (expected "
                           f"clean-{split}-<i>-images.npy and encry-{split}-<i>-images.npy)")
    pairs = []
    for index, paths in files.items():
        clean_path = os.path.join(npy_dir, f"clean-{split}-{index}-images.npy")
        protected_path = os.path.join(npy_dir, f"encry-{split}-{index}-images.npy")
        for role, path, partner in (("clean", clean_path, protected_path),
                                    ("encry", protected_path, clean_path)):
            if role not in paths:
                raise DatasetError(f"missing partner: {partner} has no {path}")
        ids_path = os.path.join(npy_dir, f"{split}-{index}-ids.npy")
        if not os.path.isfile(ids_path):
            raise DatasetError(f"missing ids file {ids_path} for {clean_path}")
        _check_pair(index, clean_path, protected_path, ids_path)
        pairs.append((index, clean_path, protected_path, ids_path))
    return sorted(pairs, key=sort_key)


def find_pairs(npy_dir, split):
    """[(batch_index, clean_path, protected_path, ids_path)] of a split in numeric batch order."""
    return _pairs(npy_dir, split, sort_key=lambda pair: pair[0])


def reference_file_order(npy_dir, split):
    """The pairs in the reference's order: file names sorted as strings, so batch 10 precedes 2."""
    return _pairs(npy_dir, split, sort_key=lambda pair: os.path.basename(pair[1]))


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
        self.batch_indices = [index for index, _, _, _ in pairs]
        self._paths = [(clean, protected) for _, clean, protected, _ in pairs]
        shapes = [_npy_shape(clean) for clean, _ in self._paths]
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
            self._arrays = [(np.load(clean, mmap_mode="r"), np.load(protected, mmap_mode="r"))
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


def _as_tensor(array):
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


class SavedBatches(Dataset):
    """A :class:`PairDataset` whose items are whole saved batches (for batch_size=None)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return self.pairs.num_batches

    def __getitem__(self, position):
        return self.pairs.load_batch(position)


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
