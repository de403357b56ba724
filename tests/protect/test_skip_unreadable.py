"""One corrupt image in a folder: the strict default stops before writing; DATASETS.SKIP_UNREADABLE leaves it out."""
import json
import os

import numpy as np
import pytest
from helpers import protect_argv
from PIL import Image

import protect_image
from configs import load_config
from data.datasets.bases import ImageRecord
from data.splits import plan_splits, train_split_plan
from data.synthetic import make_market1501
from utils.errors import DatasetError


def write_jpeg(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 16, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def truncate(path):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:-200])  # the header is whole, the compressed data ends early


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for k, name in enumerate(("cam1/a.jpg", "cam1/b.jpg", "cam2/bad.jpg", "cam2/c.jpg", "cam2/d.jpg")):
        write_jpeg(str(root / name), k)
    truncate(str(root / "cam2" / "bad.jpg"))
    return root


def folder_argv(folder, output, *extra):
    argv = protect_argv(folder, output, *extra)
    at = argv.index("--root")
    return argv[:at] + ["--image_folder"] + argv[at + 1:]


def test_strict_default_names_the_corrupt_file_and_writes_nothing(folder, tmp_path, capsys):
    assert protect_image.main(folder_argv(folder, tmp_path / "out")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protect_image.py: error")]
    assert len(lines) == 1
    assert f"1 of 5 images cannot be read: {folder / 'cam2' / 'bad.jpg'} (truncated or corrupt JPEG" in lines[0]
    assert lines[0].endswith("or leave them out with --skip_unreadable true (DATASETS.SKIP_UNREADABLE)")
    assert not os.path.exists(tmp_path / "out")


def test_opt_in_leaves_it_out_lists_it_and_a_rerun_skips_the_same(folder, tmp_path):
    output = tmp_path / "out"
    argv = folder_argv(folder, output, "--skip_unreadable", "true")
    assert protect_image.main(argv) == 0
    with open(output / "results.json") as handle:
        skipped = json.load(handle)["skipped"]
    assert [entry["path"] for entry in skipped] == [os.path.join("cam2", "bad.jpg")]
    assert skipped[0]["reason"].startswith("unreadable image: truncated or corrupt JPEG")
    assert sorted(os.listdir(output / "protected" / "cam2")) == ["c.jpg.png", "d.jpg.png"]
    assert "Skipped 1 file(s) of the data set (1 unreadable image(s)" in (output / "results.md").read_text()
    assert f"skipped 1 file: {os.path.join('cam2', 'bad.jpg')} (unreadable image" in (output / "log.txt").read_text()
    assert protect_image.main(argv) == 0  # resumed: every batch done, the same file left out
    log = (output / "log.txt").read_text()
    assert "gallery: 1 of 1 batches of this process already done, resuming" in log
    with open(output / "results.json") as handle:
        assert json.load(handle)["skipped"] == skipped


def test_unreadable_train_images_are_left_out_before_the_train_order_is_drawn(tmp_path):
    root = tmp_path / "data"
    make_market1501(str(root), num_ids=8, num_cams=2, images_per_id_cam=3, height=32, width=16, seed=0)
    train_dir = root / "market1501" / "bounding_box_train"
    victim = sorted(os.listdir(train_dir))[2]
    truncate(str(train_dir / victim))
    opts = ["DATASETS.ROOT_DIR", str(root), "PIXELFADE.SAVE_IMAGE_NPY", "True", "PIXELFADE.BATCH_SIZE", "4",
            "DATALOADER.NUM_INSTANCE", "2", "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(DatasetError, match=f"1 of .* images cannot be read: .*{victim}"):
        plan_splits(load_config("", opts))
    cfg = load_config("", [*opts, "DATASETS.SKIP_UNREADABLE", "True"])
    plan = plan_splits(cfg)
    assert [path for path, _ in plan.skipped] == [os.path.join("bounding_box_train", victim)]
    dataset_root = plan.root
    readable = [ImageRecord(os.path.join(train_dir, name), int(name[:4]), 0)
                for name in sorted(os.listdir(train_dir)) if name != victim and name.endswith(".jpg")]
    expected = train_split_plan(cfg, readable, dataset_root)
    assert plan.splits["train"].keys == expected.keys
    assert all(victim not in key for key in plan.splits["train"].keys)


def test_a_folder_with_no_readable_image_left_is_refused(tmp_path, capsys):
    root = tmp_path / "photos"
    write_jpeg(str(root / "only.jpg"), 0)
    truncate(str(root / "only.jpg"))
    assert protect_image.main(folder_argv(root, tmp_path / "out", "--skip_unreadable", "true")) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == "protect_image.py: error: no readable image is left in the gallery (1 unreadable, skipped)"
    assert not os.path.exists(tmp_path / "out")
