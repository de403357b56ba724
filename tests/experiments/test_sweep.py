"""tools/sweep.py and experiments/sweep_grid.py: grid parsing, checks before writing, a tiny sweep's table."""
import json
import os
import pathlib

import pytest

from data.synthetic import make_market1501
from engine.attack.results import read_results
from experiments.points import Base, folder_name, parse_value
from experiments.sweep_grid import grid_points, parse_grid, run_sweep
from tools import sweep as sweep_cli
from utils.errors import ConfigError

TINY_OPTS = ("MODEL.NAME", "mobilenet_v2", "INPUT.IMG_SIZE", [32, 16], "MODEL.DEVICE", "cpu",
             "DATALOADER.NUM_WORKERS", 0, "PIXELFADE.BATCH_SIZE", 8, "PIXELFADE.MAX_ITER", 3,
             "PIXELFADE.SAVE_IMAGE_NPY", True, "PIXELFADE.NUM_GRIDS", 0, "ATTACK.GENERATOR", "resnet_6blocks",
             "ATTACK.NGF", 4, "ATTACK.TOTAL_EPOCHS", 1, "ATTACK.EVAL_EPOCHS", [], "ATTACK.NUM_GRIDS", 0)


def read_text(path):
    return pathlib.Path(path).read_text()


def load_json(path):
    return json.loads(read_text(path))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data")
    make_market1501(str(root), num_ids=6, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=0)
    return str(root)


def test_grid_values_take_the_type_of_their_key():
    grid = parse_grid(["PIXELFADE.EPSILON=1,0.03", "PIXELFADE.REPLACEMENT=none,one_shot", "INPUT.IMG_SIZE=[32,16]"])
    assert grid == {"PIXELFADE.EPSILON": [1.0, 0.03], "PIXELFADE.REPLACEMENT": ["none", "one_shot"],
                    "INPUT.IMG_SIZE": [[32, 16]]}
    assert isinstance(grid["PIXELFADE.EPSILON"][0], float)
    points = grid_points(grid)
    assert [p.name for p in points] == ["epsilon-1.0_replacement-none_img_size-_32_16_",
                                        "epsilon-1.0_replacement-one_shot_img_size-_32_16_",
                                        "epsilon-0.03_replacement-none_img_size-_32_16_",
                                        "epsilon-0.03_replacement-one_shot_img_size-_32_16_"]
    assert points[2].values == {"PIXELFADE.EPSILON": 0.03, "PIXELFADE.REPLACEMENT": "none", "INPUT.IMG_SIZE": [32, 16]}
    assert folder_name({"PIXELFADE.MODE": "per image/x"}) == "mode-per_image_x"


@pytest.mark.parametrize("item, message", [
    ("PIXELFADE.EPSILONN=0.1", "unknown config key 'PIXELFADE.EPSILONN'"),
    ("PIXELFADE=0.1", "'PIXELFADE' is a config section"),
    ("PIXELFADE.MAX_ITER=10,ten", "PIXELFADE.MAX_ITER: expected a int like 100, got 'ten'"),
    ("PIXELFADE.EPSILON", "expected KEY=V1,V2"),
    ("OUTPUT_DIR=a,b", "OUTPUT_DIR is set per point"),
    ("PIXELFADE.BETA=0.1,0.1", "a value is repeated"),
])
def test_bad_grid_items_name_the_item(item, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_grid([item])
    with pytest.raises(ConfigError, match="unknown config key 'NOPE.KEY'"):
        parse_value("NOPE.KEY", "1")


@pytest.mark.parametrize("grid, message", [
    ("PIXELFADE.EPSILONN=0.1", "unknown config key 'PIXELFADE.EPSILONN'"),
    ("PIXELFADE.REPLACEMENT=none,sometimes", "PIXELFADE.REPLACEMENT"),
    ("PIXELFADE.MAX_ITER=10,-1", "PIXELFADE.MAX_ITER"),
])
def test_bad_sweep_fails_in_one_line_before_writing(tiny_data, tmp_path, capsys, grid, message):
    output = tmp_path / "sweep"
    status = sweep_cli.main(["--output", str(output), "--grid", grid, "--random_init", "--root", tiny_data,
                             "--no_progress", "--attackers", "reference", *map(str, TINY_OPTS)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("sweep: error: ") and err.count("\n") == 1 and message in err
    assert not output.exists()


def test_sweep_table_equals_its_run_folders_and_resumes(tiny_data, tmp_path):
    output = str(tmp_path / "sweep")
    base = Base("", (*TINY_OPTS, "DATASETS.ROOT_DIR", tiny_data), random_init=True, attackers=("reference",))
    grid = parse_grid(["PIXELFADE.EPSILON=0.03,100.0"])
    rows = run_sweep(base, grid, output)
    table = load_json(os.path.join(output, "sweep.json"))
    assert [row["values"] for row in table["rows"]] == [{"PIXELFADE.EPSILON": 0.03}, {"PIXELFADE.EPSILON": 100.0}]
    for row in table["rows"]:
        run = os.path.join(output, folder_name(row["values"]))
        results = load_json(os.path.join(run, "results.json"))
        attack = read_results(run)
        assert row["reid"]["encry2clean"]["mAP"] == results["reid"]["encry2clean"]["mAP"]
        assert row["reid"]["clean2clean"]["mAP"] == results["reid"]["clean2clean"]["mAP"]
        privacy = attack.get("privacy")
        recovered = (privacy["rows"]["reference"]["psnr_pixel"] if privacy else
                     attack["reference"]["evaluations"]["0"]["pixel_space"]["recovered"]["psnr"])
        assert row["images"]["reference"]["psnr"] == recovered
    markdown = read_text(os.path.join(output, "sweep.md"))
    first = table["rows"][0]
    assert f"| EPSILON 0.03 | 0.03 | {100 * first['reid']['clean2clean']['mAP']:.1f} |" in markdown
    for name in ("sweep_epsilon.png", "sweep_tradeoff.png"):
        with open(os.path.join(output, name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    records = os.path.join(output, "epsilon-0.03", "records")
    stamps = {name: os.path.getmtime(os.path.join(records, name)) for name in os.listdir(records)}
    again = run_sweep(base, grid, output)
    assert [row["reid"] for row in again] == [row["reid"] for row in rows]
    assert stamps == {name: os.path.getmtime(os.path.join(records, name)) for name in os.listdir(records)}
