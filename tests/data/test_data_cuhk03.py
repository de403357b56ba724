"""CUHK03 (new protocol) from hand-written release files.

The fixture writes ``cuhk-03.mat`` and the protocol files itself, with the file names of the
CUHK03-NP release written out literally (``<pair>_<pid:03>_<view>_<slot:02>.png``: slots 01-05 are
view 1, slots 06-10 view 2); it never calls the parser's naming code, so a naming bug in the parser
cannot hide by being repeated in the fixture. Every person row fills all 5 slots of both views, so
the view boundary (slot 05 / slot 06) is exercised.
"""
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from data import DatasetError, build_dataset
from data.synthetic import make_cuhk03
from utils.errors import OutputError

HEIGHT, WIDTH = 4, 2
RAW = "cuhk03_release/cuhk-03.mat"
PROTOCOL = "cuhk03_new_protocol_config_{kind}.mat"
MATS = (RAW, PROTOCOL.format(kind="detected"), PROTOCOL.format(kind="labeled"))
KINDS = {"detected": 1, "labeled": 2}  # written into channel 2 of every image

# (pair, row) -> (pid label, 1-based slots holding an image). Pair 2 row 2 has two empty cells.
PEOPLE = {(1, 1): (1, range(1, 11)), (1, 2): (2, range(1, 11)), (2, 1): (3, range(1, 11)),
          (2, 2): (4, (1, 2, 3, 5, 6, 7, 8, 10))}
FILELIST = [  # the protocol's filelist, in its order: 1-based index i is FILELIST[i - 1]
    "1_001_1_01.png", "1_001_1_02.png", "1_001_1_03.png", "1_001_1_04.png", "1_001_1_05.png",
    "1_001_2_06.png", "1_001_2_07.png", "1_001_2_08.png", "1_001_2_09.png", "1_001_2_10.png",
    "1_002_1_01.png", "1_002_1_02.png", "1_002_1_03.png", "1_002_1_04.png", "1_002_1_05.png",
    "1_002_2_06.png", "1_002_2_07.png", "1_002_2_08.png", "1_002_2_09.png", "1_002_2_10.png",
    "2_001_1_01.png", "2_001_1_02.png", "2_001_1_03.png", "2_001_1_04.png", "2_001_1_05.png",
    "2_001_2_06.png", "2_001_2_07.png", "2_001_2_08.png", "2_001_2_09.png", "2_001_2_10.png",
    "2_002_1_01.png", "2_002_1_02.png", "2_002_1_03.png", "2_002_1_05.png",
    "2_002_2_06.png", "2_002_2_07.png", "2_002_2_08.png", "2_002_2_10.png",
]
LABELS = [1] * 10 + [2] * 10 + [3] * 10 + [4] * 8
TRAIN_IDX = list(range(1, 11)) + list(range(21, 31))  # persons 1 and 3
QUERY_IDX = [15, 16, 34, 35]  # the last image of view 1 and the first of view 2
GALLERY_IDX = [11, 12, 13, 14, 17, 18, 19, 20, 31, 32, 33, 36, 37, 38]

EXPECTED_QUERY = [  # (file name, pid, camid)
    ("1_002_1_05.png", 2, 0), ("1_002_2_06.png", 2, 1), ("2_002_1_05.png", 4, 0), ("2_002_2_06.png", 4, 1),
]
EXPECTED_GALLERY = [
    ("1_002_1_01.png", 2, 0), ("1_002_1_02.png", 2, 0), ("1_002_1_03.png", 2, 0), ("1_002_1_04.png", 2, 0),
    ("1_002_2_07.png", 2, 1), ("1_002_2_08.png", 2, 1), ("1_002_2_09.png", 2, 1), ("1_002_2_10.png", 2, 1),
    ("2_002_1_01.png", 4, 0), ("2_002_1_02.png", 4, 0), ("2_002_1_03.png", 4, 0),
    ("2_002_2_07.png", 4, 1), ("2_002_2_08.png", 4, 1), ("2_002_2_10.png", 4, 1),
]
EXPECTED_TRAIN = [  # pids relabelled 1 -> 0 and 3 -> 1
    ("1_001_1_01.png", 0, 0), ("1_001_1_02.png", 0, 0), ("1_001_1_03.png", 0, 0), ("1_001_1_04.png", 0, 0),
    ("1_001_1_05.png", 0, 0), ("1_001_2_06.png", 0, 1), ("1_001_2_07.png", 0, 1), ("1_001_2_08.png", 0, 1),
    ("1_001_2_09.png", 0, 1), ("1_001_2_10.png", 0, 1),
    ("2_001_1_01.png", 1, 0), ("2_001_1_02.png", 1, 0), ("2_001_1_03.png", 1, 0), ("2_001_1_04.png", 1, 0),
    ("2_001_1_05.png", 1, 0), ("2_001_2_06.png", 1, 1), ("2_001_2_07.png", 1, 1), ("2_001_2_08.png", 1, 1),
    ("2_001_2_09.png", 1, 1), ("2_001_2_10.png", 1, 1),
]


