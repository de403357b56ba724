"""CUHK03, new 767/700 protocol: images live inside a MATLAB v7.3 file and are extracted once.

``cuhk-03.mat`` (HDF5) holds, per camera pair, a cell array of pids x 10 image slots (slots
1-5 the first view, 6-10 the second), each image a transposed uint8 array. The CUHK03-NP
``cuhk03_new_protocol_config_{detected,labeled}.mat`` files (MATLAB v5) name the images with
torchreid's convention ``<pair>_<pid:03>_<view>_<slot:02>.png`` and give 1-based
train/query/gallery indices into that list plus the pid of every entry.
The pngs go to ``<folder>/images_<kind>/`` and the split to a json cache with paths relative to
the folder, so the data set can be moved and a second build never opens a .mat file.
"""
import json
import logging
import os

import h5py
import numpy as np
from PIL import Image
from scipy.io import loadmat

from utils.file_io import atomic_write, make_dirs

from .bases import DatasetError, ImageRecord, ReIDDataset, relabel_train
from .layouts import find_layout
from .registry import register_dataset

logger = logging.getLogger("pixelfade.data")

CANDIDATES = ("cuhk03", ".")
RAW_MAT = "cuhk-03.mat"
# torchreid and fast-reid keep the raw file in cuhk03_release/ and the protocol files beside it.
MAT_FOLDERS = ("cuhk03_release", ".")
CONFIG_MAT = "cuhk03_new_protocol_config_{kind}.mat"
IMAGE_FOLDER = "images_{kind}"
CACHE_FILE = "pixelfade_cuhk03_new_{kind}.json"
CACHE_FORMAT = "pixelfade-cuhk03-new-protocol-v1"
CONFIG_KEYS = ("train_idx", "query_idx", "gallery_idx", "labels", "filelist")
SLOTS_PER_VIEW = 5


def extracted_name(pair_index, pid_index, slot_index):
    """torchreid's png name for a 0-based camera pair, person row and image slot."""
    view = 1 if slot_index < SLOTS_PER_VIEW else 2
    return f"{pair_index + 1}_{pid_index + 1:03d}_{view}_{slot_index + 1:02d}.png"


def camid_from_name(name):
    """0-based view (camera) from the third field of an extracted name."""
    fields = name.split("_")
    if len(fields) < 4 or not fields[2].isdigit() or int(fields[2]) < 1:
        return None
    return int(fields[2]) - 1


def find_file(folder, filename):
    """Path of ``filename`` in the first of MAT_FOLDERS holding it, or None."""
    for sub in MAT_FOLDERS:
        path = os.path.normpath(os.path.join(folder, sub, filename))
        if os.path.isfile(path):
            return path
    return None


def _tried(folder, filename):
    return " or ".join(os.path.normpath(os.path.join(folder, s, filename)) for s in MAT_FOLDERS)


def extract_images(raw_mat_path, kind, image_folder):
    """Save every non-empty ``kind`` image of the raw file as png; existing pngs are kept.

    Each png is written atomically (unique temporary name, then rename), so concurrent builders
    never see half an image; a failed write is an OutputError naming the png.
    """
    make_dirs(image_folder)
    written = 0
    try:
        with h5py.File(raw_mat_path, "r") as mat:
            if kind not in mat:
                raise DatasetError(f"{raw_mat_path} has no '{kind}' cell array")
            for pair_index, pair_ref in enumerate(np.asarray(mat[kind][()]).ravel()):
                cells = np.asarray(mat[pair_ref][()]).T
                for pid_index, row in enumerate(cells):
                    for slot_index, image_ref in enumerate(row):
                        path = os.path.join(
                            image_folder, extracted_name(pair_index, pid_index, slot_index)
                        )
                        if os.path.isfile(path):
                            continue
                        pixels = np.asarray(mat[image_ref][()])
                        if pixels.ndim != 3 or pixels.size == 0:
                            continue
                        image = Image.fromarray(np.ascontiguousarray(pixels.T).astype(np.uint8))
                        atomic_write(path, lambda handle: image.save(handle, format="PNG"))
                        written += 1
    except OSError as err:
        raise DatasetError(
            f"cannot extract CUHK03 images from {raw_mat_path} into {image_folder}: {err}"
        ) from err
    return written


def _cell_string(cell):
    values = np.asarray(cell).ravel()
    return str(values[0]) if values.size else ""


