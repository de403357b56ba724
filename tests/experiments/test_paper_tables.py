"""experiments/table_runs.py on a micro scale: each table runs end to end and its numbers hold."""
import dataclasses
import json
import os

import pytest

from configs import load_config
from data.synthetic import make_market1501
from engine.attack.results import read_results
from experiments.points import Base
from experiments.table_runs import TableRun, TableSetting, run_tables, small_setting, untrained_checkpoint
from experiments.tables import REID_MODES, markdown_table, run_row
from tools import paper_tables as paper_tables_cli
from utils.errors import ConfigError

MICRO_OPTS = ("MODEL.DEVICE", "cpu", "INPUT.IMG_SIZE", [32, 16], "DATALOADER.NUM_WORKERS", 0,
              "PIXELFADE.BATCH_SIZE", 8, "PIXELFADE.MAX_ITER", 6, "PIXELFADE.SAVE_IMAGE_NPY", True,
              "PIXELFADE.NUM_GRIDS", 0, "PIXELFADE.BLUR_SIGMA", 2.0, "PIXELFADE.MOSAIC_BLOCK", 4,
              "ATTACK.GENERATOR", "resnet_6blocks", "ATTACK.NGF", 4, "ATTACK.TOTAL_EPOCHS", 1,
              "ATTACK.EVAL_EPOCHS", [], "ATTACK.NUM_GRIDS", 0)


def load_json(path):
    with open(path) as handle:
        return json.load(handle)


def read_text(path):
    with open(path) as handle:
        return handle.read()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """Synthetic data (6 identities, 32x16) and two untrained agw models saved as checkpoint files."""
    work = tmp_path_factory.mktemp("tables")
    root = str(work / "data")
    make_market1501(root, num_ids=6, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=0)
    cfg = load_config("", ["INPUT.IMG_SIZE", "[32, 16]"])
    models = {name: untrained_checkpoint(name, str(work / f"{name}.pth"), cfg) for name in ("mobilenet_v2", "osnet_x1_0")}
    return root, models


def micro_setting(micro, attackers=("reference",), **kwargs):
    root, models = micro
    opts = (*MICRO_OPTS, "MODEL.NAME", "mobilenet_v2", "TEST.WEIGHT", models["mobilenet_v2"],
            "DATASETS.ROOT_DIR", root)
    backbones = tuple((f"{name} (untrained)", name, path) for name, path in models.items())
    values = {"param_grid": {"PIXELFADE.MAX_ITER": [3, 6]}, "avih_steps": 3, "key_model_epochs": 1,
              "key_model_ngf": 4}
    values.update(kwargs)
    return TableSetting(Base("", opts, False, attackers), "micro synthetic set, untrained models", backbones, **values)


def rows_of(output, table):
    with open(os.path.join(output, f"{table}.json")) as handle:
        return {row["label"]: row for row in json.load(handle)["rows"]}


def assert_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def assert_row_is_its_folder(row):
    results = load_json(os.path.join(row["run"], "results.json"))
    for mode in ("clean2clean", "encry2clean", "encry2encry", "clean2encry"):
        for metric in ("rank1", "mAP"):
            assert row["reid"][mode][metric] == results["reid"][mode][metric]
    privacy = read_results(row["run"]).get("privacy")
    if privacy:
        assert row["images"]["protected"]["psnr"] == privacy["rows"]["protected"]["psnr_pixel"]
        assert row["images"]["reference"]["leakage_rank1"] == privacy["rows"]["reference"]["leakage"][
            "authorization"]["rank1"]


