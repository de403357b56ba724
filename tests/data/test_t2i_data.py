"""Text-to-image data sets: CUHK-PEDES, ICFG-PEDES and RSTPReid readers and the synthetic generator."""
import json
import os

import pytest
from helpers import write_image

from data import build_dataset
from data.datasets import DatasetError
from data.datasets.text_person import CaptionRecord
from data.synthetic import _World
from data.synthetic_text import colour_name, look_phrases, make_text_dataset
from tools import make_synthetic_data


def write_tree(root, folder, annotation, records, path_key="file_path", skip_images=()):
    """``<root>/<folder>/imgs/...`` (one tiny image per record) and the JSON list ``records``."""
    base = os.path.join(root, folder)
    os.makedirs(os.path.join(base, "imgs"), exist_ok=True)
    for record in records:
        relative = record.get(path_key)
        if isinstance(relative, str) and relative not in skip_images:
            write_image(os.path.join(base, "imgs", relative), size=(4, 8))
    with open(os.path.join(base, annotation), "w") as handle:
        json.dump(records, handle)
    return base


def record(split, pid, path, captions, path_key="file_path"):
    return {"split": split, "captions": captions, path_key: path, "id": pid, "processed_tokens": []}


CUHK_RECORDS = [
    record("train", 1, "CUHK01/a.png", ["first a", "second a"]),
    record("test", 40, "test_query/t1.jpg", ["t one", "t one again"]),
    record("train", 2, "CUHK01/b.png", ["only b"]),
    record("val", 30, "val/v.jpg", ["val caption"]),
    record("train", 1, "CUHK01/c.png", ["c text"]),
    record("test", 41, "test_query/t2.jpg", ["t two"]),
]


def test_cuhk_pedes_reads_labels_images_and_expands_captions(tmp_path):
    base = write_tree(tmp_path, "CUHK-PEDES", "reid_raw.json", CUHK_RECORDS)
    data = build_dataset("cuhk_pedes", tmp_path)
    imgs = os.path.join(base, "imgs")
    assert [(r.path, r.pid, r.camid) for r in data.train] == [
        (os.path.join(imgs, "CUHK01/a.png"), 0, -1), (os.path.join(imgs, "CUHK01/b.png"), 1, -1),
        (os.path.join(imgs, "CUHK01/c.png"), 0, -1)]
    assert data.train_original_pids == (1, 2)
    assert data.train_captions == [CaptionRecord("first a", 0, 0), CaptionRecord("second a", 0, 0),
                                   CaptionRecord("only b", 1, 1), CaptionRecord("c text", 0, 2)]
    assert [(r.path, r.pid) for r in data.gallery] == [(os.path.join(imgs, "test_query/t1.jpg"), 40),
                                                       (os.path.join(imgs, "test_query/t2.jpg"), 41)]
    assert data.query == []
    assert data.query_captions == [CaptionRecord("t one", 40, 0), CaptionRecord("t one again", 40, 0),
                                   CaptionRecord("t two", 41, 1)]
    assert data.caption_pids == [40, 40, 41]
    assert [r.pid for r in data.val] == [30] and data.val_captions == [CaptionRecord("val caption", 30, 0)]
    assert data.layout == "CUHK-PEDES/" and data.num_train_pids == 2
    assert "test   |     2 |        2 |          3" in data.summary()


