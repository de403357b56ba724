"""The demo behind ``python demo.py`` (``bash run.sh demo``): the whole PixelFade story on generated
data, on a CPU, in minutes (README, "The demo").

Synthetic pedestrians -> an UNTRAINED AGW authorization model (random weights from a fixed seed:
no download exists here) -> PixelFade and, for comparison, Gaussian blur protect query, gallery
and train -> Re-ID is scored in the four modes -> the reference recovery attack is trained on each
method's train pairs and scored on its test pairs -> one figure of original / protected / recovered.
The untrained model makes Re-ID accuracies low in absolute terms; what the demo shows is that
protected images keep the authorization model's retrieval while an attacker recovers little.
"""
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from configs import load_config
from data.img_npy import npy_dir_of, read_batch
from data.synthetic import make_market1501
from engine.attack import WEIGHT_FILENAMES, run_recovery_attack
from engine.protect_results import to_jsonable
from engine.protect_run import ProtectOptions, run
from evaluation.image_quality import to_pixels
from evaluation.reid import format_results_table
from modeling.generators import build_generator
from utils.file_io import atomic_write_text

METHODS = ("pixelfade", "blur")
FIGURE_NAME = "demo_figure.png"
REPORT_NAME = "demo_report.md"
RESULTS_NAME = "demo_results.json"


@dataclass(frozen=True)
class DemoScale:
    """Size of the generated data set and of the work done on it."""

    num_ids: int
    num_cams: int
    images_per_id_cam: int
    height: int
    width: int
    batch_size: int
    max_iter: int
    beta: float
    beta_temp: float
    epsilon: float
    attack_epochs: int
    attack_ngf: int
    blur_sigma: float
    figure_images: int


# About four minutes on 2 CPU cores (README, "Measured figures").
DEFAULT_SCALE = DemoScale(num_ids=16, num_cams=3, images_per_id_cam=2, height=128, width=64,
                          batch_size=16, max_iter=40, beta=0.005, beta_temp=0.005, epsilon=0.1,
                          attack_epochs=40, attack_ngf=16, blur_sigma=3.0, figure_images=8)
# The same pipeline in well under a minute, for the test suite.
SMALL_SCALE = DemoScale(num_ids=10, num_cams=2, images_per_id_cam=2, height=64, width=32,
                        batch_size=8, max_iter=30, beta=0.005, beta_temp=0.005, epsilon=0.1,
                        attack_epochs=40, attack_ngf=8, blur_sigma=2.0, figure_images=6)


def demo_config(output, scale, method, device):
    """The frozen config of one protection run of the demo."""
    return load_config("", [
        "MODEL.DEVICE", device,
        "INPUT.IMG_SIZE", f"[{scale.height}, {scale.width}]",
        "DATASETS.NAMES", "market1501",
        "DATASETS.ROOT_DIR", os.path.join(output, "data"),
        "DATALOADER.NUM_WORKERS", "0",
        "PIXELFADE.METHOD", method,
        "PIXELFADE.BATCH_SIZE", str(scale.batch_size),
        "PIXELFADE.MAX_ITER", str(scale.max_iter),
        "PIXELFADE.BETA", str(scale.beta),
        "PIXELFADE.BETA_TEMP", str(scale.beta_temp),
        "PIXELFADE.EPSILON", str(scale.epsilon),
        "PIXELFADE.BLUR_SIGMA", str(scale.blur_sigma),
        "PIXELFADE.SAVE_IMAGE_NPY", "True",
        "PIXELFADE.NUM_GRIDS", "1",
        "ATTACK.TOTAL_EPOCHS", str(scale.attack_epochs),
        "ATTACK.EVAL_EPOCHS", "[]",
        "ATTACK.NGF", str(scale.attack_ngf),
        "ATTACK.NUM_GRIDS", "1",
        "OUTPUT_DIR", os.path.join(output, method),
    ])


def ensure_data(output, scale):
    """Generate the synthetic Market-1501 once; a rerun reuses it (and resumes the runs).

    It is generated beside its final place and moved there when complete, so an interrupted
    generation is redone instead of leaving a half-written data set behind.
    """
    root = os.path.join(output, "data")
    if not os.path.isdir(root):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        make_market1501(partial, num_ids=scale.num_ids, num_cams=scale.num_cams,
                        images_per_id_cam=scale.images_per_id_cam, height=scale.height,
                        width=scale.width, seed=0)
        os.replace(partial, root)
    return root