def test_table_ablation_constraint_only_keeps_retrieval_but_leaves_the_person_visible(micro, tmp_path):
    output = str(tmp_path / "tables")
    run_tables(micro_setting(micro), output, ["table_ablation"])
    rows = rows_of(output, "table_ablation")
    assert list(rows) == ["PixelFade (the paper)", "constraint only (no replacement)", "replacement in one shot",
                          "no momentum", "per-image constraint"]
    paper, constraint_only = rows["PixelFade (the paper)"], rows["constraint only (no replacement)"]
    assert constraint_only["images"]["protected"]["psnr"] > paper["images"]["protected"]["psnr"] + 10
    clean = constraint_only["reid"]["clean2clean"]["mAP"]
    assert abs(constraint_only["reid"]["encry2clean"]["mAP"] - clean) < 0.05
    for row in rows.values():
        assert_row_is_its_folder(row)
    assert rows["per-image constraint"]["mode"] == "per_image"
    markdown = read_text(os.path.join(output, "table_ablation.md"))
    assert f"| constraint only (no replacement) | {100 * clean:.1f} |" in markdown
    assert_png(os.path.join(output, "table_ablation_tradeoff.png"))


def test_table_methods_runs_every_method_and_reports_its_cost(micro, tmp_path):
    output = str(tmp_path / "tables")
    run_tables(micro_setting(micro), output, ["table_methods"])
    rows = rows_of(output, "table_methods")
    methods = [row["method"] for row in rows.values()]
    assert methods == ["pixelfade", "pixelfade", "blur", "mosaic", "noise", "mosaic24_topleft", "blur12_pil",
                       "noise0.5_uint8", "avih"]
    assert os.path.isfile(os.path.join(output, "key_model", "Generator_weight_strong.pth"))
    for row in rows.values():
        assert_row_is_its_folder(row)
    cost = {row["method"]: row["cost"] for row in rows.values() if row["cost"]}
    if cost:
        assert cost["blur"]["forward"] == 0 and cost["pixelfade"]["forward"] == 6 + 2
        assert cost["avih"]["forward"] == 3 + 2
        assert "(5F/3B + key model 3F/3B) |" in read_text(os.path.join(output, "table_methods.md"))
    assert_png(os.path.join(output, "table_methods_tradeoff.png"))
    report = load_json(os.path.join(output, "table_methods_privacy", "privacy_report.json"))
    assert [entry["run"] for entry in report] == [row["run"] for row in rows.values()]


def test_table_params_shares_the_base_run_and_plots_each_key(micro, tmp_path):
    output = str(tmp_path / "tables")
    run_tables(micro_setting(micro, attackers=()), output, ["table_params"])
    rows = rows_of(output, "table_params")
    assert list(rows) == ["MAX_ITER 3", "MAX_ITER 6 (base)"]
    assert rows["MAX_ITER 6 (base)"]["run"] == os.path.join(output, "runs", "pixelfade")
    for row in rows.values():
        assert_row_is_its_folder(row)
    assert rows["MAX_ITER 3"]["values"] == {"PIXELFADE.MAX_ITER": 3}
    assert_png(os.path.join(output, "table_params_max_iter.png"))
    assert_png(os.path.join(output, "table_params_tradeoff.png"))


def test_table_backbones_scores_each_protection_with_every_model(micro, tmp_path):
    output = str(tmp_path / "tables")
    run_tables(micro_setting(micro, attackers=()), output, ["table_backbones"])
    rows = rows_of(output, "table_backbones")
    assert list(rows) == ["mobilenet_v2 (untrained)", "osnet_x1_0 (untrained)"]
    mobilenet = rows["mobilenet_v2 (untrained)"]
    results = load_json(os.path.join(mobilenet["run"], "results.json"))
    assert list(mobilenet["eval_models"]) == ["agw:osnet_x1_0"]
    other = results["eval_models"]["agw:osnet_x1_0"]["encry2clean"]["mAP"]
    assert mobilenet["eval_models"]["agw:osnet_x1_0"]["encry2clean"]["mAP"] == other
    markdown = read_text(os.path.join(output, "table_backbones.md"))
    assert f"| mobilenet_v2 (untrained) | {100 * mobilenet['reid']['encry2clean']['mAP']:.1f} | {100 * other:.1f} |" \
        in markdown


