"""The visible-infrared demo: ``python -m experiments.demo_vi --output DIR [--device D]`` (``bash run.sh demo_vi``).

Synthetic people seen by RGB and by infrared cameras in the SYSU-MM01 layout -> a small two-stem AGW
(``resnet18_nl``) trained on them with the reference's cross-modality recipe on a short schedule ->
PixelFade and, for comparison, Gaussian blur through ``protect_image.py`` (each image through the stem
of its own modality, all-search and indoor-search scored) -> the reference recovery attack through
``recovery_attack.py`` -> a Markdown report whose numbers are read back from the runs' own results
files, and a figure of RGB and IR originals beside their protected versions.

Each step writes its own folder under ``--output`` (``data``, ``model``, ``pixelfade``, ``blur``) and
resumes there, so rerunning the same command finishes an interrupted demo.
"""
import os
import shutil
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from configs import load_config
from data.datasets.sysu_mm01 import INFRARED_CAMERAS
from data.img_npy import find_pairs, npy_dir_of, read_batch
from data.synthetic_vi import make_sysu_mm01
from data.transforms import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
from engine.attack.results import PER_MODALITY, percent_cell
from engine.train.cross_modality import TrainOptions, train_cross_modality
from evaluation.image_quality import to_pixels
from experiments.demo_steps import (
    DATA_DIR,
    attack_step,
    common_flags,
    demo_main,
    last_evaluation,
    protect_step,
    read_json,
)
from utils.errors import OutputError
from utils.file_io import atomic_write_json, atomic_write_text
from utils.grids import labelled_grid, save_labelled_grid

PROG = "demo_vi"
METHODS = ("pixelfade", "blur")
MODEL_NAME = "resnet18_nl"
MODEL_DIR = "model"
REPORT_NAME, FIGURE_NAME, SUMMARY_NAME = "demo_vi_report.md", "demo_vi_figure.png", "demo_vi_results.json"
PROTOCOLS = ("all_search", "indoor_search")
REPORT_MODES = ("clean2clean", "encry2clean", "encry2encry")
MODE_MEANINGS = {"clean2clean": "original infrared queries vs original visible gallery (the model's own accuracy)",
                 "encry2clean": "protected queries vs original gallery",
                 "encry2encry": "protected queries vs protected gallery (a service storing only protected images)"}
STAT_COLUMNS = (("feature_mse", "feature MSE", "{:.4f}"), ("constraint_held", "steps the constraint held", "{:.1%}"),
                ("closer_to_noise", "values nearer noise than original", "{:.1%}"),
                ("share_above_epsilon", "images above EPSILON", "{:.1%}"))
FIGURE_UPSCALE, FIGURE_MARGIN = 3, 110


@dataclass(frozen=True)
class VIDemoScale:
    """Size of the synthetic set and of the work done on it."""

    num_ids: int
    images_per_id_cam: int
    height: int
    width: int
    train_epochs: int
    warmup_epochs: int
    lr_step: int
    trials: tuple
    batch_size: int
    max_iter: int
    attack_epochs: int
    attack_ngf: int
    blur_sigma: float
    figure_images: int


# Under five minutes on 2 CPU cores (docs/visible_infrared.md, "The demo").
DEFAULT_SCALE = VIDemoScale(num_ids=36, images_per_id_cam=2, height=64, width=32, train_epochs=8, warmup_epochs=2,
                            lr_step=6, trials=(0, 1), batch_size=16, max_iter=30, attack_epochs=12, attack_ngf=16,
                            blur_sigma=2.0, figure_images=8)
# The same pipeline in well under a minute, for the test suite.
SMALL_SCALE = VIDemoScale(num_ids=12, images_per_id_cam=1, height=32, width=16, train_epochs=2, warmup_epochs=1,
                          lr_step=1, trials=(0,), batch_size=16, max_iter=4, attack_epochs=1, attack_ngf=4,
                          blur_sigma=2.0, figure_images=4)


# ------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------
def ensure_data(output, scale):
    """The synthetic SYSU-MM01 under ``<output>/data``, generated once (beside its place, then moved in)."""
    root = os.path.join(output, DATA_DIR)
    if not os.path.isdir(root):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        make_sysu_mm01(partial, num_ids=scale.num_ids, images_per_id_cam=scale.images_per_id_cam,
                       height=scale.height, width=scale.width, seed=0)
        os.replace(partial, root)
    return root


def trials_value(scale):
    return "[" + ", ".join(str(trial) for trial in scale.trials) + "]"


