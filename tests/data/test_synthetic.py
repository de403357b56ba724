import os

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from data.synthetic import make_cuhk03, make_market1501, make_msmt17
from tools.make_synthetic_data import main as make_synthetic_cli

SMALL = dict(num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16)


def _files(folder):
    paths = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    return sorted(os.path.relpath(path, folder) for path in paths)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = make_market1501(tmp_path / "a", seed=1, **SMALL)
    second = make_market1501(tmp_path / "b", seed=1, **SMALL)
    third = make_market1501(tmp_path / "c", seed=2, **SMALL)
    assert _files(first) == _files(second)
    for relative in _files(first):
        with open(os.path.join(first, relative), "rb") as a, \
                open(os.path.join(second, relative), "rb") as b:
            assert a.read() == b.read()
    name = os.path.join("query", sorted(os.listdir(os.path.join(first, "query")))[0])
    assert not np.array_equal(np.asarray(Image.open(os.path.join(first, name))),
                              np.asarray(Image.open(os.path.join(third, name))))


def test_market_names_sizes_and_special_pids(tmp_path):
    folder = make_market1501(tmp_path, num_distractors=3, num_junk=2, **SMALL)
    gallery = os.listdir(os.path.join(folder, "bounding_box_test"))
    assert sum(n.startswith("0000_") for n in gallery) == 3
    assert sum(n.startswith("-1_") for n in gallery) == 2
    assert len(os.listdir(os.path.join(folder, "bounding_box_train"))) == 2 * 2 * 2
    query = sorted(os.listdir(os.path.join(folder, "query")))
    assert [n[:7] for n in query] == ["0003_c1", "0003_c2", "0004_c1", "0004_c2"]
    with Image.open(os.path.join(folder, "query", query[0])) as image:
        assert image.size == (16, 32) and image.mode == "RGB"


def test_same_identity_looks_alike_across_cameras(tmp_path):
    folder = make_market1501(tmp_path, num_ids=8, num_cams=2, images_per_id_cam=2,
                             height=64, width=32, seed=0)
    pixels = {}
    for name in sorted(os.listdir(os.path.join(folder, "query"))):
        image = np.asarray(Image.open(os.path.join(folder, "query", name)), dtype=float)
        center = image[12:44, 8:24]
        pixels.setdefault(name[:4], []).append(center.reshape(-1, 3).mean(axis=0))
    pids = sorted(pixels)
    same = np.mean([np.abs(pixels[p][0] - pixels[p][1]).sum() for p in pids])
    pairs = [(p, q) for p in pids for q in pids if p != q]
    other = np.mean([np.abs(pixels[p][0] - pixels[q][1]).sum() for p, q in pairs])
    assert same < 0.5 * other


def test_cuhk03_files_follow_the_release_formats(tmp_path):
    folder = make_cuhk03(tmp_path, **SMALL)
    raw = os.path.join(folder, "cuhk03_release", "cuhk-03.mat")
    with open(raw, "rb") as handle:
        assert handle.read(19) == b"MATLAB 7.3 MAT-file"
    with h5py.File(raw, "r") as mat:
        assert mat["detected"].shape == (1, 1)
        cells = mat[mat["detected"][0, 0]][()]
        assert cells.shape == (10, 4)
        assert mat[cells[0, 0]].shape == (3, 16, 32)
        assert mat[cells[4, 0]].attrs["MATLAB_empty"] == 1
    config = loadmat(os.path.join(folder, "cuhk03_new_protocol_config_detected.mat"))
    assert config["filelist"].shape == (16, 1) and config["filelist"][0, 0][0] == "1_001_1_01.png"
    assert config["train_idx"].min() == 1
    assert len(config["train_idx"]) + len(config["query_idx"]) + len(config["gallery_idx"]) == 16


def test_msmt17_lists_point_at_written_images(tmp_path):
    folder = make_msmt17(tmp_path, version=2, **SMALL)
    with open(os.path.join(folder, "list_query.txt")) as handle:
        lines = handle.read().splitlines()
    # Test identities 0 and 1 (numbered apart from train), first image of cameras 01 and 02.
    assert lines == [
        "0000/0000_000_01_0113morning_0000_0.jpg 0",
        "0000/0000_002_02_0113morning_0000_0.jpg 0",
        "0001/0001_000_01_0113morning_0000_0.jpg 1",
        "0001/0001_002_02_0113morning_0000_0.jpg 1",
    ]
    written = sorted(os.path.relpath(os.path.join(d, n), os.path.join(folder, "mask_test_v2"))
                     for d, _, names in os.walk(os.path.join(folder, "mask_test_v2")) for n in names)
    with open(os.path.join(folder, "list_gallery.txt")) as handle:
        gallery = [line.split()[0] for line in handle.read().splitlines()]
    assert written == sorted([line.split()[0] for line in lines] + gallery) and len(written) == 8


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_cams=1), "num_cams must be >= 2"),
        (dict(images_per_id_cam=1), "images_per_id_cam must be >= 2"),
        (dict(num_ids=1), "num_ids must be >= 2"),
    ],
)
def test_bad_arguments(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        make_market1501(tmp_path, **{**SMALL, **options})


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    argv = ["--root", str(tmp_path), "--dataset", "cuhk03", "--num_ids", "4", "--num_cams", "2",
            "--images_per_id_cam", "2", "--height", "32", "--width", "16"]
    folder = make_synthetic_cli(argv)
    assert folder == str(tmp_path / "cuhk03")
    assert "query   |     2 |        4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already exists and is not empty"):
        make_synthetic_cli(argv)
    with pytest.raises(SystemExit, match="even num_cams"):
        make_synthetic_cli(
            ["--root", str(tmp_path / "x"), "--dataset", "cuhk03", "--num_cams", "3"]
        )
