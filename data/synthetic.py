"""Small synthetic Re-ID data sets in the Market-1501, CUHK03 (.mat) and MSMT17 layouts.

They stand in for the real data (which is never downloaded) in tests and demos: each identity
keeps its clothing across cameras while lighting, background, pose and framing change, so a
feature extractor has something real to match. Output depends only on the arguments: every
image draws from its own seeded stream.
"""
import os

import h5py
import numpy as np
from PIL import Image
from scipy.io import savemat

from .datasets.cuhk03 import SLOTS_PER_VIEW as CUHK03_SLOTS_PER_VIEW
from .datasets.cuhk03 import extracted_name as cuhk03_name
from .synthetic_render import random_camera, random_look, render_crop, similar_look

DEFAULTS = dict(num_ids=24, num_cams=4, images_per_id_cam=3, height=128, width=64, seed=0)
# Stream tags, so looks, cameras and single images never share random numbers.
_LOOK, _CAMERA, _IMAGE, _DISTRACTOR, _JUNK, _PROTOCOL, _OUTFIT = range(7)
_MATLAB_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: pixelfade synthetic data "
    b"HDF5 schema 1.00 ."
)


def _rng(seed, *tags):
    return np.random.default_rng([seed, *tags])


def _check_args(num_ids, num_cams, images_per_id_cam, height, width):
    if num_ids < 2:
        raise ValueError(f"num_ids must be >= 2 (train and test identities), got {num_ids}")
    if num_cams < 2:
        raise ValueError(
            f"num_cams must be >= 2 so queries have cross-camera matches, got {num_cams}"
        )
    if images_per_id_cam < 2:
        raise ValueError(
            f"images_per_id_cam must be >= 2 (query plus gallery), got {images_per_id_cam}"
        )
    if height < 16 or width < 8:
        raise ValueError(f"image size must be at least 16x8 (height x width), got {height}x{width}")


def _new_folder(path):
    """Create ``path``; refuse a non-empty one so stale files never mix with new ones."""
    if os.path.isdir(path) and os.listdir(path):
        raise FileExistsError(
            f"{path} already exists and is not empty; remove it or pick another root"
        )
    os.makedirs(path, exist_ok=True)
    return path


class _World:
    """The identities and cameras of one synthetic data set, rendered on demand."""

    def __init__(self, num_ids, num_cams, height, width, seed, outfits=None, outfit_spread=0.06, occlusion=0.0):
        self.seed, self.height, self.width, self.occlusion = seed, height, width, occlusion
        if outfits is None:
            self.looks = [random_look(_rng(seed, _LOOK, i)) for i in range(num_ids)]
        else:
            shared = [random_look(_rng(seed, _OUTFIT, k)) for k in range(outfits)]
            self.looks = [similar_look(shared[i % outfits], _rng(seed, _LOOK, i), outfit_spread)
                          for i in range(num_ids)]
        self.cameras = [random_camera(_rng(seed, _CAMERA, c)) for c in range(num_cams)]

    def person(self, identity, cam, shot):
        rng = _rng(self.seed, _IMAGE, identity, cam, shot)
        return render_crop(self.looks[identity], self.cameras[cam], self.height, self.width, rng,
                           occlusion=self.occlusion)

    def stranger(self, index, kind):
        """A distractor ("far") or junk crop of a person outside the identity list."""
        tag = _DISTRACTOR if kind == "far" else _JUNK
        rng = _rng(self.seed, tag, index)
        cam = int(rng.integers(len(self.cameras)))
        look = random_look(rng)
        return cam, render_crop(look, self.cameras[cam], self.height, self.width, rng, kind)


