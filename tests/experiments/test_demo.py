"""The demo's pipeline at its small scale: a trained authorization model, the paper's two claims, the report."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

import demo as demo_cli
from experiments.demo import (
    CAPTION_HEIGHT,
    FIGURE_NAME,
    METHODS,
    REPORT_NAME,
    RESULTS_NAME,
    SMALL_SCALE,
    data_root,
    run_demo,
    trained_demo_checkpoint,
)


# The demo at its small scale takes about 30 s: the tests that read it are marked slow.
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("demo"))
    return output, run_demo(output, SMALL_SCALE, device="cpu", show_progress=False)


def report_and_results(output):
    """The demo's Markdown report and its saved results.json."""
    with open(os.path.join(output, REPORT_NAME)) as handle:
        report = handle.read()
    with open(os.path.join(output, RESULTS_NAME)) as handle:
        return report, json.load(handle)


def pixel_psnr_of_recovery(summary, method):
    evaluations = summary["attack"][method]["reference"]["evaluations"]
    return evaluations[max(evaluations, key=int)]["pixel_space"]["recovered"]["psnr"]


@pytest.mark.slow
def test_the_trained_model_retrieves_far_better_than_the_untrained_one(demo):
    _, summary = demo
    trained = summary["reid"]["pixelfade"]["reid"]["clean2clean"]
    references = summary["model"]["references"]
    assert trained["mAP"] >= references["untrained"]["mAP"] + 0.2, (trained, references)
    assert trained["mAP"] > references["imagenet_start"]["mAP"], (trained, references)
    # The protection run scores the trainer's final weights exactly as the trainer's own evaluation did.
    assert trained["mAP"] == pytest.approx(summary["model"]["training"]["final"]["mAP"], abs=1e-6)


@pytest.mark.slow
def test_protected_queries_retrieve_original_gallery_almost_as_well_as_originals(demo):
    _, summary = demo
    reid = summary["reid"]["pixelfade"]["reid"]
    assert reid["encry2clean"]["mAP"] >= reid["clean2clean"]["mAP"] - 0.15
    assert reid["encry2clean"]["mAP"] > summary["reid"]["blur"]["reid"]["encry2clean"]["mAP"]


@pytest.mark.slow
def test_the_attacker_recovers_far_less_from_pixelfade_than_from_blur(demo):
    _, summary = demo
    pixelfade, blur = pixel_psnr_of_recovery(summary, "pixelfade"), pixel_psnr_of_recovery(summary, "blur")
    assert pixelfade <= blur - 3.0
    protected = summary["attack"]["pixelfade"]["reference"]["evaluations"]
    assert protected[max(protected, key=int)]["pixel_space"]["protected"]["ssim"] < 0.1


@pytest.mark.slow
def test_report_shows_trained_and_untrained_rows_matching_the_saved_numbers(demo):
    report, saved = report_and_results(demo[0])
    assert set(saved["reid"]) == set(METHODS) and set(saved["attack"]) == set(METHODS)
    assert "TRAINED by the demo" in report and f"{SMALL_SCALE.train_epochs} epochs" in report
    rows = {"trained (the demo's model)": saved["reid"]["pixelfade"]["clean2clean"],
            "untrained, random weights (MODEL.INIT_SEED 0)": saved["model"]["references"]["untrained"],
            "ImageNet start, not fine-tuned": saved["model"]["references"]["imagenet_start"]}
    for label, scores in rows.items():
        assert f"| {label} | {100 * scores['rank1']:.1f} | {100 * scores['mAP']:.1f} |" in report, label
    encry2clean = saved["reid"]["pixelfade"]["encry2clean"]
    assert f"| encry2clean | {100 * encry2clean['rank1']:.1f} |" in report
    assert "BETA 0.01, BETA_TEMP 0.04, EPSILON 0.03" in report and "| pixelfade | recovered |" in report


@pytest.mark.slow
def test_figure_has_a_caption_band_and_one_row_per_image_kind(demo):
    output, summary = demo
    assert summary["figure"] == os.path.join(output, FIGURE_NAME)
    with Image.open(summary["figure"]) as figure:
        rows = 1 + 2 * len(METHODS)
        assert figure.height == 2 * (rows * (SMALL_SCALE.height + 2) + 2) + CAPTION_HEIGHT
        caption = figure.convert("L").crop((0, 0, figure.width, CAPTION_HEIGHT))
        assert np.asarray(caption).min() < 128  # text drawn in the band


