import logging
import os
import shutil

import pytest

from data import DATASETS, DatasetError, build_dataset
from data.datasets.market1501 import parse_market_name
from data.synthetic import make_market1501

SMALL = dict(num_ids=6, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)


@pytest.fixture(scope="module")
def market_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    return make_market1501(root, **SMALL)


def _place(source, root, relative):
    """Copy the synthetic folder to ``root/relative`` (relative "." = root itself)."""
    target = os.path.join(root, relative)
    shutil.copytree(source, target, dirs_exist_ok=True)
    return os.path.normpath(target)


def test_counts_pids_camids_junk_and_distractors(market_source):
    dataset = build_dataset("market1501", os.path.dirname(market_source))
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (12, 6, 9)
    assert {r.pid for r in dataset.train} == {0, 1, 2}
    assert dataset.train_original_pids == (1, 2, 3)
    assert dataset.num_train_pids == 3
    assert {r.pid for r in dataset.query} == {4, 5, 6}
    assert sorted(r.pid for r in dataset.gallery).count(0) == 3
    assert all(r.pid != -1 for r in dataset.gallery)
    junk = [n for n in os.listdir(os.path.join(market_source, "bounding_box_test"))
            if n.startswith("-1_")]
    assert len(junk) == 3
    assert {r.camid for r in dataset.query} == {0, 1}
    # Query: the first image of every camera of test identities 4-6 (frame = 2 * identity + 1).
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in dataset.query] == [
        ("0004_c1s1_000175_01.jpg", 4, 0), ("0004_c2s1_000175_01.jpg", 4, 1),
        ("0005_c1s1_000225_01.jpg", 5, 0), ("0005_c2s1_000225_01.jpg", 5, 1),
        ("0006_c1s1_000275_01.jpg", 6, 0), ("0006_c2s1_000275_01.jpg", 6, 1),
    ]
    for record in dataset.query + dataset.gallery:
        name = os.path.basename(record.path)
        assert int(name.split("_")[1][1]) - 1 == record.camid
        assert os.path.dirname(record.path) in (os.path.join(market_source, "query"),
                                                os.path.join(market_source, "bounding_box_test"))
    assert [r.path for r in dataset.gallery] == sorted(r.path for r in dataset.gallery)


@pytest.mark.parametrize(
    "relative, layout",
    [
        ("market1501", "market1501/"),
        ("Market-1501-v15.09.15", "Market-1501-v15.09.15/"),
        ("market1501/Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15/"),
        (".", "./"),
    ],
)
def test_every_layout(market_source, tmp_path, relative, layout, caplog):
    folder = _place(market_source, tmp_path, relative)
    with caplog.at_level(logging.INFO, logger="pixelfade.data"):
        dataset = build_dataset("market1501", tmp_path)
    assert dataset.layout == layout
    assert dataset.root == folder
    assert len(dataset.query) == 6 and dataset.query[0].path.startswith(folder)
    assert any(layout in message for message in caplog.messages)


def test_missing_folder_names_every_path_tried(tmp_path):
    with pytest.raises(DatasetError, match="no data set found under root") as err:
        build_dataset("market1501", tmp_path)
    message = str(err.value)
    for relative in ("market1501", "Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15"):
        assert os.path.join(str(tmp_path), relative) in message
    assert "accepted layouts" in message


def test_missing_subfolder_is_named(market_source, tmp_path):
    folder = _place(market_source, tmp_path, "market1501")
    shutil.rmtree(os.path.join(folder, "query"))
    with pytest.raises(DatasetError, match=r"market1501 \(missing query\)"):
        build_dataset("market1501", tmp_path)


def test_empty_query_is_an_error(market_source, tmp_path):
    folder = _place(market_source, tmp_path, "market1501")
    for name in os.listdir(os.path.join(folder, "query")):
        os.remove(os.path.join(folder, "query", name))
    with pytest.raises(DatasetError, match="query split is empty"):
        build_dataset("market1501", tmp_path)