def _save_jpg(path, pixels):
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def make_market1501(root, num_ids=24, num_cams=4, images_per_id_cam=3, height=128, width=64,
                    seed=0, num_distractors=None, num_junk=None, outfits=None, outfit_spread=0.06,
                    occlusion=0.0):
    """Write ``<root>/market1501/`` and return it.

    The first half of the identities (pids 1..) form bounding_box_train; each test identity
    gives its first image of every camera to query/ and the others to bounding_box_test/, plus
    distractors (pid 0) and junk (pid -1), by default one of each per test identity.

    A harder set, for a trained model: ``outfits`` K makes identity i a variation of shared
    outfit i mod K (colours moved by N(0, ``outfit_spread``)), so train and test identities wear
    similar clothes; ``occlusion`` p puts an occluder in front of a share p of the crops. The
    defaults (None, 0.0) give the same images as before these options existed.
    """
    _check_args(num_ids, num_cams, images_per_id_cam, height, width)
    if outfits is not None and not (isinstance(outfits, int) and outfits >= 1):
        raise ValueError(f"outfits must be a whole number >= 1 or None, got {outfits!r}")
    if not 0.0 <= occlusion <= 1.0 or outfit_spread < 0:
        raise ValueError(f"occlusion must be in [0, 1] and outfit_spread >= 0, got {occlusion} and {outfit_spread}")
    folder = _new_folder(os.path.join(os.fspath(root), "market1501"))
    split_dirs = {name: os.path.join(folder, name)
                  for name in ("bounding_box_train", "query", "bounding_box_test")}
    for path in split_dirs.values():
        os.makedirs(path)
    world = _World(num_ids, num_cams, height, width, seed, outfits, outfit_spread, occlusion)
    num_train = num_ids // 2
    frames = [0] * num_cams

    def name(pid, cam):
        """Market's PPPP_cCsS_FFFFFF_NN.jpg, with frame numbers rising per camera."""
        frames[cam] += 1
        pid_text = f"{pid:04d}" if pid >= 0 else str(pid)
        return f"{pid_text}_c{cam + 1}s1_{frames[cam] * 25:06d}_01.jpg"

    for identity in range(num_ids):
        pid = identity + 1
        for cam in range(num_cams):
            for shot in range(images_per_id_cam):
                if identity < num_train:
                    split = "bounding_box_train"
                else:
                    split = "query" if shot == 0 else "bounding_box_test"
                _save_jpg(os.path.join(split_dirs[split], name(pid, cam)),
                          world.person(identity, cam, shot))
    num_test = num_ids - num_train
    for kind, count, pid in (("far", num_distractors, 0), ("junk", num_junk, -1)):
        for index in range(num_test if count is None else count):
            cam, pixels = world.stranger(index, kind)
            _save_jpg(os.path.join(split_dirs["bounding_box_test"], name(pid, cam)), pixels)
    return folder


def _matlab_header(path):
    """Stamp the 128-byte MATLAB v7.3 header into the HDF5 user block."""
    header = _MATLAB_HEADER.ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as handle:
        handle.write(header)


def _write_cuhk03_mat(path, images, num_pairs, rows_per_pair):
    """``images[kind][(pair, row, slot)] = uint8 (H, W, 3)`` as MATLAB v7.3 cell arrays."""
    with h5py.File(path, "w", userblock_size=512) as mat:
        refs = mat.create_group("#refs#")

        def put(data, matlab_class, empty=False):
            dataset = refs.create_dataset(str(len(refs)), data=data)
            dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            if empty:
                dataset.attrs["MATLAB_empty"] = np.uint8(1)
            return dataset.ref

        for kind, by_slot in images.items():
            pair_refs = []
            for pair in range(num_pairs):
                shape = (2 * CUHK03_SLOTS_PER_VIEW, rows_per_pair[pair])
                cells = np.empty(shape, dtype=h5py.ref_dtype)
                for row in range(rows_per_pair[pair]):
                    for slot in range(2 * CUHK03_SLOTS_PER_VIEW):
                        pixels = by_slot.get((pair, row, slot))
                        cells[slot, row] = (
                            put(np.zeros(2, dtype=np.uint64), "double", empty=True)
                            if pixels is None
                            else put(np.ascontiguousarray(pixels.T), "uint8")
                        )
                pair_refs.append(put(cells, "cell"))
            top = mat.create_dataset(kind, data=np.array([pair_refs], dtype=h5py.ref_dtype))
            top.attrs["MATLAB_class"] = np.bytes_("cell")
    _matlab_header(path)


