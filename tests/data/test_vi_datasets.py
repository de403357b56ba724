"""SYSU-MM01 and RegDB readers on hand-made trees in the official layouts, and the synthetic generators."""
import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, build_dataset
from data.datasets.visible_infrared import INFRARED, VISIBLE, VIImageRecord
from data.synthetic_vi import NEAR_INFRARED_WEIGHTS, infrared_image, make_regdb, make_sysu_mm01
from tools.make_synthetic_data import main as make_synthetic_cli
from utils.errors import ConfigError, PixelFadeError

# cam -> id -> number of files; 0007 has no cam2 folder and one file in cam4, 0003 none in cam6.
SYSU_FILES = {
    1: {"0001": 2, "0002": 1, "0003": 2, "0007": 3, "0010": 2},
    2: {"0001": 1, "0003": 2, "0010": 4},
    3: {"0001": 2, "0003": 1, "0007": 2, "0010": 1},
    4: {"0002": 2, "0003": 3, "0007": 1, "0010": 2},
    5: {"0001": 1, "0007": 2, "0010": 3},
    6: {"0001": 1, "0002": 2, "0007": 1, "0010": 2},
}
SPLITS = {"train": "1,2", "val": "3", "test": "10,7"}


def write_sysu(root, files=SYSU_FILES, splits=SPLITS):
    folder = os.path.join(root, "SYSU-MM01")
    for camera in range(1, 7):
        os.makedirs(os.path.join(folder, f"cam{camera}"), exist_ok=True)
        for identity, count in files.get(camera, {}).items():
            os.makedirs(os.path.join(folder, f"cam{camera}", identity))
            for shot in range(count):
                with open(os.path.join(folder, f"cam{camera}", identity, f"{shot + 1:04d}.jpg"), "wb") as handle:
                    handle.write(b"jpeg")
    os.makedirs(os.path.join(folder, "exp"), exist_ok=True)
    for split, text in splits.items():
        with open(os.path.join(folder, "exp", f"{split}_id.txt"), "w") as handle:
            handle.write(text + "\n")
    return folder


def reference_gallery(folder, test_ids, cameras, trial):
    """The reference's process_gallery_sysu, written out again: global random, os.listdir, sorted."""
    random.seed(trial)
    chosen = []
    for identity in sorted(f"{x:04d}" for x in test_ids):
        for camera in cameras:
            img_dir = os.path.join(folder, camera, identity)
            if os.path.isdir(img_dir):
                chosen.append(random.choice(sorted(img_dir + "/" + name for name in os.listdir(img_dir))))
    return chosen


@pytest.fixture
def sysu(tmp_path):
    return write_sysu(str(tmp_path))


def relative(records, folder):
    return [os.path.relpath(r.path, folder) for r in records]


def test_sysu_train_query_and_modalities(sysu):
    dataset = build_dataset("sysu_mm01", os.path.dirname(sysu))
    assert dataset.root == sysu and dataset.layout == "SYSU-MM01/" and dataset.metric == "sysu"
    # train + val ids (1, 2, 3), visible cameras first, then infrared; labels by sorted id.
    assert relative(dataset.train, sysu) == [
        "cam1/0001/0001.jpg", "cam1/0001/0002.jpg", "cam2/0001/0001.jpg", "cam5/0001/0001.jpg",
        "cam1/0002/0001.jpg", "cam4/0002/0001.jpg", "cam4/0002/0002.jpg",
        "cam1/0003/0001.jpg", "cam1/0003/0002.jpg", "cam2/0003/0001.jpg", "cam2/0003/0002.jpg",
        "cam4/0003/0001.jpg", "cam4/0003/0002.jpg", "cam4/0003/0003.jpg",
        "cam3/0001/0001.jpg", "cam3/0001/0002.jpg", "cam6/0001/0001.jpg",
        "cam6/0002/0001.jpg", "cam6/0002/0002.jpg", "cam3/0003/0001.jpg",
    ]
    assert [r.pid for r in dataset.train[:4]] == [0, 0, 0, 0] and dataset.train_original_pids == (1, 2, 3)
    assert all(isinstance(r, VIImageRecord) for r in dataset.train)
    for record in dataset.train + dataset.query + dataset.gallery:
        camera = int(os.path.relpath(record.path, sysu)[3])
        assert record.camid == camera - 1
        assert record.modality == (INFRARED if camera in (3, 6) else VISIBLE)
    # query: every infrared image of the test ids (0007, 0010), id-major then cam3, cam6.
    expected_query = ["cam3/0007/0001.jpg", "cam3/0007/0002.jpg", "cam6/0007/0001.jpg",
                      "cam3/0010/0001.jpg", "cam6/0010/0001.jpg", "cam6/0010/0002.jpg"]
    for protocol in ("all_search", "indoor_search"):
        assert [relative(t.query, sysu) for t in dataset.protocols[protocol]] == [expected_query] * 10
    assert [r.pid for r in dataset.protocols["all_search"][0].query] == [7, 7, 7, 10, 10, 10]