def test_badly_named_image_is_named(market_source, tmp_path):
    folder = _place(market_source, tmp_path, "market1501")
    stray = os.path.join(folder, "bounding_box_test", "holiday.jpg")
    shutil.copy(os.path.join(folder, "query", os.listdir(os.path.join(folder, "query"))[0]), stray)
    with pytest.raises(DatasetError, match="holiday.jpg"):
        build_dataset("market1501", tmp_path)


def test_unknown_name_and_option(market_source):
    with pytest.raises(DatasetError, match="known: cuhk03, cuhk_pedes, icfg_pedes, image_folder, market1501, msmt17, regdb, rstpreid, sysu_mm01"):
        build_dataset("duke", "/nowhere")
    assert {"market1501", "cuhk03", "msmt17", "image_folder"} <= set(DATASETS)
    with pytest.raises(DatasetError, match="no option labeled"):
        build_dataset("market1501", os.path.dirname(market_source), labeled=True)


def test_summary_table(market_source):
    summary = build_dataset("market1501", os.path.dirname(market_source)).summary()
    lines = summary.splitlines()
    assert "market1501/" in lines[0]
    assert lines[3].replace(" ", "") == "train|3|12|2"
    assert lines[4].replace(" ", "") == "query|3|6|2"
    assert lines[5].replace(" ", "") == "gallery|4|9|2"


@pytest.mark.parametrize("name, expected", [
    ("0002_c3s1_000451_03.jpg", (2, 2)),
    ("1501_c6s4_001877_02.jpg", (1501, 5)),
    ("0000_c1s1_000001_00.jpg", (0, 0)),
    ("-1_c2s1_000401_03.jpg", (-1, 1)),
    ("0005_c8_f0046182.jpg", (5, 7)),  # DukeMTMC-reID style
    ("/data/query/0007_c2s1_000001_01.jpg", (7, 1)),
    ("0002_c0s1_000451_03.jpg", None),  # cameras are 1-based
    ("holiday.jpg", None),
    ("c1_0002.jpg", None),
])
def test_market_name_parsing(name, expected):
    assert parse_market_name(name) == expected


def test_hand_named_files_give_exact_records(tmp_path):
    """Literal Market names: junk skipped everywhere, distractors only kept outside the query."""
    names = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c6s2_000001_01.jpg",
                               "-1_c1s1_000101_01.jpg", "notes.txt"],
        "query": ["0003_c1s1_000200_00.jpg", "0003_c5s3_000101_02.jpg", "0000_c2s1_000050_01.jpg",
                  "-1_c3s1_000001_01.jpg"],
        "bounding_box_test": ["0003_c2s1_000300_01.jpg", "0000_c4s1_000010_01.jpg", "-1_c1s1_000002_01.jpg",
                              "0003_c1s1_000201_01.png"],
    }
    folder = tmp_path / "market1501"
    for split, files in names.items():
        os.makedirs(folder / split)
        for name in files:
            (folder / split / name).write_bytes(b"")

    def records(split):
        return [(os.path.relpath(r.path, folder), r.pid, r.camid) for r in getattr(dataset, split)]

    dataset = build_dataset("market1501", tmp_path)
    assert records("train") == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 0, 0),
        ("bounding_box_train/0002_c2s1_000551_01.jpg", 0, 1),
        ("bounding_box_train/0007_c6s2_000001_01.jpg", 1, 5),
    ]
    assert dataset.train_original_pids == (2, 7)
    assert records("query") == [
        ("query/0003_c1s1_000200_00.jpg", 3, 0),
        ("query/0003_c5s3_000101_02.jpg", 3, 4),
    ]
    assert records("gallery") == [
        ("bounding_box_test/0000_c4s1_000010_01.jpg", 0, 3),
        ("bounding_box_test/0003_c1s1_000201_01.png", 3, 0),
        ("bounding_box_test/0003_c2s1_000300_01.jpg", 3, 1),
    ]
