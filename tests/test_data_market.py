import logging
import os
import shutil

import pytest

from data import DATASETS, DatasetError, build_dataset
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
    for record in dataset.query + dataset.gallery:
        name = os.path.basename(record.path)
        assert int(name.split("_")[1][1]) - 1 == record.camid
        assert os.path.isfile(record.path)
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
    with pytest.raises(DatasetError) as err:
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
    with pytest.raises(DatasetError, match="known: cuhk03, image_folder, market1501, msmt17"):
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
