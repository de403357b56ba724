"""The reference's ``img_npy`` format: the one place that knows its file names and layout.

``protect_image.py --save_image_npy`` writes, and ``recovery_attack.py`` reads, per split s in
{train, test} and batch index i (README, "protect_image.py" outputs):

- ``clean-s-i-images.npy`` and ``encry-s-i-images.npy``: the original and the protected images of
  the batch, float32, B x 3 x H x W, in the normalized space (INPUT.PIXEL_MEAN / PIXEL_STD);
- ``s-i-ids.npy``: the B person ids; ``test-i-camids.npy``: the B camera ids (test split only);
- ``s-i-modality.npy`` (visible-infrared runs only, not in the reference): the B sensors, 'visible' or
  'infrared', so the attack can score each modality on its own.

The files lie in ``<output>/img_npy/``; readers accept that folder or the run folder holding it.
One saved batch is one step of the recovery attack.

Writing goes through ``utils.file_io`` (temporary file + rename, one-line ``OutputError``).
Every problem with existing files is a ``DatasetError`` (``NonFiniteError`` for NaN or infinity)
that names the file and what was expected.
"""
import os
import re
from typing import NamedTuple

import numpy as np
import torch

from utils.errors import DatasetError, NonFiniteError
from utils.file_io import atomic_save_npy

from .datasets.visible_infrared import MODALITIES

NPY_DIRNAME = "img_npy"
SPLITS = ("train", "test")
# File-name prefixes of the two image roles: the original and the protected batch.
ORIGINAL_PREFIX = "clean"
PROTECTED_PREFIX = "encry"
# Only this split's batches carry camera ids.
CAMIDS_SPLIT = "test"
# Visible-infrared runs only: the sensor of each image of a batch.
MODALITY_SUFFIX = "modality.npy"
_IMAGES_PATTERN = re.compile(
    rf"^({ORIGINAL_PREFIX}|{PROTECTED_PREFIX})-({'|'.join(SPLITS)})-(\d+)-images\.npy$")
# Elements per block of the one-off NaN/infinity scan (64 MiB of float32).
FINITE_CHECK_BLOCK = 1 << 24


class BatchFiles(NamedTuple):
    """Paths of one saved batch's files; ``camids`` is None outside the test split; ``modality`` is where a
    visible-infrared run puts the images' sensors (absent otherwise)."""

    clean: str
    protected: str
    ids: str
    camids: str | None
    modality: str | None = None


class SavedPair(NamedTuple):
    """One saved batch found on disk: its index and the paths of its images and ids."""

    index: int
    clean: str
    protected: str
    ids: str


class BatchArrays(NamedTuple):
    """One saved batch read back: original and protected images, ids, camids (test only)."""

    clean: np.ndarray
    protected: np.ndarray
    ids: np.ndarray
    camids: np.ndarray | None


# ---------------------------------------------------------------------------------------------
# names and folders
# ---------------------------------------------------------------------------------------------
def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")


def _images_name(prefix, split, index):
    return f"{prefix}-{split}-{index}-images.npy"


def batch_files(npy_dir, split, index):
    """:class:`BatchFiles` of batch ``index`` of ``split`` in ``npy_dir`` (present or not)."""
    _check_split(split)
    index = int(index)
    camids = (os.path.join(npy_dir, f"{split}-{index}-camids.npy") if split == CAMIDS_SPLIT
              else None)
    return BatchFiles(clean=os.path.join(npy_dir, _images_name(ORIGINAL_PREFIX, split, index)),
                      protected=os.path.join(npy_dir, _images_name(PROTECTED_PREFIX, split, index)),
                      ids=os.path.join(npy_dir, f"{split}-{index}-ids.npy"), camids=camids,
                      modality=os.path.join(npy_dir, f"{split}-{index}-{MODALITY_SUFFIX}"))


def npy_dir_of(output_dir):
    """The pair folder of a protection run: ``<output_dir>/img_npy``."""
    return os.path.join(output_dir, NPY_DIRNAME)


def run_dir_of(npy_dir):
    """The run folder holding ``npy_dir`` when it is an ``img_npy`` folder, else ``npy_dir``."""
    npy_dir = os.path.abspath(npy_dir)
    if os.path.basename(npy_dir) == NPY_DIRNAME:
        return os.path.dirname(npy_dir)
    return npy_dir


def resolve_npy_dir(path):
    """The folder holding the pairs: ``path/img_npy`` (a run's output folder) or ``path`` itself."""
    nested = npy_dir_of(path)
    if os.path.isdir(nested):
        return nested
    if os.path.isdir(path) and any(_IMAGES_PATTERN.match(name) for name in os.listdir(path)):
        return path
    raise DatasetError(
        f"no saved image pairs found: neither {nested} nor {path} holds "
        f"{ORIGINAL_PREFIX}-/{PROTECTED_PREFIX}-<split>-<i>-images.npy files (run "
        "protect_image.py with --save_image_npy first)")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _images_array(images):
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def _labels_array(labels):
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def write_batch(npy_dir, split, index, original, protected, pids, camids=None):
    """Write one batch's files atomically; returns their :class:`BatchFiles` (``modality`` None: that
    file is :func:`write_modalities`' to write).

    ``original`` and ``protected``: B x 3 x H x W tensors or arrays in the normalized space,
    stored as float32; ``pids`` (and, for the test split, ``camids``): B labels each.
    """
    files = batch_files(npy_dir, split, index)
    if files.camids is not None and camids is None:
        raise ValueError(f"the '{split}' split's batches need camera ids (camids)")
    atomic_save_npy(_images_array(original), files.clean)
    atomic_save_npy(_images_array(protected), files.protected)
    atomic_save_npy(_labels_array(pids), files.ids)
    if files.camids is not None:
        atomic_save_npy(_labels_array(camids), files.camids)
    return files._replace(modality=None)


