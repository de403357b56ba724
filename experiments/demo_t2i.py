"""The text-to-image demo: ``python -m experiments.demo_t2i --output DIR [--device D]`` (``bash run.sh demo_t2i``).

Synthetic captioned people in the RSTPReid layout -> a small CLIP (``clip_tiny``) trained on them with
IRRA's SDM + ID losses -> PixelFade and, for comparison, Gaussian blur through ``protect_image.py``
(the gallery is protected, the captions are not; text-to-image scored against the original and the
protected gallery) -> the reference recovery attack through ``recovery_attack.py`` -> a Markdown report
whose numbers are read back from the runs' own results files, and a figure: one caption, its top-5
original images and its top-5 protected images per method.

Every step resumes in its own folder under ``--output`` (``data``, ``model``, ``pixelfade``, ``blur``): the
same command finishes an interrupted demo.
"""
import os
import shutil
import sys
import textwrap
from dataclasses import asdict, dataclass

import numpy as np
import torch

from configs import get_default_config
from data.img_npy import find_pairs, npy_dir_of, read_batch
from data.synthetic_text import make_text_dataset
from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from engine.attack.results import percent_cell
from engine.train.text_image import TextImageSettings
from engine.train.text_image import run as train_text_image
from evaluation.image_quality import to_pixels
from evaluation.text_to_image import similarity_matrix
from experiments import demo_steps as steps
from modeling import build_authorization_model
from utils.file_io import atomic_write_json, atomic_write_text

PROG = "demo_t2i"
DATASET = "rstpreid"
METHODS = ("pixelfade", "blur")
MODEL_DIR = "model"
REPORT_NAME, FIGURE_NAME, SUMMARY_NAME = "demo_t2i_report.md", "demo_t2i_figure.png", "demo_t2i_results.json"
MODE_MEANINGS = {"clean2clean": "captions vs the ORIGINAL test images (the model's own accuracy)",
                 "clean2encry": "captions vs the PROTECTED test images (the service searching its protected gallery)"}
STAT_COLUMNS = (("feature_mse", "feature MSE", "{:.4f}"), ("cosine", "cosine to original", "{:.3f}"),
                ("constraint_held", "steps the constraint held", "{:.1%}"),
                ("share_above_epsilon", "images above EPSILON", "{:.1%}"))
TOP_K = 5
# Frame colours of the figure: the caption's person, anyone else.
MATCH_COLOUR, OTHER_COLOUR = (0.1, 0.7, 0.2), (0.85, 0.15, 0.15)


@dataclass(frozen=True)
class TextDemoScale:
    """Size of the synthetic set and of the work done on it."""

    num_ids: int
    images_per_id_cam: int
    height: int
    width: int
    train_epochs: int
    train_batch: int
    temperature: float
    batch_size: int
    max_iter: int
    attack_epochs: int
    attack_ngf: int
    blur_sigma: float


# docs/text_to_image.md, "The demo": the 400-identity set and 18 epochs that generalise (Rank-1 about 13 x chance).
DEFAULT_SCALE = TextDemoScale(num_ids=400, images_per_id_cam=2, height=64, width=32, train_epochs=18, train_batch=32,
                              temperature=0.02, batch_size=64, max_iter=50, attack_epochs=5, attack_ngf=16,
                              blur_sigma=2.0)
# The same pipeline in seconds, for the test suite.
SMALL_SCALE = TextDemoScale(num_ids=24, images_per_id_cam=2, height=32, width=16, train_epochs=1, train_batch=8,
                            temperature=0.02, batch_size=16, max_iter=2, attack_epochs=1, attack_ngf=4,
                            blur_sigma=2.0)


# ------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------
def ensure_data(output, scale):
    """The synthetic RSTPReid under ``<output>/data``, generated once (beside its place, then moved in)."""
    root = os.path.join(output, steps.DATA_DIR)
    if not os.path.isdir(root):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        make_text_dataset(DATASET, partial, num_ids=scale.num_ids, num_cams=2,
                          images_per_id_cam=scale.images_per_id_cam, height=scale.height, width=scale.width, seed=0)
        os.replace(partial, root)
    return root


def train_model(output, scale, device, show_progress):
    """Train (or resume, or reuse) the small CLIP; returns the path of its plain CLIP state dict."""
    settings = TextImageSettings(dataset=DATASET, root=os.path.join(output, steps.DATA_DIR),
                                 output=os.path.join(output, MODEL_DIR), epochs=scale.train_epochs,
                                 batch_size=scale.train_batch, temperature=scale.temperature, arch="clip_tiny",
                                 image_size=(scale.height, scale.width), device=device,
                                 eval_period=scale.train_epochs, show_progress=show_progress)
    train_text_image(settings)
    return os.path.join(settings.output, "clip_model.pth")


def protect(output, scale, method, checkpoint, flags):
    """protect_image.py with the text-to-image defaults (CLIP mean/std, EPSILON relative 0.06) at the demo's size."""
    return steps.protect_step(output, DATASET, scale, method, checkpoint, flags, ())


