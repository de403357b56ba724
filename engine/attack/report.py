"""The cross-method privacy comparison: one table (Markdown + JSON) and two figures from several runs.

Each run is a protect run folder (one per protection method) whose recovery attacks are done, so
that its ``attack_results.json`` holds the privacy table. The figures: original / protected /
recovered rows of the first query images per method (recovered by each learned attacker's scored
weights; the inversion attacker is left out, since redoing it costs its N steps per image), and
authorised mAP (protected queries vs original gallery, from the protect run's results.json)
against identity leakage (mAP of each row, by the first independent evaluator, else the authorization model).
"""
import json
import os

import torch
from torchvision.utils import make_grid

from data.img_npy import NPY_DIRNAME
from data.npy_pairs import PairDataset
from engine.attack.models import AUTHORIZATION, protect_run_results
from engine.attack.results import attacker_entries, number_cell, percent_cell, privacy_table, read_results
from engine.attack.settings import ATTACKERS, LEARNED_ATTACKERS, AttackSettings
from engine.attack.weights import generator_recovery, scored_generator
from evaluation.image_quality import to_pixels
from utils.errors import ConfigError
from utils.figures import plt, save_figure
from utils.file_io import atomic_write_text

REPORT_MARKDOWN = "privacy_report.md"
REPORT_JSON = "privacy_report.json"
ROWS_FIGURE = "privacy_rows.png"
SCATTER_FIGURE = "privacy_scatter.png"
FIGURE_IMAGES = 6
COMPARISON_NOTE = (
    "Authorised = protected queries vs original gallery by the authorization model (the protect run's "
    "encry2clean): what the protection must keep. Rows: the protected queries and what each attacker recovers "
    "from them; leakage (Rank-1 / mAP, %) = those images searched against the original gallery. A method "
    "protects identity when its leakage stays near chance while the authorised mAP stays near the "
    "original-query mAP. Cost: the protection method alone, per image (results.json of each run).")


def run_label(results, run_dir):
    """'method (mode)' of a protect run, from its results.json, else the folder name."""
    run = results.get("run", {})
    if not run.get("method"):
        return os.path.basename(os.path.normpath(run_dir))
    return run["method"] if run.get("mode") in (None, "reference") else f"{run['method']} ({run['mode']})"


def collect_privacy(run_dirs):
    """One dict per run: run, method, authorised Rank-1/mAP (encry2clean), cost, privacy table.

    ``ConfigError`` naming the first run without a privacy table (and the command that makes it).
    """
    collected = []
    for run_dir in run_dirs:
        table = privacy_table(run_dir)
        if not table:
            raise ConfigError(f"{run_dir} has no privacy table in attack_results.json; expected a protect run folder "
                              f"whose attacks are done: python recovery_attack.py --npy_path {run_dir} --attacker all")
        results = protect_run_results(run_dir)
        authorised = results.get("reid", {}).get("encry2clean", {})
        collected.append({"run": str(run_dir), "method": run_label(results, run_dir),
                          "authorised_rank1": authorised.get("rank1"), "authorised_mAP": authorised.get("mAP"),
                          "cost": results.get("cost"), "privacy": table})
    return collected