def recover(cfg, run_dir, protected):
    """The reference attacker's recovery of ``protected`` with the weights it saved."""
    generator = build_generator(cfg.ATTACK.GENERATOR, ngf=cfg.ATTACK.NGF, output_activation="tanh")
    state = torch.load(os.path.join(run_dir, WEIGHT_FILENAMES["reference"]), map_location="cpu",
                       weights_only=True)
    generator.load_state_dict(state)
    with torch.no_grad():
        return generator.eval()(protected)


def labeled_figure(rows, labels, path, scale_factor=2):
    """Stack image rows (each [N,3,H,W] in [0,1]) into one PNG with a label left of each row."""
    grid = make_grid(torch.cat(rows), nrow=rows[0].shape[0], padding=2, pad_value=1.0)
    image = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    image = image.resize((image.width * scale_factor, image.height * scale_factor), Image.NEAREST)
    margin = 150
    canvas = Image.new("RGB", (image.width + margin, image.height), "white")
    canvas.paste(image, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = image.height / len(rows)
    for i, label in enumerate(labels):
        draw.text((6, int(i * row_height + row_height / 2) - 6), label, fill="black")
    canvas.save(path)
    return canvas.size


def build_figure(output, scale, configs):
    """Original / protected / recovered rows for both methods on the first test images."""
    rows, labels = [], []
    original = None
    for method in METHODS:
        run_dir = configs[method].OUTPUT_DIR
        first_batch = read_batch(npy_dir_of(run_dir), "test", 0)
        clean = torch.from_numpy(first_batch.clean)[: scale.figure_images]
        protected = torch.from_numpy(first_batch.protected)[: scale.figure_images]
        mean, std = configs[method].INPUT.PIXEL_MEAN, configs[method].INPUT.PIXEL_STD
        if original is None:
            original = to_pixels(clean, mean, std)
            rows.append(original)
            labels.append("original")
        rows += [to_pixels(protected, mean, std),
                 to_pixels(recover(configs[method], run_dir, protected), mean, std)]
        labels += [f"{method} protected", f"{method} recovered"]
    path = os.path.join(output, FIGURE_NAME)
    labeled_figure(rows, labels, path)
    return path


def attack_table(attack_results):
    lines = ["| method | image vs original | PSNR pixel (dB) | SSIM pixel | PSNR ref. norm. (dB) "
             "| SSIM ref. norm. |",
             "|---|---|---|---|---|---|"]
    for method, result in attack_results.items():
        evaluations = result["reference"]["evaluations"]
        last = evaluations[max(evaluations, key=int)]
        for kind in ("protected", "recovered"):
            pixel, ref = last["pixel_space"][kind], last["reference_normalisation"][kind]
            lines.append(f"| {method} | {kind} | {pixel['psnr']:.2f} | {pixel['ssim']:.3f} | "
                         f"{ref['psnr']:.2f} | {ref['ssim']:.3f} |")
    return "\n".join(lines)


def demo_report(reid_results, attack_results, model_note, figure_path):
    parts = [
        "# PixelFade demo",
        "",
        f"Authorization model: {model_note}. It is NOT a trained Re-ID model: absolute accuracies "
        "are low; compare the protected modes with clean2clean.",
        "",
    ]
    for method in METHODS:
        parts += [f"## Re-ID with {method}-protected images", "",
                  format_results_table(reid_results[method]["reid"]), ""]
    parts += ["## Recovery attack (reference attacker, last epoch)", "",
              attack_table(attack_results), "", f"Figure: {figure_path}", ""]
    return "\n".join(parts)


def run_demo(output, scale=DEFAULT_SCALE, device="auto", show_progress=True):
    """Run the demo into ``output``; returns the report text and the numbers behind it."""
    os.makedirs(output, exist_ok=True)
    ensure_data(output, scale)
    configs = {method: demo_config(output, scale, method, device) for method in METHODS}
    options = ProtectOptions(random_init=True, show_progress=show_progress)
    reid_results, attack_results = {}, {}
    for method in METHODS:
        reid_results[method] = run(configs[method], options)
    for method in METHODS:
        attack_results[method] = run_recovery_attack(
            configs[method], configs[method].OUTPUT_DIR, ["reference"],
            reid_results[method]["run"]["device"], show_progress=show_progress)
    figure_path = build_figure(output, scale, configs)
    report = demo_report(reid_results, attack_results,
                         reid_results["pixelfade"]["run"]["checkpoint"], figure_path)
    atomic_write_text(report, os.path.join(output, REPORT_NAME))
    numbers = {"reid": {method: result["reid"] for method, result in reid_results.items()},
               "attack": attack_results}
    atomic_write_text(json.dumps(to_jsonable(numbers), indent=2),
                      os.path.join(output, RESULTS_NAME))
    return {"report": report, "reid": reid_results, "attack": attack_results,
            "figure": figure_path}
