"""The visible-infrared demo: its report and figure writers on hand-made runs, and the whole demo at a tiny scale."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.img_npy import write_batch
from data.transforms import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
from experiments import demo_vi
from experiments.demo_vi import (
    FIGURE_MARGIN,
    FIGURE_NAME,
    FIGURE_UPSCALE,
    METHODS,
    REPORT_NAME,
    SMALL_SCALE,
    collect_numbers,
    demo_report,
    figure_rows,
    run_demo,
    write_figure,
)
from utils.errors import OutputError
from utils.grids import grid_row_names

MODES = ("clean2clean", "encry2clean", "encry2encry", "clean2encry")
PROTOCOLS = ("all_search", "indoor_search")


# ------------------------------------------------------------------------------------------------
# Hand-made runs
# ------------------------------------------------------------------------------------------------
def scores(seed):
    """Distinct Rank-k / mAP / mINP fractions per seed, so each cell of a table is recognisable."""
    base = (seed % 97) / 100
    return {"rank1": base, "rank5": base + 0.001, "rank10": base + 0.002, "rank20": base + 0.003,
            "mAP": base + 0.0041, "mINP": base + 0.0052, "short_list": True}


def stats(seed):
    return {"feature_mse": 0.001 * seed, "cosine": 0.9, "noise_share": 0.0, "closer_to_noise": 0.011 * seed,
            "constraint_held": 0.013 * seed, "share_above_epsilon": 0.007 * seed}


def quality(psnr, ssim):
    return {"protected": {"psnr": psnr, "ssim": ssim, "mse": 0.1},
            "recovered": {"psnr": psnr + 5.5, "ssim": ssim + 0.25, "mse": 0.05}}


def protect_results(offset):
    reid = {p: {m: scores(offset + 10 * i + j) for j, m in enumerate(MODES)} for i, p in enumerate(PROTOCOLS)}
    modalities = {name: stats(offset + k + 1) for k, name in enumerate(("visible", "infrared", "overall"))}
    return {"reid": reid["all_search"], "reid_protocols": reid, "protection_modalities": modalities}


def attack_results(offset, per_modality):
    """Two scored epochs, "2" and "10": the last is epoch 10 (a string sort would pick "2")."""
    last = {"num_images": 12, "pixel_space": quality(10.0 + offset, 0.1), "reference_normalisation": quality(1, 0)}
    if per_modality:
        last["per_modality"] = {m: {"num_images": 6, "pixel_space": quality(20.0 + offset + k, 0.3 + k / 10)}
                                for k, m in enumerate(("visible", "infrared"))}
    early = {"num_images": 12, "pixel_space": quality(99.0, 0.9)}
    return {"reference": {"evaluations": {"2": {"epoch": 2, **early}, "10": {"epoch": 10, **last}}}}


TRAINING = {"run": {"model": "resnet18_nl", "protocol": "all_search", "trials": [0], "train_ids": 8,
                    "train_images": 45},
            "epochs": [{"epoch": 0, "loss": 3.0}, {"epoch": 1, "loss": 2.0}],
            "evaluations": [{"epoch": 1, "rank1": 0.8181, "mAP": 0.7654, "mINP": 0.5}],
            "best": {"epoch": 1, "rank1": 0.8181, "file": "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"}}


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


@pytest.fixture
def hand_made_output(tmp_path):
    write_json(str(tmp_path / "model" / "results.json"), TRAINING)
    for number, method in enumerate(METHODS):
        write_json(str(tmp_path / method / "results.json"), protect_results(30 * number))
        write_json(str(tmp_path / method / "attack_results.json"), attack_results(number, per_modality=number == 0))
    return tmp_path


def test_numbers_are_read_from_the_runs_files(hand_made_output):
    numbers = collect_numbers(str(hand_made_output))
    assert numbers["training"] == TRAINING
    pixelfade = numbers["methods"]["pixelfade"]
    assert pixelfade["reid_protocols"] == protect_results(0)["reid_protocols"]
    assert pixelfade["protection_modalities"] == protect_results(0)["protection_modalities"]
    assert pixelfade["attack"]["epoch"] == 10 and pixelfade["attack"]["pixel_space"] == quality(10.0, 0.1)
    assert numbers["methods"]["blur"]["attack"]["pixel_space"] == quality(11.0, 0.1)


def test_report_shows_every_table_cell_of_the_numbers(hand_made_output):
    report = demo_report(SMALL_SCALE, collect_numbers(str(hand_made_output)), "figure.png")
    # Re-ID: protocol i, mode j -> scores(10 i + j) for pixelfade, scores(30 + 10 i + j) for blur; in %.
    assert "| all_search | clean2clean | 0.0 | 0.4 | 30.0 | 30.4 |" in report
    assert "| all_search | encry2clean | 1.0 | 1.4 | 31.0 | 31.4 |" in report
    assert "| indoor_search | encry2encry | 12.0 | 12.4 | 42.0 | 42.4 |" in report
    assert "clean2encry |" not in report
    # Protection statistics per modality: stats(offset + k + 1).
    assert "| pixelfade | infrared | 0.0020 | 2.6% | 2.2% | 1.4% |" in report
    assert "| blur | overall | 0.0330 | 42.9% | 36.3% | 23.1% |" in report
    # The attack's last epoch (10), all images then each modality when the attack scored them apart.
    assert "| pixelfade | all | protected | 10.00 | 0.100 |" in report
    assert "| pixelfade | all | recovered | 15.50 | 0.350 |" in report
    assert "| pixelfade | infrared | recovered | 26.50 | 0.650 |" in report
    assert "| pixelfade | visible | protected | 20.00 | 0.300 |" in report
    assert "| blur | all | recovered | 16.50 | 0.350 |" in report and "| blur | visible | protected" not in report
    assert "99.00" not in report  # the earlier epoch
    assert "Rank-1 81.8 %, mAP 76.5 %" in report and "2 epochs" in report and "45 images of 8 identities" in report
    assert "Figure: figure.png" in report


def hand_made_pairs(run_dir, protected_offset, clean_offset=0.0):
    """Two test batches: infrared (camids 2, 5) and visible (0, 1, 3, 4) images of identities 7, 8, 9.

    Image i (in saved order) is filled with i / 100 + offset in the normalised space, so it can be told apart.
    """
    camids = [[2, 2, 5, 0, 1], [5, 3, 4, 2, 0]]
    ids = [[7, 7, 8, 7, 7], [9, 8, 9, 9, 8]]
    npy_dir = os.path.join(run_dir, "img_npy")
    for batch in range(2):
        numbers = torch.arange(5 * batch, 5 * batch + 5, dtype=torch.float32) / 100
        values = numbers.view(5, 1, 1, 1).expand(5, 3, 4, 2)
        write_batch(npy_dir, "test", batch, values + clean_offset, values + protected_offset, ids[batch],
                    camids[batch])


def normalised_values(pixels):
    """The normalised value each image was filled with, back from its displayed pixels."""
    mean = torch.tensor(IMAGENET_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_PIXEL_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std)[:, 0, 0, 0]


def test_figure_rows_take_the_first_image_of_each_identity_per_modality(tmp_path):
    runs = {"pixelfade": str(tmp_path / "pixelfade"), "blur": str(tmp_path / "blur")}
    hand_made_pairs(runs["pixelfade"], protected_offset=0.001)
    hand_made_pairs(runs["blur"], protected_offset=0.002)
    rows = figure_rows(runs, count=5)
    assert list(rows) == ["RGB original", "RGB pixelfade", "RGB blur", "IR original", "IR pixelfade", "IR blur"]
    assert [len(images) for images in rows.values()] == [3] * 6  # 3 identities in each modality
    # Visible (cameras 1, 2, 4, 5): the first image of id 7 is number 3, of id 8 number 6, of id 9 number 7.
    # Infrared (cameras 3, 6): id 7 number 0, id 8 number 2, id 9 number 5.
    assert normalised_values(rows["RGB original"]).mul(100).round().tolist() == [3, 6, 7]
    assert normalised_values(rows["IR original"]).mul(100).round().tolist() == [0, 2, 5]
    assert normalised_values(rows["RGB pixelfade"]).mul(1000).round().tolist() == [31, 61, 71]
    assert normalised_values(rows["IR blur"]).mul(1000).round().tolist() == [2, 22, 52]
    assert [len(images) for images in figure_rows(runs, count=2).values()] == [2] * 6


def test_figure_rows_refuse_runs_with_other_originals(tmp_path):
    runs = {"pixelfade": str(tmp_path / "pixelfade"), "blur": str(tmp_path / "blur")}
    hand_made_pairs(runs["pixelfade"], protected_offset=0.001)
    hand_made_pairs(runs["blur"], protected_offset=0.001, clean_offset=0.5)
    with pytest.raises(OutputError, match="blur: its test originals differ from the other runs'"):
        figure_rows(runs, count=3)


def test_figure_has_one_labelled_row_per_label(tmp_path):
    rows = {label: torch.full((3, 3, 8, 4), shade) for label, shade in (("RGB original", 0.0), ("IR blur", 0.5))}
    path = write_figure(rows, str(tmp_path / FIGURE_NAME))
    with Image.open(path) as image:
        assert grid_row_names(image) == ("RGB original", "IR blur")
        # 3 images of 4 x 8 with 2-pixel padding, enlarged FIGURE_UPSCALE times, the label strip on the left.
        assert image.size == (FIGURE_MARGIN + FIGURE_UPSCALE * (3 * 4 + 4 * 2), FIGURE_UPSCALE * (2 * 8 + 3 * 2))
        pixels = np.asarray(image.convert("RGB"))
    top_row = pixels[FIGURE_UPSCALE * 3, FIGURE_MARGIN + FIGURE_UPSCALE * 3]
    bottom_row = pixels[FIGURE_UPSCALE * (2 + 8 + 2 + 3), FIGURE_MARGIN + FIGURE_UPSCALE * 3]
    assert top_row.tolist() == [0, 0, 0] and bottom_row.tolist() == [128, 128, 128]


def test_bad_threads_is_one_line_and_exit_2(tmp_path, capsys):
    assert demo_vi.main(["--output", str(tmp_path / "demo"), "--threads", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("demo_vi: error: --threads must be an integer >= 0")
    assert not os.path.exists(tmp_path / "demo")


# ------------------------------------------------------------------------------------------------
# The whole demo, tiny
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("demo_vi"))
    return output, run_demo(output, SMALL_SCALE, device="cpu", threads=1, show_progress=False)


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_the_report_numbers_come_from_the_runs_results_files(demo):
    output, summary = demo
    report = read(os.path.join(output, REPORT_NAME))
    assert report == summary["report"]
    cells = []
    for protocol in PROTOCOLS:
        for mode in ("clean2clean", "encry2clean", "encry2encry"):
            row = [json.loads(read(os.path.join(output, m, "results.json")))["reid_protocols"][protocol][mode]
                   for m in METHODS]
            cells.append(f"| {protocol} | {mode} | " + " | ".join(
                f"{100 * s['rank1']:.1f} | {100 * s['mAP']:.1f}" for s in row) + " |")
    for method in METHODS:
        infrared = json.loads(read(os.path.join(output, method, "results.json")))["protection_modalities"]["infrared"]
        cells.append(f"| {method} | infrared | {infrared['feature_mse']:.4f} | {infrared['constraint_held']:.1%} |")
        evaluations = json.loads(read(os.path.join(output, method, "attack_results.json")))["reference"]["evaluations"]
        recovered = evaluations[str(SMALL_SCALE.attack_epochs - 1)]["pixel_space"]["recovered"]
        cells.append(f"| {method} | all | recovered | {recovered['psnr']:.2f} | {recovered['ssim']:.3f} |")
    missing = [cell for cell in cells if cell not in report]
    assert not missing, missing
    training = json.loads(read(os.path.join(output, "model", "results.json")))
    assert summary["checkpoint"] == os.path.join(output, "model", training["best"]["file"])
    # The protection run scores the trained file on the trainer's trials exactly as its last evaluation did.
    protection = json.loads(read(os.path.join(output, "pixelfade", "results.json")))
    trials = [entry["trial"] for entry in protection["reid_trials"]["all_search"]["clean2clean"]]
    assert trials == training["run"]["trials"] == list(SMALL_SCALE.trials)
    clean = protection["reid_protocols"]["all_search"]["clean2clean"]
    assert clean["mAP"] == pytest.approx(training["evaluations"][-1]["mAP"], abs=1e-6)
    with Image.open(os.path.join(output, FIGURE_NAME)) as image:
        assert grid_row_names(image) == ("RGB original", "RGB pixelfade", "RGB blur", "IR original",
                                         "IR pixelfade", "IR blur")


def test_rerunning_resumes_every_step_and_gives_the_same_report(demo):
    output, summary = demo
    stamps = {name: os.path.getmtime(os.path.join(output, name, "results.json")) for name in ("model", *METHODS)}
    again = run_demo(output, SMALL_SCALE, device="cpu", threads=1, show_progress=False)
    assert again["report"] == summary["report"]
    assert os.path.getmtime(os.path.join(output, "data")) <= min(stamps.values())
    trained = json.loads(read(os.path.join(output, "model", "results.json")))
    assert [e["epoch"] for e in trained["epochs"]] == list(range(SMALL_SCALE.train_epochs))