def train_config(output, scale, device):
    """The reference recipe (8 ids x 4 visible + 4 infrared, CE + WRT, SGD) on a short schedule.

    Scored only after the last epoch, so the best file is the last epoch's weights: nothing is chosen on
    the test identities that the protection runs score.
    """
    return load_config("", [
        "DATASETS.NAMES", "sysu_mm01", "DATASETS.ROOT_DIR", os.path.join(output, DATA_DIR),
        "DATASETS.TRIALS", trials_value(scale), "MODEL.NAME", MODEL_NAME, "MODEL.DEVICE", device,
        "DATALOADER.NUM_WORKERS", "0", "VI_TRAIN.IMG_SIZE", f"[{scale.height}, {scale.width}]",
        "VI_TRAIN.MAX_EPOCHS", str(scale.train_epochs), "VI_TRAIN.WARMUP_EPOCHS", str(scale.warmup_epochs),
        "VI_TRAIN.STEPS", f"[{scale.lr_step}]", "VI_TRAIN.EVAL_PERIOD", str(scale.train_epochs),
        "OUTPUT_DIR", os.path.join(output, MODEL_DIR),
    ])


def train_model(output, scale, device, show_progress):
    """Train (or resume, or reuse) the authorization model; returns the path of its best file."""
    cfg = train_config(output, scale, device)
    results = train_cross_modality(cfg, TrainOptions(show_progress=show_progress))
    return os.path.join(cfg.OUTPUT_DIR, results["best"]["file"])


def protect(output, scale, method, checkpoint, flags):
    """protect_image.py as a user runs it on SYSU-MM01 (agw_vi defaults), at the demo's size and trials."""
    return protect_step(output, "sysu_mm01", scale, method, checkpoint, flags,
                        ("MODEL.NAME", MODEL_NAME, "DATASETS.TRIALS", trials_value(scale)))


# ------------------------------------------------------------------------------------------------
# Reading the runs back
# ------------------------------------------------------------------------------------------------
def collect_numbers(output):
    """What the report shows, read from the training run's and each method's results files."""
    numbers = {"training": read_json(os.path.join(output, MODEL_DIR, "results.json")), "methods": {}}
    for method in METHODS:
        run_dir = os.path.join(output, method)
        protection = read_json(os.path.join(run_dir, "results.json"))
        numbers["methods"][method] = {
            "reid_protocols": protection["reid_protocols"],
            "protection_modalities": protection["protection_modalities"],
            "attack": last_evaluation(read_json(os.path.join(run_dir, "attack_results.json"))),
        }
    return numbers


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def model_lines(scale, training):
    final = training["evaluations"][-1]
    run = training["run"]
    model = (f"Authorization model: the two-stem AGW `{MODEL_NAME}` (BasicBlock ResNet-18 with non-local blocks; "
             "the reference uses ResNet-50), TRAINED by the demo from random weights with the reference's "
             f"cross-modality recipe on a short schedule: {len(training['epochs'])} epochs (warm-up "
             f"{scale.warmup_epochs}, lr x0.1 from epoch {scale.lr_step}), {run['train_images']} images of "
             f"{run['train_ids']} identities. Its own evaluation after the last epoch ({run['protocol']}, trials "
             f"{', '.join(str(t) for t in run['trials'])}): Rank-1 {percent_cell(final['rank1'])} %, mAP "
             f"{percent_cell(final['mAP'])} %.")
    protection = (f"Protection: PixelFade at the paper's settings (BETA 0.01, BETA_TEMP 0.04, EPSILON 0.03 on the "
                  f"BNNeck feature before L2 normalisation) with MAX_ITER {scale.max_iter} (paper 100), and Gaussian "
                  f"blur (sigma {scale.blur_sigma:g}); {scale.height}x{scale.width} images; every image through the "
                  "stem of its own modality (RGB: visible, IR: thermal).")
    return [model, "", protection]


