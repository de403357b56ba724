import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from PIL import Image

from data import DatasetError, build_dataset
from data.synthetic import make_cuhk03

SMALL = dict(num_ids=6, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=5)
MATS = ("cuhk03_release/cuhk-03.mat", "cuhk03_new_protocol_config_detected.mat",
        "cuhk03_new_protocol_config_labeled.mat")


@pytest.fixture(scope="module")
def cuhk_source(tmp_path_factory):
    return make_cuhk03(tmp_path_factory.mktemp("cuhk"), **SMALL)


@pytest.fixture
def cuhk_root(cuhk_source, tmp_path):
    shutil.copytree(cuhk_source, tmp_path / "cuhk03")
    return tmp_path


def test_new_protocol_counts_and_labels(cuhk_root):
    dataset = build_dataset("cuhk03", cuhk_root)
    # 6 identities in one camera pair; even ones (labels 1, 3, 5) train, 2 views x 2 images.
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (12, 6, 6)
    assert dataset.train_original_pids == (1, 3, 5)
    assert {r.pid for r in dataset.train} == {0, 1, 2}
    assert {r.pid for r in dataset.query} == {r.pid for r in dataset.gallery} == {2, 4, 6}
    assert {r.camid for r in dataset.query} == {0, 1}
    for record in dataset.train + dataset.query + dataset.gallery:
        view = int(os.path.basename(record.path).split("_")[2])
        assert record.camid == view - 1
        assert os.path.dirname(record.path) == str(cuhk_root / "cuhk03" / "images_detected")
    assert dataset.layout == "cuhk03/cuhk03_release/ (detected)"
    assert dataset.root == str(cuhk_root / "cuhk03")


def test_extracted_png_equals_the_mat_image(cuhk_root):
    dataset = build_dataset("cuhk03", cuhk_root, labeled=True)
    record = dataset.query[0]
    pair, row, _, slot = (int(v) for v in os.path.basename(record.path)[:-4].split("_"))
    with h5py.File(cuhk_root / "cuhk03" / MATS[0], "r") as mat:
        pair_cells = mat[mat["labeled"][0, pair - 1]][()]
        stored = mat[pair_cells[slot - 1, row - 1]][()].T
    assert stored.shape == (32, 16, 3)
    assert np.array_equal(np.asarray(Image.open(record.path)), stored)
    assert "images_labeled" in record.path and dataset.layout.endswith("(labeled)")


def test_cache_reused_without_mat_files(cuhk_root):
    first = build_dataset("cuhk03", cuhk_root)
    cache_path = cuhk_root / "cuhk03" / "pixelfade_cuhk03_new_detected.json"
    cache = json.loads(cache_path.read_text())
    assert all(not os.path.isabs(entry[0]) for entry in cache["query"] + cache["gallery"])
    for name in MATS:
        os.remove(cuhk_root / "cuhk03" / name)
    second = build_dataset("cuhk03", cuhk_root)
    assert (second.train, second.query, second.gallery) == (first.train, first.query, first.gallery)
    with pytest.raises(DatasetError, match="cuhk-03.mat"):
        build_dataset("cuhk03", cuhk_root, labeled=True)


def test_moved_folder_keeps_working_from_cache(cuhk_root, tmp_path_factory):
    build_dataset("cuhk03", cuhk_root)
    moved = tmp_path_factory.mktemp("moved")
    shutil.move(str(cuhk_root / "cuhk03"), str(moved / "cuhk03"))
    for name in MATS:
        os.remove(moved / "cuhk03" / name)
    dataset = build_dataset("cuhk03", moved)
    assert all(r.path.startswith(str(moved)) and os.path.isfile(r.path) for r in dataset.query)


def test_raw_mat_beside_protocol_files_and_root_itself(cuhk_root):
    folder = cuhk_root / "cuhk03"
    shutil.move(str(folder / MATS[0]), str(folder / "cuhk-03.mat"))
    assert build_dataset("cuhk03", cuhk_root).layout == "cuhk03/ (detected)"
    dataset = build_dataset("cuhk03", folder)
    assert dataset.layout == "./ (detected)" and len(dataset.gallery) == 6


def test_concurrent_builds_agree(cuhk_root):
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: build_dataset("cuhk03", cuhk_root), range(2))
    assert first.query == second.query and len(first.train) == 12
    names = os.listdir(cuhk_root / "cuhk03" / "images_detected")
    assert len(names) == 24 and not [n for n in names if n.endswith(".part")]


def test_missing_files_are_named(tmp_path):
    os.makedirs(tmp_path / "cuhk03")
    with pytest.raises(DatasetError) as err:
        build_dataset("cuhk03", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cuhk03" / "cuhk03_release" / "cuhk-03.mat") in message
    assert str(tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat") in message
    assert "accepted layouts" in message


def test_stale_cache_names_the_missing_image(cuhk_root):
    dataset = build_dataset("cuhk03", cuhk_root)
    for name in MATS:
        os.remove(cuhk_root / "cuhk03" / name)
    os.remove(dataset.gallery[0].path)
    with pytest.raises(DatasetError, match=os.path.basename(dataset.gallery[0].path)):
        build_dataset("cuhk03", cuhk_root)


def test_deleted_image_is_re_extracted(cuhk_root):
    dataset = build_dataset("cuhk03", cuhk_root)
    os.remove(dataset.query[0].path)
    again = build_dataset("cuhk03", cuhk_root)
    assert again.query == dataset.query and os.path.isfile(dataset.query[0].path)


def test_unreadable_raw_file_is_named(cuhk_root):
    raw = cuhk_root / "cuhk03" / MATS[0]
    raw.write_bytes(b"not an HDF5 file")
    with pytest.raises(DatasetError, match=f"cannot extract CUHK03 images from {raw}"):
        build_dataset("cuhk03", cuhk_root)
