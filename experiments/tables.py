"""Collect run folders into one table: rows of numbers read from each folder's results, Markdown and JSON.

Every number of a row is read from its run folder: ``results.json`` of the protection run (Re-ID
in the four modes, protection statistics, per-image cost) and ``attack_results.json`` of its
recovery attacks (the privacy table: protected/recovered PSNR, SSIM, LPIPS and identity leakage;
without it, PSNR/SSIM of each attacker's last evaluation). Nothing is recomputed here, so a
table always equals its folders.
"""
import json
import os

from engine.attack.results import read_results
from utils.errors import OutputError
from utils.file_io import atomic_write_json, atomic_write_text

from .points import PRIVACY_KEY

REID_MODES = ("clean2clean", "encry2clean", "encry2encry", "clean2encry")
AUTHORISED_MODE = "encry2clean"
EVALUATOR = "authorization"


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise OutputError(f"{path} not found: the run has not finished (rerun the same command to resume it)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OutputError(f"{path} cannot be read as JSON: {err}") from None


def _last_evaluation(entry):
    evaluations = entry.get("evaluations") or {}
    if not evaluations:
        return None
    return evaluations[max(evaluations, key=int)]["pixel_space"]


def image_rows(attack):
    """{"protected": {...}, "<attacker>": {...}}: PSNR/SSIM (pixel space), LPIPS and leakage per row.

    From the privacy table when the attack wrote one; else from each attacker's last evaluation.
    """
    privacy = attack.get(PRIVACY_KEY)
    if privacy:
        rows = {}
        for name, row in privacy.get("rows", {}).items():
            leakage = (row.get("leakage") or {}).get(EVALUATOR)
            rows[name] = {"psnr": row.get("psnr_pixel"), "ssim": row.get("ssim_pixel"), "lpips": row.get("lpips"),
                          "leakage_rank1": leakage and leakage["rank1"], "leakage_mAP": leakage and leakage["mAP"],
                          "epoch": row.get("epoch"), "selection": row.get("selection")}
        return rows
    rows = {}
    for name, entry in attack.items():
        last = _last_evaluation(entry) if isinstance(entry, dict) else None
        if last is None:
            continue
        rows.setdefault("protected", {"psnr": last["protected"]["psnr"], "ssim": last["protected"]["ssim"],
                                      "lpips": None, "leakage_rank1": None, "leakage_mAP": None})
        rows[name] = {"psnr": last["recovered"]["psnr"], "ssim": last["recovered"]["ssim"], "lpips": None,
                      "leakage_rank1": None, "leakage_mAP": None, "epoch": None, "selection": "last"}
    return rows


def run_row(run_dir, label, values=None):
    """One table row: the numbers of the run folder ``run_dir`` (fractions for Re-ID, dB for PSNR)."""
    results = read_json(os.path.join(run_dir, "results.json"))
    attack = read_results(run_dir)
    privacy = attack.get(PRIVACY_KEY) or {}
    test_stats = results.get("protection", {}).get("test", {})
    return {
        "label": label,
        "run": run_dir,
        "values": dict(values or {}),
        "method": results["run"]["method"],
        "mode": results["run"]["mode"],
        "checkpoint": results["run"]["checkpoint"],
        "reid": {mode: {"rank1": results["reid"][mode]["rank1"], "mAP": results["reid"][mode]["mAP"]}
                 for mode in REID_MODES},
        "eval_models": {name: {mode: {"rank1": table[mode]["rank1"], "mAP": table[mode]["mAP"]} for mode in REID_MODES}
                        for name, table in results.get("eval_models", {}).items()},
        "feature_mse": test_stats.get("feature_mse"),
        "constraint_held": test_stats.get("constraint_held"),
        "cost": results.get("cost"),
        "images": image_rows(attack),
        "chance": privacy.get("chance"),
    }


def attackers_of(rows):
    names = []
    for row in rows:
        names += [name for name in row["images"] if name != "protected" and name not in names]
    return names


def worst_leakage(row):
    """The highest leakage Rank-1 over the row's attackers, or None.

    The protected images' own row is left out: scored by the authorization model it is the
    authorised retrieval itself, which the protection keeps on purpose.
    """
    values = [image["leakage_rank1"] for name, image in row["images"].items()
              if name != "protected" and image.get("leakage_rank1") is not None]
    return max(values) if values else None


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cost(row):
    cost = row["cost"]
    if not cost:
        return "n/a"
    passes = "" if cost.get("forward") is None else f" ({cost['forward']}F/{cost['backward']}B"
    key_model = cost.get("passes") or {}
    if passes and "key_model_forward" in key_model:
        passes += f" + key model {key_model['key_model_forward']}F/{key_model['key_model_backward']}B"
    return f"{cost['ms_per_image']:.1f}{passes}{')' if passes else ''}"


def markdown_table(rows, keys=()):
    """Markdown: a row per run; ``keys`` are the swept config keys shown as columns."""
    attackers = attackers_of(rows)
    head = ["row", *[key.split(".")[-1] for key in keys], "clean2clean mAP", "authorised mAP (encry2clean)",
            "encry2encry mAP", "protected PSNR (dB)"]
    head += [f"recovered PSNR, {name} (dB)" for name in attackers]
    head += [f"leakage Rank-1, {name}" for name in attackers]
    head += ["chance Rank-1", "feature MSE", "constraint held (% of steps)", "ms per image (passes)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        images = row["images"]
        chance = row["chance"] or {}
        cells = [row["label"], *[str(row["values"].get(key, "")) for key in keys],
                 _pct(row["reid"]["clean2clean"]["mAP"]), _pct(row["reid"][AUTHORISED_MODE]["mAP"]),
                 _pct(row["reid"]["encry2encry"]["mAP"]), _num(images.get("protected", {}).get("psnr"))]
        cells += [_num(images.get(name, {}).get("psnr")) for name in attackers]
        cells += [_pct(images.get(name, {}).get("leakage_rank1")) for name in attackers]
        cells += [_pct(chance.get("rank1")), _num(row["feature_mse"], 4), _pct(row["constraint_held"]), _cost(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transfer_table(rows):
    """Markdown: authorised mAP (encry2clean) of each row scored by its own model and each extra model."""
    evaluators = []
    for row in rows:
        evaluators += [name for name in row["eval_models"] if name not in evaluators]
    head = ["protected for", "own model", *evaluators]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], _pct(row["reid"][AUTHORISED_MODE]["mAP"])]
        cells += [_pct(row["eval_models"][name][AUTHORISED_MODE]["mAP"]) if name in row["eval_models"] else "-"
                  for name in evaluators]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = (
    "Re-ID in %: clean2clean = original query vs original gallery; authorised = protected query vs original "
    "gallery (the service's use); encry2encry = protected vs protected. PSNR in pixel space against the original "
    "test images. Leakage Rank-1 in %: each attacker's recovered query images searched against the ORIGINAL "
    "gallery by the authorization model (near chance = identity hidden); n/a where the attack wrote no privacy "
    "table. "
    "Feature MSE and constraint held: test split, authorization model (results.md of each run). "
    "Cost: wall ms per protected image in the run, with the authorization model's forward/backward passes."
)


def write_table(rows, output_dir, name, title, keys=(), extra_markdown="", meta=None):
    """Write ``<name>.md`` and ``<name>.json`` into ``output_dir``; returns the two paths."""
    parts = [f"# {title}", "", markdown_table(rows, keys), "", NOTES, ""]
    if extra_markdown:
        parts += [extra_markdown, ""]
    md_path = os.path.join(output_dir, f"{name}.md")
    json_path = os.path.join(output_dir, f"{name}.json")
    atomic_write_text("\n".join(parts), md_path)
    atomic_write_json({"table": name, "title": title, "keys": list(keys), **(meta or {}), "rows": rows}, json_path)
    return md_path, json_path