def comparison_markdown(collected):
    """A method table (authorised retrieval, chance, cost) and a row table (pixels, LPIPS, leakage)."""
    evaluators = []
    for item in collected:
        evaluators += [label for label in item["privacy"]["evaluators"] if label not in evaluators]
    lines = ["# Privacy comparison", "",
             ("| method | authorised Rank-1 | authorised mAP | original-query mAP (authorization) | chance mAP "
              "| protection ms/image | passes f/b |"), "|---|---|---|---|---|---|---|"]
    for item in collected:
        table, cost = item["privacy"], item["cost"] or {}
        passes = "n/a" if cost.get("forward") is None else f"{cost['forward']}/{cost['backward']}"
        cells = [item["method"], percent_cell(item["authorised_rank1"]), percent_cell(item["authorised_mAP"]),
                 percent_cell(table["clean"][AUTHORIZATION]["mAP"]), percent_cell(table["chance"]["mAP"]),
                 number_cell(cost.get("ms_per_image"), 1), passes]
        lines.append("| " + " | ".join(cells) + " |")
    header = ["method", "row", "PSNR px (dB)", "SSIM px", "LPIPS"]
    header += [f"{metric} {label}" for label in evaluators for metric in ("Rank-1", "mAP")]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for item in collected:
        rows = item["privacy"]["rows"]
        for name in [name for name in ("protected", *ATTACKERS) if name in rows]:
            row = rows[name]
            cells = [item["method"], name, number_cell(row["psnr_pixel"], 2), number_cell(row["ssim_pixel"], 4),
                     number_cell(row["lpips"], 4)]
            cells += [percent_cell(row["leakage"].get(label, {}).get(metric)) for label in evaluators
                      for metric in ("rank1", "mAP")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", COMPARISON_NOTE, ""]
    return "\n".join(lines)


def _query_images(run_dir, count):
    test = PairDataset(os.path.join(run_dir, NPY_DIRNAME), "test", check_values=False)
    protected, original = (torch.cat(parts)[:count] for parts in
                           zip(*(test.load_batch(p) for p in range(min(test.num_batches, count)))))
    return protected, original


def figure_rows(item, count=FIGURE_IMAGES, device="cpu"):
    """[(label, pixel images)] of one run: original, protected, each learned attacker's recovery."""
    count = min(count, item["privacy"]["num_query"])
    protected, original = _query_images(item["run"], count)
    results = read_results(item["run"])
    entries = attacker_entries(results)
    settings = next(iter(entries.values()), {}).get("settings", {})
    mean, std = settings.get("pixel_mean", (0.485, 0.456, 0.406)), settings.get("pixel_std", (0.229, 0.224, 0.225))
    rows = [("original", to_pixels(original, mean, std)), ("protected", to_pixels(protected, mean, std))]
    for name in LEARNED_ATTACKERS:
        if name in entries and name in item["privacy"]["rows"]:
            attacker = AttackSettings(**{key: tuple(value) if isinstance(value, list) else value
                                         for key, value in entries[name]["settings"].items()})
            generator, _, _ = scored_generator(attacker, item["run"], tuple(protected.shape[1:]), device)
            with torch.no_grad():
                recovered = generator_recovery(generator, attacker)(protected.to(device)).cpu()
            rows.append((f"recovered ({name})", to_pixels(recovered, mean, std)))
    return rows


def rows_figure(collected, path, device="cpu"):
    """Original / protected / recovered rows per method, one image strip per row."""
    strips = [(f"{item['method']}: {label}", images) for item in collected
              for label, images in figure_rows(item, device=device)]
    figure, axes = plt.subplots(len(strips), 1, figsize=(8, 1.6 * len(strips)), squeeze=False)
    for axis, (label, images) in zip(axes[:, 0], strips):
        axis.imshow(make_grid(images, nrow=images.shape[0], padding=1, pad_value=1.0).permute(1, 2, 0).numpy())
        axis.set_title(label, fontsize=8, loc="left")
        axis.axis("off")
    save_figure(figure, path, dpi=120)


def leakage_evaluator(table):
    """The evaluator the scatter plot uses: the first independent one (ATTACK.EVAL_MODELS), else the
    authorization model, whose leakage of the protected row equals the authorised mAP by construction."""
    independent = [label for label in table["evaluators"] if label != AUTHORIZATION]
    return independent[0] if independent else AUTHORIZATION


def scatter_figure(collected, path):
    """Authorised mAP (y) against identity leakage mAP (x, by :func:`leakage_evaluator`), one point per row."""
    markers = {"protected": "o", "reference": "s", "strong": "^", "identity": "D", "inversion": "x"}
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    for number, item in enumerate(collected):
        colour = f"C{number % 10}"
        evaluator = leakage_evaluator(item["privacy"])
        for name, row in item["privacy"]["rows"].items():
            if item["authorised_mAP"] is None:
                continue
            axis.scatter(100 * row["leakage"][evaluator]["mAP"], 100 * item["authorised_mAP"], color=colour,
                         marker=markers.get(name, "."), label=f"{item['method']}: {name} (by {evaluator})")
    chance = collected[0]["privacy"]["chance"]["mAP"]
    axis.axvline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance (leakage)")
    axis.set_xlabel("identity leakage: mAP of protected / recovered queries (%)")
    axis.set_ylabel("authorised mAP: protected queries vs original gallery (%)")
    axis.legend(fontsize=6, loc="best")
    save_figure(figure, path, dpi=120)


def write_privacy_report(run_dirs, output_dir, device="cpu"):
    """Write the comparison (Markdown, JSON) and both figures into ``output_dir``; returns the collected runs."""
    collected = collect_privacy(run_dirs)
    atomic_write_text(comparison_markdown(collected), os.path.join(output_dir, REPORT_MARKDOWN))
    atomic_write_text(json.dumps(collected, indent=2, sort_keys=True) + "\n", os.path.join(output_dir, REPORT_JSON))
    rows_figure(collected, os.path.join(output_dir, ROWS_FIGURE), device)
    scatter_figure(collected, os.path.join(output_dir, SCATTER_FIGURE))
    return collected