def collect_numbers(output):
    """What the report shows, read from the training run's and each method's results files."""
    numbers = {"training": steps.read_json(os.path.join(output, MODEL_DIR, "results.json")), "methods": {}}
    for method in METHODS:
        run_dir = os.path.join(output, method)
        protection = steps.read_json(os.path.join(run_dir, "results.json"))
        attack_results = steps.read_json(os.path.join(run_dir, "attack_results.json"))
        numbers["methods"][method] = {"reid": protection["reid"], "protection": protection["protection"]["test"],
                                      "attack": steps.last_evaluation(attack_results),
                                      "privacy": attack_results.get("privacy")}
    return numbers


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def model_lines(scale, training):
    run, evaluations = training["run"], training["evaluations"]
    before, after = evaluations[0], evaluations[-1]
    chance = 100 * scale.images_per_id_cam * 2 / run["test_images"]
    return [(f"Model: a small CLIP (`clip_tiny`: ViT width 64, 2 layers, 16-pixel patches; text width 64, 2 layers; "
            f"64-d embedding, open_clip's architecture) TRAINED by the demo from random weights with IRRA's SDM "
            f"(temperature {scale.temperature:g}) + ID losses for {len(training['epochs'])} epochs on "
            f"{run['train_images']} images of {run['train_ids']} identities ({scale.height}x{scale.width}). Its own "
            f"text-to-image evaluation on {run['test_captions']} captions vs {run['test_images']} test images: "
            f"Rank-1 {percent_cell(before['rank1'])} % -> {percent_cell(after['rank1'])} %, "
            f"mAP {percent_cell(before['mAP'])} % -> {percent_cell(after['mAP'])} % "
            f"(before -> after training; a random ranking's Rank-1 is {chance:.2f} %)."), "",
            (f"Protection: PixelFade with the text-to-image defaults (EPSILON 0.06 relative, CLIP mean/std; "
            f"MAX_ITER {scale.max_iter}, paper 100) and Gaussian blur (sigma {scale.blur_sigma:g}); the test images "
            "(the gallery) and the train images (the attack's pairs) are protected, the captions never.")]


def reid_table(methods):
    header = "| mode | " + " | ".join(f"{m} Rank-1 | {m} Rank-5 | {m} mAP" for m in methods) + " |"
    lines = [header, "|---|" + "---|---|---|" * len(methods)]
    for mode in MODE_MEANINGS:
        cells = [f"{percent_cell(s['rank1'])} | {percent_cell(s['rank5'])} | {percent_cell(s['mAP'])}"
                 for s in (methods[m]["reid"][mode] for m in methods)]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {mode}: {meaning}" for mode, meaning in MODE_MEANINGS.items()])


def protection_table(methods):
    lines = ["| method | " + " | ".join(title for _, title, _ in STAT_COLUMNS) + " |",
             "|---|" + "---|" * len(STAT_COLUMNS)]
    for method, numbers in methods.items():
        cells = " | ".join(form.format(numbers["protection"][key]) for key, _, form in STAT_COLUMNS)
        lines.append(f"| {method} | {cells} |")
    return "\n".join(lines)