def test_a_bad_table_setting_fails_before_anything_is_written(micro, tmp_path, capsys):
    output = tmp_path / "tables"
    setting = micro_setting(micro, param_grid={"PIXELFADE.EPSILON": [0.03, -1.0]})
    with pytest.raises(ConfigError, match="PIXELFADE.EPSILON"):
        run_tables(setting, str(output), ["table_ablation", "table_params"])
    assert not output.exists()
    with pytest.raises(ConfigError, match="unknown table 'table_x'"):
        TableRun(setting, str(output)).points("table_x")
    status = paper_tables_cli.main(["table_methods", "--output", str(output), "--ckpt_dir", str(tmp_path / "none"),
                                    "--no_progress"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "market1501_resnet50_nl_model_120.pth" in err
    assert not output.exists()


def test_small_setting_trains_the_demo_model_once_and_labels_the_untrained_one(tmp_path):
    from experiments.demo import SMALL_SCALE

    scale = dataclasses.replace(SMALL_SCALE, num_ids=8, num_cams=2, images_per_id_cam=2, height=32, width=16,
                                train_epochs=1, train_batch=16, max_iter=3)
    setting = small_setting(str(tmp_path / "small"), "cpu", scale, attackers=("reference",))
    (trained_label, _, trained), (untrained_label, name, untrained) = setting.backbones
    assert trained_label == "mobilenet_v2 (trained)" and trained.endswith("mobilenet_v2_model_1.pth")
    assert (untrained_label, name) == ("resnet50 (untrained)", "resnet50") and os.path.isfile(untrained)
    opts = dict(zip(setting.base.opts[::2], setting.base.opts[1::2]))
    assert opts["TEST.WEIGHT"] == trained and opts["ATTACK.TOTAL_EPOCHS"] == 3 and opts["PIXELFADE.EPSILON"] == 0.03
    assert "PIXELFADE.MAX_ITER" not in setting.param_grid and setting.param_grid["PIXELFADE.FADE_NUM_ITER"] == [1, 5]
    stamp = os.path.getmtime(trained)
    assert small_setting(str(tmp_path / "small"), "cpu", scale).backbones[0][2] == trained
    assert os.path.getmtime(trained) == stamp


def test_a_row_holds_every_number_of_its_run_folder_and_the_markdown_shows_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    reid = {mode: {"rank1": 0.1 + k / 10, "mAP": 0.05 + k / 10, "mINP": 0.01} for k, mode in enumerate(REID_MODES)}
    results = {"run": {"method": "pixelfade", "mode": "reference", "checkpoint": "m.pth sha256=0"}, "reid": reid,
               "eval_models": {"torchreid:osnet": {mode: {"rank1": 0.6 + k / 100, "mAP": 0.4 + k / 100}
                                                   for k, mode in enumerate(REID_MODES)}},
               "protection": {"test": {"feature_mse": 0.0123, "constraint_held": 0.375}},
               "cost": {"ms_per_image": 12.5, "forward": 22, "backward": 20}}
    (run / "results.json").write_text(json.dumps(results))
    row = run_row(str(run), "base")
    assert row["reid"] == {mode: {"rank1": reid[mode]["rank1"], "mAP": reid[mode]["mAP"]} for mode in REID_MODES}
    assert row["eval_models"] == results["eval_models"]
    assert (row["feature_mse"], row["constraint_held"], row["cost"]) == (0.0123, 0.375, results["cost"])
    assert (row["method"], row["mode"], row["checkpoint"]) == ("pixelfade", "reference", "m.pth sha256=0")
    head, _, cells = (line.strip("| ").split(" | ") for line in markdown_table([row]).splitlines())
    shown = dict(zip(head, cells))
    assert shown["clean2clean mAP"] == "5.0" and shown["authorised mAP (encry2clean)"] == "15.0"
    assert shown["encry2encry mAP"] == "25.0" and shown["feature MSE"] == "0.0123"
    assert shown["constraint held (% of steps)"] == "37.5" and shown["ms per image (passes)"] == "12.5 (22F/20B)"