def _column(values):
    """A MATLAB double column vector, as the CUHK03-NP protocol files store indices."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def make_cuhk03(root, num_ids=24, num_cams=4, images_per_id_cam=3, height=128, width=64, seed=0):
    """Write ``<root>/cuhk03/`` (raw file in cuhk03_release/, protocol files beside it).

    ``num_cams`` must be even: CUHK03 records camera pairs, each person in both views of one
    pair, ``images_per_id_cam`` (2-5) images per view. Identities fill the pairs in blocks;
    even-numbered ones train, odd ones test with one random query per view, like CUHK03-NP.
    """
    _check_args(num_ids, num_cams, images_per_id_cam, height, width)
    if num_cams % 2 or images_per_id_cam > CUHK03_SLOTS_PER_VIEW:
        raise ValueError(
            f"cuhk03 needs an even num_cams (camera pairs) and images_per_id_cam <= 5, "
            f"got {num_cams} and {images_per_id_cam}"
        )
    folder = _new_folder(os.path.join(os.fspath(root), "cuhk03"))
    os.makedirs(os.path.join(folder, "cuhk03_release"))
    num_pairs = num_cams // 2
    world = _World(num_ids, num_cams, height, width, seed)
    pair_of = [identity * num_pairs // num_ids for identity in range(num_ids)]
    rows_per_pair = [pair_of.count(pair) for pair in range(num_pairs)]
    images, entries = {}, []  # entries: (name, label, identity, view) in file order
    for kind_index, kind in enumerate(("detected", "labeled")):
        by_slot = images[kind] = {}
        for identity in range(num_ids):
            pair = pair_of[identity]
            row = identity - pair_of.index(pair)
            for view in range(2):
                for shot in range(images_per_id_cam):
                    slot = view * CUHK03_SLOTS_PER_VIEW + shot
                    by_slot[(pair, row, slot)] = world.person(
                        identity, 2 * pair + view, 2 * CUHK03_SLOTS_PER_VIEW * kind_index + slot
                    )
                    if kind_index == 0:
                        name = cuhk03_name(pair, row, slot)
                        entries.append((name, identity + 1, identity, view))
    _write_cuhk03_mat(os.path.join(folder, "cuhk03_release", "cuhk-03.mat"), images, num_pairs,
                      rows_per_pair)
    for kind_index, kind in enumerate(("detected", "labeled")):
        rng = _rng(seed, _PROTOCOL, kind_index)
        train_idx, query_idx, gallery_idx = [], [], []
        for identity in range(num_ids):
            positions = [i for i, entry in enumerate(entries) if entry[2] == identity]
            if identity % 2 == 0:
                train_idx.extend(positions)
                continue
            for view in range(2):
                in_view = [i for i in positions if entries[i][3] == view]
                query = int(rng.choice(in_view))
                query_idx.append(query)
                gallery_idx.extend(i for i in in_view if i != query)
        filelist = np.empty((len(entries), 1), dtype=object)
        filelist[:, 0] = [entry[0] for entry in entries]
        savemat(
            os.path.join(folder, f"cuhk03_new_protocol_config_{kind}.mat"),
            dict(
                filelist=filelist,
                labels=_column([entry[1] for entry in entries]),
                train_idx=_column(np.asarray(train_idx) + 1),
                query_idx=_column(np.asarray(sorted(query_idx)) + 1),
                gallery_idx=_column(np.asarray(sorted(gallery_idx)) + 1),
            ),
        )
    return folder


def make_msmt17(root, version=1, num_ids=24, num_cams=4, images_per_id_cam=3, height=128,
                width=64, seed=0):
    """Write ``<root>/MSMT17_V1/`` (or ``MSMT17_V2/``) with its list files and return it.

    Train identities (pids 0..) keep their last image in list_val.txt; test identities
    (pids 0.., a separate numbering as in MSMT17) give their first image of each camera
    to list_query.txt and the rest to list_gallery.txt.
    """
    _check_args(num_ids, num_cams, images_per_id_cam, height, width)
    if version not in (1, 2):
        raise ValueError(f"msmt17 version must be 1 or 2, got {version}")
    folder = _new_folder(os.path.join(os.fspath(root), f"MSMT17_V{version}"))
    train_dir, test_dir = ("train", "test") if version == 1 else ("mask_train_v2", "mask_test_v2")
    world = _World(num_ids, num_cams, height, width, seed)
    num_train = num_ids // 2
    lists = {name: [] for name in ("train", "val", "query", "gallery")}
    for identity in range(num_ids):
        is_train = identity < num_train
        pid = identity if is_train else identity - num_train
        subdir = os.path.join(folder, train_dir if is_train else test_dir, f"{pid:04d}")
        os.makedirs(subdir)
        count = 0
        for cam in range(num_cams):
            for shot in range(images_per_id_cam):
                name = f"{pid:04d}_{count:03d}_{cam + 1:02d}_0113morning_{shot:04d}_0.jpg"
                relative = f"{pid:04d}/{name}"
                count += 1
                _save_jpg(os.path.join(folder, train_dir if is_train else test_dir, relative),
                          world.person(identity, cam, shot))
                if is_train:
                    last = cam == num_cams - 1 and shot == images_per_id_cam - 1
                    lists["val" if last else "train"].append(f"{relative} {pid}")
                else:
                    lists["query" if shot == 0 else "gallery"].append(f"{relative} {pid}")
    for name, lines in lists.items():
        with open(os.path.join(folder, f"list_{name}.txt"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return folder