def attack_table(methods):
    """PSNR/SSIM (pixel space) of the protected and the recovered test images."""
    lines = ["| method | image vs original | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for method, numbers in methods.items():
        pixel = numbers["attack"]["pixel_space"]
        lines += [f"| {method} | {kind} | {pixel[kind]['psnr']:.2f} | {pixel[kind]['ssim']:.3f} |"
                  for kind in ("protected", "recovered")]
    return "\n".join(lines)


def leakage_table(methods):
    """Rank-1 / mAP (%) of the leakage queries, original, chance, protected and recovered, through each evaluator."""
    lines = ["| method | evaluator | original | chance | protected | recovered (reference attacker) |",
             "|---|---|---|---|---|---|"]
    for method, numbers in methods.items():
        privacy = numbers["privacy"]
        for evaluator in privacy["evaluators"]:
            scores = [privacy["clean"][evaluator], privacy["chance"],
                      privacy["rows"]["protected"]["leakage"][evaluator],
                      privacy["rows"]["reference"]["leakage"][evaluator]]
            cells = " | ".join(f"{percent_cell(s['rank1'])} / {percent_cell(s['mAP'])}" for s in scores)
            lines.append(f"| {method} | {evaluator} | {cells} |")
    return "\n".join(lines)


def demo_report(scale, numbers, figure):
    methods = numbers["methods"]
    parts = ["# Text-to-image PixelFade demo (synthetic RSTPReid)", "", *model_lines(scale, numbers["training"]),
             "", "## Text-to-image retrieval (%, IRRA's rank)", "", reid_table(methods), "",
             "## Protection statistics of the test images", "", protection_table(methods), "",
             f"## Recovery attack (reference attacker, {scale.attack_epochs} epochs; pixel space, test images)", "",
             attack_table(methods), "", "## Identity leakage (Rank-1 / mAP %)", "", leakage_table(methods), "",
             ("Queries: the first test image of each person with two or more; gallery: every other test image, "
             "original. Searched by the authorization model's image tower (`authorization`: PixelFade keeps its "
             "features by design, so its `protected` column stays high; what leaks to others is the `recovered` "
             "column); an independent image Re-ID model is added with ATTACK.EVAL_MODELS."), "",
             (f"Figure: {figure['path']}: the caption \"{figure['caption']}\" (person {figure['pid']}); row 1 its "
             "top-5 original images, then its top-5 protected images per method (green frame: that person)."), ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# The figure
# ------------------------------------------------------------------------------------------------
def saved_test_images(run_dir):
    """(original, protected, ids) of every saved test pair of a run, in saved order."""
    npy_dir = npy_dir_of(run_dir)
    batches = [read_batch(npy_dir, "test", pair.index) for pair in find_pairs(npy_dir, "test")]
    return tuple(np.concatenate([getattr(batch, name) for batch in batches]) for name in ("clean", "protected", "ids"))


def load_clip(checkpoint, scale):
    cfg = get_default_config()
    cfg.MODEL.FORMAT = "clip"
    cfg.INPUT.IMG_SIZE = [scale.height, scale.width]
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = list(CLIP_PIXEL_MEAN), list(CLIP_PIXEL_STD)
    return build_authorization_model(cfg, checkpoint, "cpu")


def top_k(model, caption, images):
    with torch.no_grad():
        features = model(torch.from_numpy(images))
    similarity = similarity_matrix(model.encode_captions([caption]), features)[0]
    return similarity.argsort(descending=True, stable=True)[:TOP_K]


def figure_rows(model, run_dirs, captions):
    """The first caption whose top-1 original image is its person, and {row label: (images, is that person)}."""
    saved = {method: saved_test_images(run_dir) for method, run_dir in run_dirs.items()}
    clean, _, ids = next(iter(saved.values()))
    caption = next((c for c in captions if ids[top_k(model, c.text, clean)[0]] == c.pid), captions[0])
    chosen = top_k(model, caption.text, clean)
    rows = {"original": (clean[chosen], ids[chosen] == caption.pid)}
    for method, (_, protected, _) in saved.items():
        chosen = top_k(model, caption.text, protected)
        rows[method] = (protected[chosen], ids[chosen] == caption.pid)
    return caption, rows


def write_figure(caption, rows, path):
    """A matplotlib figure: the caption as the title, one row of framed top-5 images per label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(len(rows), TOP_K, figsize=(1.3 * TOP_K + 1, 2.4 * len(rows) + 0.8), squeeze=False)
    for row, (label, (images, matches)) in enumerate(rows.items()):
        pixels = to_pixels(torch.from_numpy(images), CLIP_PIXEL_MEAN, CLIP_PIXEL_STD).permute(0, 2, 3, 1).numpy()
        for column, axis in enumerate(axes[row]):
            axis.imshow(pixels[column], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_color(MATCH_COLOUR if matches[column] else OTHER_COLOUR)
                spine.set_linewidth(4)
        axes[row][0].set_ylabel(f"{label}\ntop-{TOP_K}", fontsize=9)
    figure.suptitle(textwrap.fill(f'"{caption.text}"', 60), fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


# ------------------------------------------------------------------------------------------------
# The whole demo
# ------------------------------------------------------------------------------------------------
def run_demo(output, scale=DEFAULT_SCALE, device="auto", threads=0, show_progress=True):
    """Every step into ``output`` (each resumes its own folder); returns the report and the numbers behind it."""
    from data.datasets import build_dataset

    os.makedirs(output, exist_ok=True)
    root = ensure_data(output, scale)
    checkpoint = train_model(output, scale, device, show_progress)
    flags = steps.common_flags(device, threads, show_progress)
    run_dirs = {method: protect(output, scale, method, checkpoint, flags) for method in METHODS}
    for method, run_dir in run_dirs.items():
        steps.attack_step(run_dir, scale, method, flags)
    numbers = collect_numbers(output)
    caption, rows = figure_rows(load_clip(checkpoint, scale), run_dirs, build_dataset(DATASET, root).query_captions)
    figure = {"path": write_figure(caption, rows, os.path.join(output, FIGURE_NAME)), "caption": caption.text,
              "pid": caption.pid}
    report = demo_report(scale, numbers, figure)
    atomic_write_text(report, os.path.join(output, REPORT_NAME))
    atomic_write_json({"scale": asdict(scale), "checkpoint": checkpoint, "figure": figure, **numbers},
                      os.path.join(output, SUMMARY_NAME))
    return {"report": report, "numbers": numbers, "figure": figure, "checkpoint": checkpoint}


def main(argv=None):
    # One thread: the small CLIP gains nothing from a second one, and on a busy machine two threads that
    # wait for each other made the training epochs ten times slower (docs/text_to_image.md, "The demo").
    return steps.demo_main(PROG, __doc__.splitlines()[0], run_demo, (DEFAULT_SCALE, SMALL_SCALE), "log/demo_t2i", argv,
                           threads=1)


if __name__ == "__main__":
    sys.exit(main())
