"""What a Re-ID training run leaves for people: ``results.json``, ``results.md`` and ``training_curves.png``."""
import json
import os

from engine.train.curves import training_curves_figure
from engine.train.reid_recipe import METRIC_KEYS
from utils.figures import save_figure
from utils.file_io import atomic_write_json, atomic_write_text


def results_markdown(results):
    lines = [
        f"# AGW training: {results['run']['model']} on {results['run']['dataset']}",
        "",
        "| epoch | Rank-1 | Rank-5 | Rank-10 | mAP | mINP |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["evaluations"]:
        lines.append(f"| {row['epoch']} | " + " | ".join(f"{100 * row[k]:.2f}" for k in METRIC_KEYS) + " |")
    lines += [
        "",
        "| epoch | lr | loss | id | triplet | center | images/s | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["epochs"]:
        center = f"{row['center']:.4f}" if "center" in row else "-"
        lines.append(
            f"| {row['epoch']} | {row['lr']:.3g} | {row['loss']:.4f} | {row['id']:.4f} | "
            f"{row['triplet']:.4f} | {center} | {row['images_per_s']:.1f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def draw_curves(results, path):
    """``training_curves.png``: losses per epoch and mAP / Rank-1 at the evaluated epochs."""
    return save_figure(training_curves_figure(results), path)


def write_results(cfg, progress, info):
    """results.json, results.md and training_curves.png of the epochs and evaluations so far (rank 0)."""
    results = {
        "run": info,
        "epochs": [{"epoch": e, **progress.epochs[e]} for e in sorted(progress.epochs)],
        "evaluations": [{"epoch": e, **progress.evaluations[e]} for e in sorted(progress.evaluations)],
    }
    if results["evaluations"]:
        results["final"] = results["evaluations"][-1]
    atomic_write_json(results, os.path.join(cfg.OUTPUT_DIR, "results.json"))
    atomic_write_text(results_markdown(results), os.path.join(cfg.OUTPUT_DIR, "results.md"))
    draw_curves(results, os.path.join(cfg.OUTPUT_DIR, "training_curves.png"))
    return results


def run_info(cfg, dataset, device, world_size):
    """The ``run`` block of results.json: what was trained on what, and the model files written so far."""
    return {
        "model": cfg.MODEL.NAME,
        "dataset": cfg.DATASETS.NAMES,
        "train_ids": dataset.num_train_pids,
        "train_images": len(dataset.train),
        "device": str(device),
        "processes": world_size,
        "effective_batch": cfg.SOLVER.IMS_PER_BATCH,
        "max_epochs": cfg.SOLVER.MAX_EPOCHS,
        "triplet": "WRT" if cfg.MODEL.WEIGHT_REGULARIZED_TRIPLET == "on" else "hard",
        "center_loss": cfg.MODEL.CENTER_LOSS,
        "pretrain_path": cfg.MODEL.PRETRAIN_PATH,
        "model_files": sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth")),
    }


def results_json(output_dir):
    with open(os.path.join(output_dir, "results.json")) as handle:
        return json.load(handle)