def reid_table(methods):
    """Rank-1 / mAP per protocol and mode, one column pair per method (means over the trials)."""
    header = "| protocol | mode | " + " | ".join(f"{m} Rank-1 | {m} mAP" for m in methods) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(methods)]
    for protocol in PROTOCOLS:
        for mode in REPORT_MODES:
            cells = [f"{percent_cell(s['rank1'])} | {percent_cell(s['mAP'])}"
                     for s in (methods[m]["reid_protocols"][protocol][mode] for m in methods)]
            lines.append(f"| {protocol} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protection_table(methods):
    """The protection statistics of the test images per modality, each method."""
    lines = ["| method | modality | " + " | ".join(title for _, title, _ in STAT_COLUMNS) + " |",
             "|---|---|" + "---|" * len(STAT_COLUMNS)]
    for method, numbers in methods.items():
        for modality in ("visible", "infrared", "overall"):
            stats = numbers["protection_modalities"][modality]
            cells = " | ".join(form.format(stats[key]) for key, _, form in STAT_COLUMNS)
            lines.append(f"| {method} | {modality} | {cells} |")
    return "\n".join(lines)


def attack_rows(method, record):
    """(method, images, kind, PSNR, SSIM) rows: all test images, then each modality the attack scored apart."""
    groups = [("all", record["pixel_space"])]
    groups += [(modality, part["pixel_space"]) for modality, part in sorted(record.get(PER_MODALITY, {}).items())]
    return [(method, images, kind, scores[kind]["psnr"], scores[kind]["ssim"])
            for images, scores in groups for kind in ("protected", "recovered")]


def attack_table(methods):
    lines = ["| method | test images | image vs original | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for method, numbers in methods.items():
        lines += [f"| {m} | {images} | {kind} | {psnr:.2f} | {ssim:.3f} |"
                  for m, images, kind, psnr, ssim in attack_rows(method, numbers["attack"])]
    return "\n".join(lines)


def demo_report(scale, numbers, figure_path):
    """The Markdown report of the numbers read by :func:`collect_numbers`."""
    methods = numbers["methods"]
    trials = ", ".join(str(t) for t in scale.trials)
    parts = ["# Visible-infrared PixelFade demo (synthetic SYSU-MM01)", "", *model_lines(scale, numbers["training"]),
             "", f"## Re-ID, infrared queries vs visible gallery (%, mean over trials {trials})", "",
             reid_table(methods), ""]
    parts += [f"- {mode}: {meaning}" for mode, meaning in MODE_MEANINGS.items()]
    parts += ["", "## Protection statistics of the test images per modality", "", protection_table(methods), "",
              f"## Recovery attack (reference attacker, {scale.attack_epochs} epochs; pixel space, test images)", "",
              attack_table(methods), "", f"Figure: {figure_path}", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# The figure
# ------------------------------------------------------------------------------------------------
def saved_test_images(run_dir):
    """(original, protected, ids, camids) of every saved test pair of a run, in saved order."""
    npy_dir = npy_dir_of(run_dir)
    batches = [read_batch(npy_dir, "test", pair.index) for pair in find_pairs(npy_dir, "test")]
    return tuple(np.concatenate([getattr(batch, name) for batch in batches])
                 for name in ("clean", "protected", "ids", "camids"))


def first_image_per_identity(ids, camids, infrared):
    """Positions of the first image of each identity among one modality's images (IR: SYSU cameras 3, 6)."""
    chosen, seen = [], set()
    for position, (pid, camid) in enumerate(zip(ids.tolist(), camids.tolist())):
        if (camid + 1 in INFRARED_CAMERAS) == infrared and pid not in seen:
            seen.add(pid)
            chosen.append(position)
    return chosen


def figure_rows(run_dirs, count):
    """{row label: [N, 3, H, W] pixels}: RGB original, RGB <method>..., IR original, IR <method>...

    The first identities of each modality's test images; every run must hold the same originals there.
    """
    saved = {method: saved_test_images(run_dir) for method, run_dir in run_dirs.items()}
    clean, _, ids, camids = next(iter(saved.values()))
    positions = {name: first_image_per_identity(ids, camids, name == "IR") for name in ("RGB", "IR")}
    count = min(count, *(len(chosen) for chosen in positions.values()))
    rows = {}
    for name, chosen in positions.items():
        chosen = chosen[:count]
        rows[f"{name} original"] = clean[chosen]
        for method, (original, protected, _, _) in saved.items():
            if not np.array_equal(original[chosen], clean[chosen]):
                raise OutputError(f"{run_dirs[method]}: its test originals differ from the other runs' "
                                  "(another data set or settings); delete the demo folder and rerun")
            rows[f"{name} {method}"] = protected[chosen]
    return {label: to_pixels(torch.from_numpy(images), IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD)
            for label, images in rows.items()}


def write_figure(rows, path):
    """One PNG: a row per label (images in [0, 1], enlarged), the labels on the left and in its text chunk."""
    first = next(iter(rows.values()))
    grid = make_grid(torch.cat(list(rows.values())), nrow=first.shape[0], padding=2, pad_value=1.0)
    image = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    image = image.resize((image.width * FIGURE_UPSCALE, image.height * FIGURE_UPSCALE), Image.NEAREST)
    return save_labelled_grid(labelled_grid(image, list(rows), margin=FIGURE_MARGIN), path)


# ------------------------------------------------------------------------------------------------
# The whole demo
# ------------------------------------------------------------------------------------------------
def run_demo(output, scale=DEFAULT_SCALE, device="auto", threads=0, show_progress=True):
    """Every step into ``output`` (each resumes its own folder); returns the report and the numbers behind it."""
    os.makedirs(output, exist_ok=True)
    ensure_data(output, scale)
    checkpoint = train_model(output, scale, device, show_progress)
    flags = common_flags(device, threads, show_progress)
    run_dirs = {method: protect(output, scale, method, checkpoint, flags) for method in METHODS}
    for method, run_dir in run_dirs.items():
        attack_step(run_dir, scale, method, flags)
    numbers = collect_numbers(output)
    figure_path = write_figure(figure_rows(run_dirs, scale.figure_images), os.path.join(output, FIGURE_NAME))
    report = demo_report(scale, numbers, figure_path)
    atomic_write_text(report, os.path.join(output, REPORT_NAME))
    atomic_write_json({"scale": asdict(scale), "checkpoint": checkpoint, **numbers},
                      os.path.join(output, SUMMARY_NAME))
    return {"report": report, "numbers": numbers, "figure": figure_path, "checkpoint": checkpoint}


def main(argv=None):
    return demo_main(PROG, __doc__.splitlines()[0], run_demo, (DEFAULT_SCALE, SMALL_SCALE), "log/demo_vi", argv)


if __name__ == "__main__":
    sys.exit(main())
