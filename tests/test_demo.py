"""The demo's pipeline at its small scale: the paper's two claims hold on generated data."""
import json
import os

import pytest
from PIL import Image

import demo as demo_cli
from tools.demo import FIGURE_NAME, METHODS, REPORT_NAME, RESULTS_NAME, SMALL_SCALE, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("demo"))
    return output, run_demo(output, SMALL_SCALE, device="cpu", show_progress=False)


def pixel_psnr_of_recovery(summary, method):
    evaluations = summary["attack"][method]["reference"]["evaluations"]
    return evaluations[max(evaluations, key=int)]["pixel_space"]["recovered"]["psnr"]


def test_protected_queries_retrieve_original_gallery_almost_as_well_as_originals(demo):
    _, summary = demo
    reid = summary["reid"]["pixelfade"]["reid"]
    assert reid["clean2clean"]["mAP"] > 0.4
    assert reid["encry2clean"]["mAP"] >= reid["clean2clean"]["mAP"] - 0.15
    assert reid["encry2clean"]["mAP"] > summary["reid"]["blur"]["reid"]["encry2clean"]["mAP"]


def test_the_attacker_recovers_far_less_from_pixelfade_than_from_blur(demo):
    _, summary = demo
    pixelfade, blur = pixel_psnr_of_recovery(summary, "pixelfade"), pixel_psnr_of_recovery(summary, "blur")
    assert pixelfade <= blur - 3.0
    protected = summary["attack"]["pixelfade"]["reference"]["evaluations"]
    assert protected[max(protected, key=int)]["pixel_space"]["protected"]["ssim"] < 0.1


def test_report_figure_and_numbers_are_written(demo):
    output, summary = demo
    report = open(os.path.join(output, REPORT_NAME)).read()
    assert "UNTRAINED" in report and "| encry2clean |" in report and "| pixelfade | recovered |" in report
    assert summary["figure"] == os.path.join(output, FIGURE_NAME)
    with Image.open(summary["figure"]) as figure:
        rows = 1 + 2 * len(METHODS)
        assert figure.height == 2 * (rows * (SMALL_SCALE.height + 2) + 2)
    saved = json.load(open(os.path.join(output, RESULTS_NAME)))
    assert set(saved["reid"]) == set(METHODS) and set(saved["attack"]) == set(METHODS)


def test_root_demo_py_is_the_cli_of_tools_demo(capsys):
    """``bash run.sh demo`` runs ``python demo.py --output ... --device ...``."""
    assert demo_cli.run_demo is run_demo and demo_cli.SMALL_SCALE is SMALL_SCALE
    with pytest.raises(SystemExit) as exit_info:
        demo_cli.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--output" in help_text and "--device" in help_text
