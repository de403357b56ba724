"""``bash run.sh sysu_mm01|regdb``: where to get a missing data set or checkpoint, and a tiny run end to end.

run.sh is pointed at a stand-in virtual environment (its python runs this one's; the requirements stamp
matches) so that it never installs anything.
"""
import json
import os
import subprocess

import pytest
from helpers import REPO, fake_venv

SYSU_CKPT = "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"
REGDB_CKPT = "regdb_agw_p4_n8_lr_0.1_seed_0_trial_{trial}_best.t"


@pytest.fixture
def venv(tmp_path):
    return str(fake_venv(tmp_path))


def run_sh(target, venv, data, ckpt, output, **variables):
    env = {**os.environ, "VENV": venv, "DATA_ROOT": str(data), "CKPT_DIR": str(ckpt), "OUTPUT_ROOT": str(output),
           "DEVICE": "cpu", "OMP_NUM_THREADS": "1", **variables}
    for name in ("TRIALS", "SYSU_CKPT", "REGDB_CKPT", "EXTRA_ARGS", "ATTACK_ARGS"):
        if name not in variables:
            env.pop(name, None)
    return subprocess.run(["bash", os.path.join(REPO, "run.sh"), target], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def empty(tmp_path):
    folders = {name: tmp_path / name for name in ("data", "ckpt", "out")}
    for name in ("data", "ckpt"):
        folders[name].mkdir()
    return folders


def test_sysu_without_data_and_checkpoint_says_where_to_get_and_put_both(venv, empty):
    result = run_sh("sysu_mm01", venv, empty["data"], empty["ckpt"], empty["out"])
    assert result.returncode == 1 and result.stdout == ""
    err = result.stderr
    assert f"run.sh: missing checkpoint {empty['ckpt']}/{SYSU_CKPT}\n" in err
    assert "linked (Google Drive) in the README of the\n  mangye16/Cross-Modal-Re-ID-baseline" in err
    assert "python tools/train_cross_modality.py\n  --dataset sysu_mm01" in err
    assert f"run.sh: SYSU-MM01 not found: expected {empty['data']}/SYSU-MM01 with cam1..cam6 and exp/" in err
    assert "released on request by its authors at Sun Yat-sen University" in err
    assert not empty["out"].exists()


def test_sysu_checkpoint_present_data_missing_names_only_the_data(venv, empty):
    (empty["ckpt"] / SYSU_CKPT).write_bytes(b"")
    result = run_sh("sysu_mm01", venv, empty["data"], empty["ckpt"], empty["out"])
    assert result.returncode == 1
    assert "missing checkpoint" not in result.stderr and "SYSU-MM01 not found" in result.stderr


def test_regdb_names_the_trials_whose_checkpoint_is_missing(venv, empty):
    (empty["ckpt"] / REGDB_CKPT.format(trial=1)).write_bytes(b"")
    (empty["data"] / "RegDB").mkdir()
    result = run_sh("regdb", venv, empty["data"], empty["ckpt"], empty["out"])
    assert result.returncode == 1
    expected = REGDB_CKPT.replace("{trial}", "<t>")
    assert result.stderr.startswith(f"run.sh: missing checkpoint {empty['ckpt']}/{expected} "
                                    "for RegDB trial(s) 2 3 4 5 6 7 8 9 10\n")
    assert "links no RegDB model" in result.stderr and "RegDB not found" not in result.stderr
    one_file = run_sh("regdb", venv, empty["data"], empty["ckpt"], empty["out"], REGDB_CKPT=str(empty["ckpt"] / "x.t"))
    assert one_file.stderr.startswith(f"run.sh: missing checkpoint {empty['ckpt']}/x.t\n")
    no_data = run_sh("regdb", venv, empty["data"] / "none", empty["ckpt"], empty["out"], TRIALS="1")
    assert no_data.returncode == 1 and "missing checkpoint" not in no_data.stderr
    assert "RegDB not found: expected" in no_data.stderr and "Dongguk University" in no_data.stderr


def test_bad_trials_and_unknown_target(venv, empty):
    result = run_sh("regdb", venv, empty["data"], empty["ckpt"], empty["out"], TRIALS="1 x")
    assert result.returncode == 2
    assert result.stderr == "run.sh: TRIALS must be trial numbers separated by spaces, e.g. TRIALS=\"1 2\"; got '1 x'\n"
    usage = run_sh("no_such_target", venv, empty["data"], empty["ckpt"], empty["out"])
    assert usage.returncode == 2
    targets = usage.stderr.split("[", 1)[1].split("]", 1)[0].split("|")
    assert {"sysu_mm01", "regdb", "demo_vi"} <= set(targets)


def test_demo_vi_target_runs_the_demo_module(tmp_path, empty):
    venv = fake_venv(tmp_path)
    (venv / "bin" / "python").write_text('#!/bin/sh\necho "python $*"\n')  # records the command only
    result = run_sh("demo_vi", str(venv), empty["data"], empty["ckpt"], empty["out"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"python -m experiments.demo_vi --output {empty['out']}/demo_vi --device cpu\n"


def save_untrained(path, seed):
    """An untrained resnet18_nl embed_net in the reference train.py's file layout."""
    import numpy as np
    import torch

    from modeling.agw_vi import EmbedNet

    torch.manual_seed(seed)
    torch.save({"net": EmbedNet(4, "resnet18_nl").state_dict(), "cmc": np.zeros(20, dtype=np.float32),
                "mAP": np.float64(0), "mINP": np.float64(0), "epoch": 1}, path)


TINY_PROTECT = ("--max_iter 2 --warmup_iter 1 --fade_num_iter 2 --batch_size 8 --num_workers 0 --no_progress "
                "MODEL.NAME resnet18_nl PIXELFADE.NUM_GRIDS 0 INPUT.IMG_SIZE [32,16]")
TINY_ATTACK = "--total_epochs 1 --num_workers 0 --no_progress ATTACK.NGF 4 ATTACK.NUM_GRIDS 0"


@pytest.mark.slow
@pytest.mark.parametrize("dataset, trials, splits", [
    ("sysu_mm01", [0, 1], {"test_visible", "test_infrared"}),  # one checkpoint
    ("regdb", [1, 2], {"test_t1_visible", "test_t2_infrared"}),  # one checkpoint per trial
])
def test_protect_then_attack_on_a_tiny_synthetic_set(venv, tmp_path, dataset, trials, splits):
    from data.synthetic_vi import make_regdb, make_sysu_mm01

    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    ckpt.mkdir()
    if dataset == "sysu_mm01":
        make_sysu_mm01(str(data), num_ids=12, images_per_id_cam=1, height=32, width=16)
        save_untrained(ckpt / SYSU_CKPT, 0)
    else:
        make_regdb(str(data), num_ids=8, images_per_id_cam=2, height=32, width=16, num_trials=3)
        for trial in trials:
            save_untrained(ckpt / REGDB_CKPT.format(trial=trial), trial)
    result = run_sh(dataset, venv, data, ckpt, tmp_path / "out", TRIALS=" ".join(map(str, trials)),
                    EXTRA_ARGS=TINY_PROTECT, ATTACK_ARGS=TINY_ATTACK)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "out" / f"{dataset}_protect"
    with open(run_dir / "results.json") as handle:
        results = json.load(handle)
    primary = results["reid_primary_protocol"]
    assert [entry["trial"] for entry in results["reid_trials"][primary]["clean2clean"]] == trials
    assert splits <= set(results["protection"])
    with open(run_dir / "attack_results.json") as handle:
        attack = json.load(handle)
    assert {"reference", "strong"} <= set(attack)
    # The identity leakage is scored by the model that protected the train pairs (the first trial's).
    if dataset == "regdb":
        assert attack["privacy"]["authorization_model"].startswith(f"trial 1: {REGDB_CKPT.format(trial=1)} sha256=")