def test_sysu_galleries_are_the_reference_draws(sysu):
    dataset = build_dataset("sysu_mm01", sysu)
    assert dataset.trials == tuple(range(10))
    cameras = {"all_search": ["cam1", "cam2", "cam4", "cam5"], "indoor_search": ["cam1", "cam2"]}
    draws = set()
    for protocol, trials in dataset.protocols.items():
        for trial in trials:
            expected = reference_gallery(sysu, [10, 7], cameras[protocol], trial.trial)
            assert [r.path for r in trial.gallery] == [os.path.normpath(p) for p in expected]
            draws.add(tuple(r.path for r in trial.gallery))
    # single-shot: one image per existing (id, camera) folder; 0007 has no cam2 folder.
    assert len(dataset.protocols["all_search"][0].gallery) == 4 + 3
    assert len(dataset.protocols["indoor_search"][0].gallery) == 2 + 1
    assert len(draws) > 2  # the seeds do give different galleries
    assert {r.path for r in dataset.test_images()} == (
        {r.path for t in dataset.protocols["all_search"] for r in t.query + t.gallery}
        | {r.path for t in dataset.protocols["indoor_search"] for r in t.gallery})


def test_sysu_trials_option(sysu):
    dataset = build_dataset("sysu_mm01", sysu, trials=[7, 2])
    assert dataset.trials == (7, 2)
    expected = reference_gallery(sysu, [7, 10], ["cam1", "cam2"], 7)
    assert [r.path for r in dataset.protocols["indoor_search"][0].gallery] == [os.path.normpath(p) for p in expected]
    with pytest.raises(ConfigError, match=r"DATASETS.TRIALS: sysu_mm01 has trials 0..9, got 10"):
        build_dataset("sysu_mm01", sysu, trials=[10])


@pytest.mark.parametrize("split, text", [
    ("test", "10,7\n3"), ("val", "3;4"), ("train", ""), ("test", "10, x"),
])
def test_sysu_bad_split_file(tmp_path, split, text):
    folder = write_sysu(str(tmp_path), splits={**SPLITS, split: text})
    with pytest.raises(DatasetError) as err:
        build_dataset("sysu_mm01", folder)
    message = str(err.value)
    assert message.startswith(os.path.join(folder, "exp", f"{split}_id.txt") + ": expected one line of comma-separated")
    assert "\n" not in message and isinstance(err.value, PixelFadeError)


def test_sysu_bad_identity_folder_and_missing_camera(tmp_path):
    folder = write_sysu(str(tmp_path / "a"))
    os.makedirs(os.path.join(folder, "cam5", "12"))
    with pytest.raises(DatasetError, match=r"cam5/12: expected only identity folders named with 4 digits"):
        build_dataset("sysu_mm01", folder)
    folder = write_sysu(str(tmp_path / "b"))
    os.makedirs(os.path.join(folder, "cam2", "0004"))
    with pytest.raises(DatasetError, match=r"cam2/0004: expected one or more image files"):
        build_dataset("sysu_mm01", folder)
    folder = write_sysu(str(tmp_path / "c"))
    shutil.rmtree(os.path.join(folder, "cam4"))
    with pytest.raises(DatasetError, match=r"missing cam4"):
        build_dataset("sysu_mm01", folder)


def write_regdb(root, trials=(1, 2), lines=None):
    folder = os.path.join(root, "RegDB")
    for sensor in ("Visible", "Thermal"):
        for identity in range(1, 5):
            os.makedirs(os.path.join(folder, sensor, str(identity)))
            for shot in range(2):
                with open(os.path.join(folder, sensor, str(identity), f"{sensor[0]}{shot}.bmp"), "wb") as handle:
                    handle.write(b"bmp")
    os.makedirs(os.path.join(folder, "idx"))
    for trial in trials:
        train, test = ((1, 2), (3, 4)) if trial == 1 else ((3, 4), (1, 2))
        for split, ids in (("train", train), ("test", test)):
            for side, sensor in (("visible", "Visible"), ("thermal", "Thermal")):
                text = "".join(f"{sensor}/{i}/{sensor[0]}{s}.bmp {i + 10}\n" for i in ids for s in range(2))
                with open(os.path.join(folder, "idx", f"{split}_{side}_{trial}.txt"), "w") as handle:
                    handle.write(text if lines is None else lines)
    return folder