@pytest.mark.slow
def test_a_second_call_reuses_the_trained_checkpoint(demo):
    output, summary = demo
    path = summary["model"]["checkpoint"]
    before = os.stat(path).st_mtime_ns
    assert trained_demo_checkpoint(output, SMALL_SCALE, "cpu") == path
    assert os.stat(path).st_mtime_ns == before


def _cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}, check=False)


@pytest.mark.slow
def test_train_reid_checkpoint_loads_in_protect_image_by_path(demo, tmp_path):
    """Issue 11's "done when": train_reid.py's file goes to protect_image.py as it is (no conversion, no format flag)."""
    output, _ = demo
    model = ["MODEL.NAME", "mobilenet_v2", "INPUT.IMG_SIZE", "[32, 16]", "DATALOADER.NUM_WORKERS", "0"]
    trained = _cli("train_reid.py", "--root", data_root(output), "--output", str(tmp_path / "train"), "--device", "cpu",
                   "--max_epochs", "1", "--no_progress", *model, "SOLVER.IMS_PER_BATCH", "32")
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = tmp_path / "train" / "mobilenet_v2_model_1.pth"
    protected = _cli("protect_image.py", "--reid_ckpt_path", str(checkpoint), "--root", data_root(output),
                     "--output", str(tmp_path / "protect"), "--max_iter", "1", "--batch_size", "48", "--device", "cpu",
                     "--no_progress", *model)
    assert protected.returncode == 0, protected.stderr[-2000:]
    with open(tmp_path / "protect" / "results.json") as handle:
        results = json.load(handle)
    assert results["run"]["checkpoint"].startswith("mobilenet_v2_model_1.pth sha256=")
    assert 0.0 < results["reid"]["clean2clean"]["mAP"] <= 1.0


def test_root_demo_py_is_the_cli_of_experiments_demo(capsys):
    """``bash run.sh demo`` runs ``python demo.py --output ... --device ...``."""
    assert demo_cli.run_demo is run_demo and demo_cli.SMALL_SCALE is SMALL_SCALE
    with pytest.raises(SystemExit) as exit_info:
        demo_cli.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--output" in help_text and "--device" in help_text


@pytest.mark.slow
def test_report_shows_identity_leakage_for_both_methods_with_chance(demo):
    output, summary = demo
    report, saved = report_and_results(output)
    privacy = saved["privacy"]
    for method in METHODS:
        table = privacy[method]
        # The protected queries' leakage by the authorization model is the run's own encry2clean retrieval.
        protected = table["rows"]["protected"]["leakage"]["authorization"]
        encry2clean = summary["reid"][method]["reid"]["encry2clean"]
        assert protected["mAP"] == pytest.approx(encry2clean["mAP"], abs=1e-6)
        for row_name in ("protected", "reference"):
            scores = table["rows"][row_name]["leakage"]["authorization"]
            assert (f"| {method} | {row_name} | {100 * scores['rank1']:.1f} | {100 * scores['mAP']:.1f} |"
                    in report), (method, row_name)
    chance = privacy["pixelfade"]["chance"]
    assert f"| chance | random ranking | {100 * chance['rank1']:.1f} | {100 * chance['mAP']:.1f} |" in report


@pytest.mark.slow
def test_attack_tables_are_printed_once_in_the_report(demo):
    """The attack runs of the demo name their result files; the tables themselves appear once, in the report."""
    output, summary = demo
    for method in METHODS:
        with open(os.path.join(output, method, "log_recovery.txt")) as handle:
            log = handle.read()
        assert "# Recovery attack results" not in log and "| attacker | epoch |" not in log
        assert f"results: {os.path.join(output, method, 'attack_results.json')} and " in log
    assert summary["report"].count("## Recovery attack") == 1
    assert summary["report"].count("| pixelfade | recovered |") == 1
    assert "reference attacker's last epoch, trained on every train pair" in summary["report"]
