import os
import shutil

import pytest

from data import DatasetError, build_dataset
from data.datasets.msmt17 import msmt_camid
from data.synthetic import make_msmt17

SMALL = dict(num_ids=6, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=7)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("msmt")
    return {version: make_msmt17(root, version=version, **SMALL) for version in (1, 2)}


@pytest.mark.parametrize(
    "version, relative",
    [
        (1, "MSMT17_V1"),
        (1, "msmt17_v1"),
        (1, "msmt17/MSMT17_V1"),
        (1, "."),
        (2, "MSMT17_V2"),
        (2, "msmt17/MSMT17_V2"),
        (2, "."),
    ],
)
def test_every_layout(sources, tmp_path, version, relative):
    target = os.path.normpath(os.path.join(tmp_path, relative))
    shutil.copytree(sources[version], target, dirs_exist_ok=True)
    dataset = build_dataset("msmt17", tmp_path)
    assert dataset.root == target
    assert dataset.layout == relative.rstrip("/") + "/"
    train_dir = "train" if version == 1 else "mask_train_v2"
    test_dir = "test" if version == 1 else "mask_test_v2"
    assert all(f"/{train_dir}/" in r.path and os.path.isfile(r.path) for r in dataset.train)
    assert all(f"/{test_dir}/" in r.path for r in dataset.query + dataset.gallery)
    assert [os.path.relpath(r.path, os.path.join(target, test_dir)) for r in dataset.query] == [
        "0000/0000_000_01_0113morning_0000_0.jpg", "0000/0000_002_02_0113morning_0000_0.jpg",
        "0001/0001_000_01_0113morning_0000_0.jpg", "0001/0001_002_02_0113morning_0000_0.jpg",
        "0002/0002_000_01_0113morning_0000_0.jpg", "0002/0002_002_02_0113morning_0000_0.jpg",
    ]


def test_train_plus_val_counts_and_cameras(sources):
    dataset = build_dataset("msmt17", sources[1])
    # 3 train identities x 2 cameras x 2 images: 9 in list_train.txt and 3 in list_val.txt.
    with open(os.path.join(sources[1], "list_val.txt")) as handle:
        assert len(handle.read().split("\n")) - 1 == 3
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (12, 6, 6)
    assert dataset.num_train_pids == 3 and dataset.train_original_pids == (0, 1, 2)
    assert {r.pid for r in dataset.query} == {0, 1, 2}
    for record in dataset.train + dataset.query + dataset.gallery:
        assert record.camid == int(os.path.basename(record.path).split("_")[2]) - 1
    assert {r.camid for r in dataset.gallery} == {0, 1}


def test_malformed_list_line_is_named(sources, tmp_path):
    target = tmp_path / "MSMT17_V1"
    shutil.copytree(sources[1], target)
    with open(target / "list_query.txt", "a") as handle:
        handle.write("0000/no_camera.jpg 0\n")
    with pytest.raises(DatasetError, match=r"list_query.txt line 7"):
        build_dataset("msmt17", tmp_path)


def test_missing_layout_names_paths_and_missing_lists(sources, tmp_path):
    target = tmp_path / "msmt17" / "MSMT17_V1"
    shutil.copytree(sources[1], target)
    os.remove(target / "list_gallery.txt")
    with pytest.raises(DatasetError, match="no data set found under root") as err:
        build_dataset("msmt17", tmp_path)
    message = str(err.value)
    assert f"{target} (v1: missing list_gallery.txt" in message
    assert str(tmp_path / "MSMT17_V2") in message and "accepted layouts" in message


def test_empty_gallery_is_an_error(sources, tmp_path):
    target = tmp_path / "MSMT17_V1"
    shutil.copytree(sources[1], target)
    (target / "list_gallery.txt").write_text("")
    with pytest.raises(DatasetError, match="gallery split is empty.*list_gallery.txt"):
        build_dataset("msmt17", tmp_path)


@pytest.mark.parametrize("relative, expected", [
    ("0000/0000_000_01_0303morning_0008_0.jpg", 0),
    ("1041/1041_011_15_0113noon_0234_1.jpg", 14),
    ("0003_004_07_0113afternoon_0001_0.jpg", 6),
    ("0000/0000_000_00_0303morning_0008_0.jpg", None),  # cameras are 1-based
    ("0000/no_camera.jpg", None),
    ("0000/0000_000_xx_0303morning.jpg", None),
])
def test_camera_is_the_third_field(relative, expected):
    assert msmt_camid(relative) == expected


def test_hand_written_lists_give_exact_records(tmp_path):
    """Literal list lines: train + val form the training set, query and gallery keep their pids."""
    folder = tmp_path / "msmt17_v1"
    lists = {
        "list_train.txt": "0000/0000_000_01_0303morning_0008_0.jpg 0\n0002/0002_001_15_0113noon_0234_1.jpg 2\n",
        "list_val.txt": "0000/0000_003_04_0303afternoon_0011_0.jpg 0\n\n",
        "list_query.txt": "0005/0005_000_02_0113morning_0001_0.jpg 5\n",
        "list_gallery.txt": "0005/0005_001_12_0113noon_0002_0.jpg 5\n0001/0001_000_02_0113noon_0003_0.jpg 1\n",
    }
    os.makedirs(folder / "train")
    os.makedirs(folder / "test")
    for name, text in lists.items():
        (folder / name).write_text(text)
    dataset = build_dataset("msmt17", tmp_path)
    assert dataset.layout == "msmt17_v1/"

    def records(split, image_folder):
        return [(os.path.relpath(r.path, folder / image_folder), r.pid, r.camid) for r in getattr(dataset, split)]

    assert records("train", "train") == [
        ("0000/0000_000_01_0303morning_0008_0.jpg", 0, 0),
        ("0002/0002_001_15_0113noon_0234_1.jpg", 1, 14),
        ("0000/0000_003_04_0303afternoon_0011_0.jpg", 0, 3),
    ]
    assert dataset.train_original_pids == (0, 2)
    assert records("query", "test") == [("0005/0005_000_02_0113morning_0001_0.jpg", 5, 1)]
    assert records("gallery", "test") == [
        ("0005/0005_001_12_0113noon_0002_0.jpg", 5, 11),
        ("0001/0001_000_02_0113noon_0003_0.jpg", 1, 1),
    ]