def write_modalities(npy_dir, split, index, modalities):
    """Write the sensor of each image of batch ``index`` ('visible' or 'infrared'), atomically; returns the path."""
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f"modalities must be among {MODALITIES}, got {unknown}")
    path = batch_files(npy_dir, split, index).modality
    atomic_save_npy(np.asarray(list(modalities), dtype=f"<U{max(map(len, MODALITIES))}"), path)
    return path


def read_modalities(path, expected):
    """The B sensor names of a ``*-modality.npy`` file; ``DatasetError`` unless B == ``expected``, all known."""
    modalities = _load(path)
    if modalities.dtype.kind != "U" or modalities.shape != (expected,):
        raise DatasetError(f"{path} holds {modalities.dtype} values of shape {modalities.shape}; expected "
                           f"{expected} sensor names (one per image of its batch)")
    unknown = sorted(set(modalities.tolist()) - set(MODALITIES))
    if unknown:
        raise DatasetError(f"{path} names unknown sensors {unknown}; expected each of them among {MODALITIES}")
    return modalities


# ---------------------------------------------------------------------------------------------
# finding and checking
# ---------------------------------------------------------------------------------------------
def _image_files(npy_dir, split):
    """{batch_index: {prefix: path}} of one split's image files."""
    _check_split(split)
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


def open_npy(path):
    """A saved .npy file memory-mapped (its data is not read); ``DatasetError`` if unreadable."""
    return _load(path, mmap_mode="r")


def _load(path, mmap_mode=None):
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise DatasetError(f"cannot read {path} as a .npy array: {reason}") from None


def npy_shape(path):
    """Shape of a saved .npy file without reading its data."""
    return open_npy(path).shape


def _check_images_file(path):
    array = open_npy(path)
    if array.ndim != 4:
        raise DatasetError(f"{path}: expected a B x C x H x W array of images, got shape "
                           f"{array.shape}")
    if array.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: expected float32 images, got dtype {array.dtype}")
    if array.shape[0] < 1:
        raise DatasetError(f"{path}: expected at least one image, got shape {array.shape}")
    return array.shape


def _check_pair(pair):
    clean_shape = _check_images_file(pair.clean)
    protected_shape = _check_images_file(pair.protected)
    if clean_shape != protected_shape:
        raise DatasetError(f"shape mismatch in batch {pair.index}: {pair.clean} is {clean_shape} "
                           f"but {pair.protected} is {protected_shape}; expected equal shapes")
    ids_shape = npy_shape(pair.ids)
    if ids_shape != (clean_shape[0],):
        raise DatasetError(f"{pair.ids} holds {ids_shape} ids but {pair.clean} holds "
                           f"{clean_shape[0]} images; expected one id per image")


def check_finite(path, block=FINITE_CHECK_BLOCK):
    """Scan a saved image file once, block by block, for NaN or infinity (NonFiniteError)."""
    array = open_npy(path)
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
    found = _image_files(npy_dir, split)
    if not found:
        raise DatasetError(f"no '{split}' pairs in {npy_dir} (expected "
                           f"{_images_name(ORIGINAL_PREFIX, split, '<i>')} and "
                           f"{_images_name(PROTECTED_PREFIX, split, '<i>')})")
    pairs = []
    for index, present in found.items():
        files = batch_files(npy_dir, split, index)
        for prefix, path, partner in ((ORIGINAL_PREFIX, files.clean, files.protected),
                                      (PROTECTED_PREFIX, files.protected, files.clean)):
            if prefix not in present:
                raise DatasetError(f"missing partner: {partner} has no {path}")
        if not os.path.isfile(files.ids):
            raise DatasetError(f"missing ids file {files.ids} for {files.clean}")
        pair = SavedPair(index, files.clean, files.protected, files.ids)
        _check_pair(pair)
        pairs.append(pair)
    return sorted(pairs, key=sort_key)


def find_pairs(npy_dir, split):
    """[:class:`SavedPair`] of a split in numeric batch order, each checked (shapes, ids)."""
    return _pairs(npy_dir, split, sort_key=lambda pair: pair.index)


def reference_file_order(npy_dir, split):
    """The pairs in the reference's order: file names sorted as strings, so batch 10 precedes 2."""
    return _pairs(npy_dir, split, sort_key=lambda pair: os.path.basename(pair.clean))


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_batch(npy_dir, split, index):
    """:class:`BatchArrays` of one saved batch, read into memory (``DatasetError`` if unreadable)."""
    files = batch_files(npy_dir, split, index)
    return BatchArrays(clean=_load(files.clean), protected=_load(files.protected),
                       ids=_load(files.ids),
                       camids=None if files.camids is None else _load(files.camids))