def pixels(pair, row, slot, kind):
    """The image in cell (pair, row, slot), all 1-based: channel 0 codes the cell, channel 1 the
    pixel position (to catch a transposition), channel 2 the kind of box."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = 100 * (pair - 1) + 20 * (row - 1) + slot
    image[..., 1] = 10 * np.arange(HEIGHT)[:, None] + np.arange(WIDTH)[None, :]
    image[..., 2] = KINDS[kind]
    return image


def write_raw_mat(path):
    """MATLAB v7.3 layout: kind -> 1 x pairs cell of (10 slots x rows) cells of transposed images."""
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")

        def put(data):
            return refs.create_dataset(str(len(refs)), data=data).ref

        for kind in KINDS:
            pair_refs = []
            for pair in (1, 2):
                cells = np.empty((10, 2), dtype=h5py.ref_dtype)
                for row in (1, 2):
                    slots = PEOPLE[(pair, row)][1]
                    for slot in range(1, 11):
                        if slot in slots:
                            cells[slot - 1, row - 1] = put(np.ascontiguousarray(pixels(pair, row, slot, kind).T))
                        else:  # MATLAB's empty matrix
                            cells[slot - 1, row - 1] = put(np.zeros(2, dtype=np.uint64))
                pair_refs.append(put(cells))
            mat.create_dataset(kind, data=np.array([pair_refs], dtype=h5py.ref_dtype))


def write_protocol(path):
    filelist = np.empty((len(FILELIST), 1), dtype=object)
    filelist[:, 0] = FILELIST

    def column(values):
        return np.asarray(values, dtype=np.float64).reshape(-1, 1)

    savemat(path, dict(filelist=filelist, labels=column(LABELS), train_idx=column(TRAIN_IDX),
                       query_idx=column(QUERY_IDX), gallery_idx=column(GALLERY_IDX)))


@pytest.fixture(scope="module")
def cuhk_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuhk") / "cuhk03"
    os.makedirs(folder / "cuhk03_release")
    write_raw_mat(folder / RAW)
    for kind in KINDS:
        write_protocol(folder / PROTOCOL.format(kind=kind))
    return folder


@pytest.fixture
def cuhk_root(cuhk_source, tmp_path):
    shutil.copytree(cuhk_source, tmp_path / "cuhk03")
    return tmp_path


def named(records):
    return [(os.path.basename(r.path), r.pid, r.camid) for r in records]


def test_fixture_tables_agree():
    assert [FILELIST[i - 1] for i in QUERY_IDX] == [name for name, _, _ in EXPECTED_QUERY]
    assert [FILELIST[i - 1] for i in GALLERY_IDX] == [name for name, _, _ in EXPECTED_GALLERY]
    assert len(FILELIST) == len(LABELS) == sum(len(slots) for _, slots in PEOPLE.values()) == 38


@pytest.mark.parametrize("kind", ["detected", "labeled"])
def test_exact_names_pids_and_camids_across_the_view_boundary(cuhk_root, kind):
    dataset = build_dataset("cuhk03", cuhk_root, labeled=kind == "labeled")
    assert named(dataset.query) == EXPECTED_QUERY
    assert named(dataset.gallery) == EXPECTED_GALLERY
    assert named(dataset.train) == EXPECTED_TRAIN
    assert dataset.train_original_pids == (1, 3)
    folder = cuhk_root / "cuhk03" / f"images_{kind}"
    assert {os.path.dirname(r.path) for r in dataset.train + dataset.query + dataset.gallery} == {str(folder)}
    # Every non-empty cell, and only those, extracted under its release name.
    assert sorted(os.listdir(folder)) == sorted(FILELIST)
    assert dataset.layout == f"cuhk03/cuhk03_release/ ({kind})"
    assert dataset.root == str(cuhk_root / "cuhk03")


@pytest.mark.parametrize("name, cell", [
    ("1_002_1_05.png", (1, 2, 5)),  # last slot of view 1
    ("1_002_2_06.png", (1, 2, 6)),  # first slot of view 2
    ("1_001_1_01.png", (1, 1, 1)),
    ("2_001_2_10.png", (2, 1, 10)),
    ("2_002_2_06.png", (2, 2, 6)),
    ("2_002_2_10.png", (2, 2, 10)),  # after an empty cell (slot 09)
])
@pytest.mark.parametrize("kind", ["detected", "labeled"])
def test_each_png_holds_the_image_of_its_cell(cuhk_root, kind, name, cell):
    build_dataset("cuhk03", cuhk_root, labeled=kind == "labeled")
    stored = np.asarray(Image.open(cuhk_root / "cuhk03" / f"images_{kind}" / name))
    assert np.array_equal(stored, pixels(*cell, kind))


def test_cache_holds_relative_paths_and_is_reused_without_mat_files(cuhk_root):
    first = build_dataset("cuhk03", cuhk_root)
    cache = json.loads((cuhk_root / "cuhk03" / "pixelfade_cuhk03_new_detected.json").read_text())
    assert cache["query"] == [[f"images_detected/{name}", pid, camid] for name, pid, camid in EXPECTED_QUERY]
    assert cache["raw_mat"] == RAW and cache["kind"] == "detected"
    for name in MATS:
        os.remove(cuhk_root / "cuhk03" / name)
    second = build_dataset("cuhk03", cuhk_root)
    assert (second.train, second.query, second.gallery) == (first.train, first.query, first.gallery)
    raw = cuhk_root / "cuhk03" / RAW
    missing = rf"(?s)tried:.*\(no cache .*labeled\.json, and missing {re.escape(str(raw))}"
    with pytest.raises(DatasetError, match=missing):
        build_dataset("cuhk03", cuhk_root, labeled=True)


def test_moved_folder_keeps_working_from_cache(cuhk_root, tmp_path_factory):
    build_dataset("cuhk03", cuhk_root)
    moved = tmp_path_factory.mktemp("moved")
    shutil.move(str(cuhk_root / "cuhk03"), str(moved / "cuhk03"))
    for name in MATS:
        os.remove(moved / "cuhk03" / name)
    dataset = build_dataset("cuhk03", moved)
    assert [r.path for r in dataset.query] == [
        str(moved / "cuhk03" / "images_detected" / name) for name, _, _ in EXPECTED_QUERY
    ]
    assert named(dataset.gallery) == EXPECTED_GALLERY


def test_raw_mat_beside_protocol_files_and_root_itself(cuhk_root):
    folder = cuhk_root / "cuhk03"
    shutil.move(str(folder / RAW), str(folder / "cuhk-03.mat"))
    assert build_dataset("cuhk03", cuhk_root).layout == "cuhk03/ (detected)"
    dataset = build_dataset("cuhk03", folder)
    assert dataset.layout == "./ (detected)" and named(dataset.gallery) == EXPECTED_GALLERY


def test_concurrent_builds_agree(cuhk_root):
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: build_dataset("cuhk03", cuhk_root), range(2))
    assert named(first.query) == named(second.query) == EXPECTED_QUERY
    assert named(first.train) == EXPECTED_TRAIN
    # Only the finished pngs: no temporary file of either builder is left behind.
    assert sorted(os.listdir(cuhk_root / "cuhk03" / "images_detected")) == sorted(FILELIST)


def test_missing_files_are_named(tmp_path):
    os.makedirs(tmp_path / "cuhk03")
    with pytest.raises(DatasetError, match="no data set found under root") as err:
        build_dataset("cuhk03", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cuhk03" / "cuhk03_release" / "cuhk-03.mat") in message
    assert str(tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat") in message
    assert "accepted layouts: <root>/cuhk03/, <root>/./" in message


def test_stale_cache_names_the_missing_image(cuhk_root):
    dataset = build_dataset("cuhk03", cuhk_root)
    for name in MATS:
        os.remove(cuhk_root / "cuhk03" / name)
    os.remove(dataset.gallery[0].path)
    with pytest.raises(DatasetError, match="names images_detected/1_002_1_01.png, which is missing"):
        build_dataset("cuhk03", cuhk_root)


def test_deleted_image_is_re_extracted(cuhk_root):
    dataset = build_dataset("cuhk03", cuhk_root)
    os.remove(dataset.query[1].path)
    again = build_dataset("cuhk03", cuhk_root)
    assert again.query == dataset.query
    assert np.array_equal(np.asarray(Image.open(dataset.query[1].path)), pixels(1, 2, 6, "detected"))


def test_protocol_naming_an_image_the_raw_file_lacks_is_named(cuhk_root):
    """An empty cell (pair 2, row 2, slot 04) named by the protocol: the error says which."""
    folder = cuhk_root / "cuhk03"
    FILELIST_WITH_EMPTY = FILELIST[:33] + ["2_002_1_04.png"] + FILELIST[34:]
    filelist = np.empty((38, 1), dtype=object)
    filelist[:, 0] = FILELIST_WITH_EMPTY
    config = dict(filelist=filelist, labels=np.array(LABELS, float)[:, None],
                  train_idx=np.array(TRAIN_IDX, float)[:, None], query_idx=np.array(QUERY_IDX, float)[:, None],
                  gallery_idx=np.array(GALLERY_IDX, float)[:, None])
    savemat(folder / PROTOCOL.format(kind="detected"), config)
    with pytest.raises(DatasetError,
                       match="names 2_002_1_04.png, which .*cuhk-03.mat does not hold as a detected image"):
        build_dataset("cuhk03", cuhk_root)


def test_unreadable_raw_file_is_named(cuhk_root):
    raw = cuhk_root / "cuhk03" / RAW
    raw.write_bytes(b"not an HDF5 file")
    with pytest.raises(DatasetError, match=f"cannot extract CUHK03 images from {raw}"):
        build_dataset("cuhk03", cuhk_root)


def test_unwritable_image_folder_is_an_output_error_naming_it(cuhk_root):
    blocker = cuhk_root / "cuhk03" / "images_detected"
    blocker.write_text("a file where the image folder should be")
    with pytest.raises(OutputError, match=f"cannot write {blocker}: "):
        build_dataset("cuhk03", cuhk_root)


def test_unwritable_cache_is_an_output_error_naming_it(cuhk_root):
    cache = cuhk_root / "cuhk03" / "pixelfade_cuhk03_new_detected.json"
    os.makedirs(cache)  # a folder where the cache file should go
    with pytest.raises(OutputError, match=f"cannot write {cache}: the path is a folder"):
        build_dataset("cuhk03", cuhk_root)
    assert sorted(os.listdir(cuhk_root / "cuhk03" / "images_detected")) == sorted(FILELIST)
    assert [n for n in os.listdir(cuhk_root / "cuhk03") if n.endswith(".tmp")] == []


def test_synthetic_generator_output_parses(tmp_path):
    """The demo's synthetic CUHK03 (written by data.synthetic) reads back with its layout."""
    make_cuhk03(tmp_path, num_ids=6, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=5)
    dataset = build_dataset("cuhk03", tmp_path)
    # 6 identities in one camera pair; even ones (labels 1, 3, 5) train, 2 views x 2 images.
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (12, 6, 6)
    assert dataset.train_original_pids == (1, 3, 5)
    assert sorted((r.pid, r.camid) for r in dataset.query) == [(2, 0), (2, 1), (4, 0), (4, 1), (6, 0), (6, 1)]
    # Slots 01-02 are view 1 and 06-07 view 2 (the synthetic data fills 2 of 5 slots per view).
    assert sorted(os.path.basename(r.path) for r in dataset.train)[:4] == [
        "1_001_1_01.png", "1_001_1_02.png", "1_001_2_06.png", "1_001_2_07.png"]