@pytest.mark.parametrize("annotation", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_pedes_accepts_both_file_names_and_keeps_raw_train_ids(tmp_path, annotation):
    records = [record("train", 0, "train/0000/x.jpg", ["x"]), record("train", 1, "train/0001/y.jpg", ["y"]),
               record("test", 7, "test/0007/z.jpg", ["z1", "z2"])]
    write_tree(tmp_path, "ICFG-PEDES", annotation, records)
    data = build_dataset("icfg_pedes", tmp_path)
    assert [r.pid for r in data.train] == [0, 1] and data.train_original_pids == (0, 1)
    assert data.annotation.endswith(annotation)
    assert [c.pid for c in data.query_captions] == [7, 7] and data.val == []


def test_rstpreid_reads_img_path_and_root_may_be_the_data_set_folder(tmp_path):
    records = [record("train", 0, "0000_c1_0001.jpg", ["a"], "img_path"),
               record("test", 3, "0003_c2_0001.jpg", ["b", "c"], "img_path")]
    base = write_tree(tmp_path, "RSTPReid", "data_captions.json", records, path_key="img_path")
    data = build_dataset("rstpreid", base)
    assert data.layout == "./"
    assert data.gallery[0].path == os.path.join(base, "imgs", "0003_c2_0001.jpg")
    assert [c.text for c in data.query_captions] == ["b", "c"]


def test_rstpreid_record_with_file_path_instead_of_img_path_is_refused(tmp_path):
    write_tree(tmp_path, "RSTPReid", "data_captions.json", [record("test", 3, "a.jpg", ["b"])])
    path = os.path.join(tmp_path, "RSTPReid", "data_captions.json")
    with pytest.raises(DatasetError, match=f"^{path}: record 0: no 'img_path'"):
        build_dataset("rstpreid", tmp_path)


def _refusal(tmp_path, records, **kwargs):
    write_tree(tmp_path, "CUHK-PEDES", "reid_raw.json", records, **kwargs)
    with pytest.raises(DatasetError) as err:
        build_dataset("cuhk_pedes", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    return message.replace(os.path.join(str(tmp_path), "CUHK-PEDES", ""), "")


def test_train_labels_must_be_contiguous_from_zero(tmp_path):
    gap = [record("train", 1, "a.jpg", ["a"]), record("train", 3, "b.jpg", ["b"]), record("test", 9, "t.jpg", ["t"])]
    assert _refusal(tmp_path, gap) == ("reid_raw.json: train identities (id - 1) must be contiguous from 0; "
                                       "found 2 identities in 0..2, 2 where 1 was expected")


def test_cuhk_pedes_train_id_zero_is_refused(tmp_path):
    records = [record("train", 0, "a.jpg", ["a"]), record("test", 9, "t.jpg", ["t"])]
    assert "found 1 identities in -1..-1, -1 where 0 was expected" in _refusal(tmp_path, records)


@pytest.mark.parametrize("bad, expected", [
    ({"captions": []}, "reid_raw.json: record 1 (b.jpg): no captions (expected a non-empty list of strings)"),
    ({"captions": None}, "reid_raw.json: record 1 (b.jpg): no captions (expected a non-empty list of strings)"),
    ({"captions": ["ok", ""]}, "reid_raw.json: record 1 (b.jpg): every caption must be a non-empty string"),
    ({"split": "dev"}, "reid_raw.json: record 1 (b.jpg): split 'dev' is none of train, val, test"),
    ({"id": "2"}, "reid_raw.json: record 1 (b.jpg): 'id' must be an integer, got '2'"),
])
def test_bad_records_name_the_file_and_the_record(tmp_path, bad, expected):
    records = [record("train", 1, "a.jpg", ["a"]), {**record("test", 2, "b.jpg", ["b"]), **bad}]
    assert _refusal(tmp_path, records) == expected


def test_missing_image_is_refused_before_anything_else(tmp_path):
    records = [record("train", 1, "a.jpg", ["a"]), record("test", 2, "sub/b.jpg", ["b"])]
    message = _refusal(tmp_path, records, skip_images=("sub/b.jpg",))
    assert message == f"reid_raw.json: record 1 (sub/b.jpg): image not found: {os.path.join('imgs', 'sub', 'b.jpg')}"


def test_bad_json_and_missing_files(tmp_path):
    base = write_tree(tmp_path, "CUHK-PEDES", "reid_raw.json", [])
    with open(os.path.join(base, "reid_raw.json"), "w") as handle:
        handle.write('[{"split": "train",]')
    with pytest.raises(DatasetError, match=r"reid_raw.json: not valid JSON \(Expecting .* at line 1 column 20\)$"):
        build_dataset("cuhk_pedes", tmp_path)
    with open(os.path.join(base, "reid_raw.json"), "w") as handle:
        json.dump({"split": "train"}, handle)
    with pytest.raises(DatasetError, match="reid_raw.json: expected a JSON list of records, got a dict"):
        build_dataset("cuhk_pedes", tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)icfg_pedes: no data set found .*missing imgs/, ICFG-PEDES.json or "
                                           r"ICFG_PEDES.json"):
        build_dataset("icfg_pedes", tmp_path)


def test_no_test_split_is_refused(tmp_path):
    message = _refusal(tmp_path, [record("train", 1, "a.jpg", ["a"])])
    assert message == "reid_raw.json: no record has split 'test'; expected the test images (the gallery)"


def test_colour_names():
    assert [colour_name(c) for c in ((0.05, 0.05, 0.05), (0.95, 0.95, 0.95), (0.6, 0.6, 0.6), (0.9, 0.1, 0.1),
                                     (0.1, 0.2, 0.9), (0.1, 0.8, 0.2), (0.5, 0.3, 0.1))] == [
        "black", "white", "grey", "red", "blue", "green", "brown"]


@pytest.mark.parametrize("name, folder, offset", [("cuhk_pedes", "CUHK-PEDES", 1), ("icfg_pedes", "ICFG-PEDES", 0),
                                                  ("rstpreid", "RSTPReid", 0)])
def test_synthetic_text_sets_read_back_with_captions_of_the_rendered_looks(tmp_path, name, folder, offset):
    sizes = {"num_ids": 8, "num_cams": 2, "images_per_id_cam": 2, "height": 32, "width": 16, "seed": 3}
    written = make_text_dataset(name, tmp_path / "a", **sizes)
    assert written == os.path.join(tmp_path, "a", folder)
    data = build_dataset(name, tmp_path / "a")
    assert len(data.train) == 4 * 4 and data.num_train_pids == 4
    assert data.train_original_pids == tuple(range(offset, offset + 4))
    assert len(data.val) == (0 if name == "icfg_pedes" else 4)
    per_image = 1 if name == "icfg_pedes" else 2
    assert len(data.query_captions) == per_image * len(data.gallery)
    looks = _World(8, 2, 32, 16, 3).looks
    for caption in data.query_captions:
        phrases = look_phrases(looks[caption.pid - offset])
        assert all(phrases[key] in caption.text.lower() for key in ("lower", "shoes"))
    texts = {caption.text for caption in data.train_captions}
    assert len(texts) > len(data.train) // 2  # several phrasings, not one template per person
    make_text_dataset(name, tmp_path / "b", **sizes)
    with open(data.annotation) as first, open(data.annotation.replace(os.sep + "a" + os.sep, os.sep + "b" + os.sep)) \
            as second:
        assert first.read() == second.read()


def test_make_synthetic_data_tool_writes_a_text_set(tmp_path, capsys):
    make_synthetic_data.main(["--root", str(tmp_path), "--dataset", "icfg_pedes", "--num_ids", "4", "--num_cams", "2",
                              "--images_per_id_cam", "2", "--height", "32", "--width", "16"])
    out = capsys.readouterr().out
    assert f"wrote {os.path.join(tmp_path, 'ICFG-PEDES')}" in out and "# captions" in out


def test_the_protection_plan_holds_every_test_image_once_and_the_captions_of_the_readable_ones(tmp_path):
    """Test split: the first image of each person with two as a leakage query (camera 0), the rest after
    (camera 1); captions point at their image's row; an unreadable image and its captions are left out."""
    from configs import get_default_config
    from data.splits import plan_splits

    records = [record("train", 0, "t0.jpg", ["train caption"]), record("test", 7, "a.jpg", ["a one", "a two"]),
               record("test", 9, "b.jpg", ["b one"]), record("test", 7, "c.jpg", ["c one"]),
               record("test", 9, "bad.jpg", ["bad one"]), record("test", 9, "d.jpg", ["d one"])]
    base = write_tree(tmp_path, "ICFG-PEDES", "ICFG_PEDES.json", records)
    with open(os.path.join(base, "imgs", "bad.jpg"), "wb") as handle:
        handle.write(b"not an image")
    cfg = get_default_config()
    cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.OUTPUT_DIR = "icfg_pedes", str(tmp_path), str(tmp_path / "out")
    cfg.DATASETS.SKIP_UNREADABLE = True
    plan = plan_splits(cfg)
    test = plan.splits["test"]
    assert list(plan.splits) == ["test"] and test.num_query == 2
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in test.records] == [
        ("a.jpg", 7, 0), ("b.jpg", 9, 0), ("c.jpg", 7, 1), ("d.jpg", 9, 1)]
    assert [os.path.basename(test.records[row].path) for row in plan.gallery_order] == ["a.jpg", "b.jpg", "c.jpg",
                                                                                         "d.jpg"]
    assert [(c.text, c.pid, c.image_index) for c in plan.captions] == [
        ("a one", 7, 0), ("a two", 7, 0), ("b one", 9, 1), ("c one", 7, 2), ("d one", 9, 3)]
    assert [path for path, _ in plan.skipped] == ["imgs/bad.jpg"]