def read_protocol(config_path, image_folder_name):
    """Train/query/gallery lists ``[relative path, pid, camid]`` from a new-protocol file."""
    try:
        config = loadmat(config_path)
    except (OSError, ValueError, NotImplementedError) as err:
        raise DatasetError(f"cannot read {config_path} as a MATLAB v5 file: {err}") from err
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise DatasetError(f"{config_path} lacks {', '.join(missing)}; expected {CONFIG_KEYS}")
    names = [_cell_string(cell) for cell in np.asarray(config["filelist"]).ravel()]
    pids = np.asarray(config["labels"]).ravel().astype(np.int64)
    if len(pids) != len(names):
        raise DatasetError(
            f"{config_path}: labels ({len(pids)}) and filelist ({len(names)}) differ in length"
        )
    split = {}
    for subset in ("train", "query", "gallery"):
        indices = np.asarray(config[f"{subset}_idx"]).ravel().astype(np.int64) - 1
        if indices.size and (indices.min() < 0 or indices.max() >= len(names)):
            raise DatasetError(
                f"{config_path}: {subset}_idx must be 1-based indices into filelist "
                f"(1..{len(names)})"
            )
        entries = []
        for index in indices:
            camid = camid_from_name(names[index])
            if camid is None:
                raise DatasetError(
                    f"{config_path}: filelist entry {names[index]!r} is not of the form "
                    f"<pair>_<pid>_<view>_<slot>.png"
                )
            entries.append([f"{image_folder_name}/{names[index]}", int(pids[index]), camid])
        split[subset] = entries
    return split


def load_cache(cache_path, folder):
    """The cached split, or None with the reason it cannot be used."""
    if not os.path.isfile(cache_path):
        return None, f"no cache {cache_path}"
    try:
        with open(cache_path) as handle:
            cache = json.load(handle)
    except (OSError, ValueError) as err:
        return None, f"unreadable cache {cache_path}: {err}"
    if cache.get("format") != CACHE_FORMAT:
        return None, f"cache {cache_path} is not of format {CACHE_FORMAT}"
    for subset in ("train", "query", "gallery"):
        for relative, _, _ in cache[subset]:
            if not os.path.isfile(os.path.join(folder, relative)):
                return None, f"cache {cache_path} names {relative}, which is missing"
    return cache, None


def _check_folder(kind):
    def check(folder):
        cache, reason = load_cache(os.path.join(folder, CACHE_FILE.format(kind=kind)), folder)
        if cache is not None:
            return None
        missing = [
            _tried(folder, name)
            for name in (RAW_MAT, CONFIG_MAT.format(kind=kind))
            if find_file(folder, name) is None
        ]
        return f"{reason}, and missing {'; '.join(missing)}" if missing else None

    return check


def prepare_split(folder, kind):
    """Extract images and write the cache unless a complete one exists; returns the cache."""
    cache_path = os.path.join(folder, CACHE_FILE.format(kind=kind))
    cache, reason = load_cache(cache_path, folder)
    if cache is not None:
        logger.info("cuhk03: reusing cached %s split %s", kind, cache_path)
        return cache
    logger.info("cuhk03: %s; extracting %s images", reason, kind)
    raw_mat = find_file(folder, RAW_MAT)
    config_mat = find_file(folder, CONFIG_MAT.format(kind=kind))
    image_folder_name = IMAGE_FOLDER.format(kind=kind)
    written = extract_images(raw_mat, kind, os.path.join(folder, image_folder_name))
    cache = dict(format=CACHE_FORMAT, kind=kind, raw_mat=os.path.relpath(raw_mat, folder))
    cache.update(read_protocol(config_mat, image_folder_name))
    for subset in ("train", "query", "gallery"):
        for relative, _, _ in cache[subset]:
            if not os.path.isfile(os.path.join(folder, relative)):
                raise DatasetError(
                    f"{config_mat} names {os.path.basename(relative)}, which {raw_mat} does not "
                    f"hold as a {kind} image"
                )

    # A failed write is an OutputError naming the cache file.
    atomic_write(cache_path, lambda handle: handle.write(json.dumps(cache).encode("utf-8")))
    logger.info("cuhk03: wrote %d pngs and the split cache %s", written, cache_path)
    return cache


def _records(folder, entries):
    return [ImageRecord(os.path.join(folder, rel), int(pid), int(cam)) for rel, pid, cam in entries]


@register_dataset("cuhk03")
def build_cuhk03(root, labeled=False):
    """Detected boxes by default (the paper's setting); ``labeled=True`` for hand-drawn boxes."""
    kind = "labeled" if labeled else "detected"
    folder, layout = find_layout("cuhk03", root, CANDIDATES, _check_folder(kind))
    cache = prepare_split(folder, kind)
    raw_folder = os.path.dirname(cache["raw_mat"])
    layout = f"{layout}{raw_folder + '/' if raw_folder else ''} ({kind})"
    train, original_pids = relabel_train(_records(folder, cache["train"]))
    dataset = ReIDDataset(
        "cuhk03",
        folder,
        layout,
        train,
        _records(folder, cache["query"]),
        _records(folder, cache["gallery"]),
        original_pids,
    )
    cache_path = os.path.join(folder, CACHE_FILE.format(kind=kind))
    dataset.require_eval_splits(cache_path, cache_path)
    return dataset