def test_regdb_trials_and_protocols(tmp_path):
    folder = write_regdb(str(tmp_path))
    dataset = build_dataset("regdb", str(tmp_path), trials=[1, 2])
    assert dataset.layout == "RegDB/" and dataset.metric == "regdb" and dataset.trials == (1, 2)
    v2t, t2v = dataset.protocols["visible_to_thermal"], dataset.protocols["thermal_to_visible"]
    assert relative(v2t[0].query, folder) == ["Visible/3/V0.bmp", "Visible/3/V1.bmp", "Visible/4/V0.bmp",
                                              "Visible/4/V1.bmp"]
    assert relative(v2t[0].gallery, folder) == ["Thermal/3/T0.bmp", "Thermal/3/T1.bmp", "Thermal/4/T0.bmp",
                                                "Thermal/4/T1.bmp"]
    assert [r.pid for r in v2t[0].query] == [13, 13, 14, 14]
    assert (t2v[1].query, t2v[1].gallery) == (v2t[1].gallery, v2t[1].query)
    assert {(r.modality, r.camid) for r in v2t[0].query} == {(VISIBLE, 0)}
    assert {(r.modality, r.camid) for r in v2t[0].gallery} == {(INFRARED, 1)}
    # train of trial 1 (ids 1, 2 labelled 11, 12) relabelled 0..1, visible then thermal; trial 2 has its own.
    assert relative(dataset.train, folder)[:2] == ["Visible/1/V0.bmp", "Visible/1/V1.bmp"]
    assert [r.pid for r in dataset.train] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert relative(v2t[1].train, folder)[0] == "Visible/3/V0.bmp"
    assert len(dataset.test_images()) == 16
    with pytest.raises(DatasetError, match=r"idx/train_visible_3.txt: idx file not found; expected trials 1..10"):
        build_dataset("regdb", folder)


@pytest.mark.parametrize("line", ["Visible/3/V0.bmp\t13\n", "Visible/3/V0.bmp x\n", "Visible/3/V0.bmp  13\n",
                                  "\n"])
def test_regdb_bad_idx_line(tmp_path, line):
    folder = write_regdb(str(tmp_path), trials=(1,), lines="Visible/3/V1.bmp 13\n" + line)
    with pytest.raises(DatasetError) as err:
        build_dataset("regdb", folder, trials=[1])
    path = os.path.join(folder, "idx", "train_visible_1.txt")
    assert str(err.value).startswith(f"{path} line 2: expected '<path relative to RegDB/> <integer label>'")


def test_regdb_missing_image_and_folder(tmp_path):
    folder = write_regdb(str(tmp_path), trials=(1,), lines="Visible/9/V0.bmp 1\n")
    with pytest.raises(DatasetError, match=r"train_visible_1.txt line 1: image .*Visible/9/V0.bmp not found"):
        build_dataset("regdb", folder, trials=[1])
    os.rename(os.path.join(folder, "Thermal"), os.path.join(folder, "thermal_images"))
    with pytest.raises(DatasetError, match=r"missing Thermal"):
        build_dataset("regdb", folder, trials=[1])


def test_infrared_look_is_not_plain_grey():
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 200
    ir = infrared_image(red, NEAR_INFRARED_WEIGHTS)
    assert (ir[..., 0] == ir[..., 1]).all() and (ir[..., 1] == ir[..., 2]).all()
    expected = int((200 / 255 * 0.60) ** 0.8 * 255 + 0.5)
    assert ir[0, 0, 0] == expected
    grey = np.asarray(Image.fromarray(red).convert("L"))[0, 0]
    assert abs(int(ir[0, 0, 0]) - int(grey)) > 30


def test_synthetic_sysu_and_regdb(tmp_path):
    sysu = make_sysu_mm01(tmp_path, num_ids=6, images_per_id_cam=1, height=32, width=16)
    dataset = build_dataset("sysu_mm01", tmp_path)
    assert dataset.root == sysu and dataset.train_original_pids == (1, 2, 3, 4)
    assert not os.path.isdir(os.path.join(sysu, "cam1", "0002"))  # pid 2 lacks camera 1, pid 5 camera 2
    assert not os.path.isdir(os.path.join(sysu, "cam2", "0005")) and os.path.isdir(os.path.join(sysu, "cam2", "0006"))
    with open(os.path.join(sysu, "exp", "test_id.txt")) as handle:
        assert handle.read() == "5,6\n"
    image = Image.open(dataset.query[0].path)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert image.mode == "RGB" and image.size == (16, 32)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 3  # one intensity channel (JPEG noise aside)
    visible = np.asarray(Image.open(dataset.gallery[0].path).convert("RGB")).astype(int)
    assert np.abs(visible[..., 0] - visible[..., 2]).max() > 20
    make_regdb(tmp_path / "r", num_ids=4, images_per_id_cam=2, height=32, width=16, num_trials=2)
    regdb = build_dataset("regdb", tmp_path / "r", trials=[1, 2])
    assert [len(t.query) for t in regdb.protocols["visible_to_thermal"]] == [4, 4]
    assert sorted({r.pid for r in regdb.train}) == [0, 1]


def test_make_synthetic_data_cli(tmp_path, capsys):
    for name, folder in (("sysu_mm01", "SYSU-MM01"), ("regdb", "RegDB")):
        written = make_synthetic_cli(["--root", str(tmp_path), "--dataset", name, "--num_ids", "6",
                                      "--images_per_id_cam", "1", "--height", "32", "--width", "16"])
        assert written == os.path.join(str(tmp_path), folder)
    output = capsys.readouterr().out
    assert "all_search: trials 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in output
    assert "visible_to_thermal: trials 1, 2, 3, 4, 5, 6, 7, 8, 9, 10" in output
