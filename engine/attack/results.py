"""The recovery attack's results: per-attacker entries, ``attack_results.json`` and ``.md``, the log lines."""
import dataclasses
import json
import logging
import os

from engine.attack.settings import ATTACKERS, LOGGER_NAME
from evaluation.image_quality import PROTOCOLS, PSNR_CAP_DB
from utils.file_io import atomic_write_text

IMAGE_KINDS = ("protected", "recovered")
RESULTS_JSON = "attack_results.json"
RESULTS_MARKDOWN = "attack_results.md"
# The key of attack_results.json holding the privacy table; every other key is an attacker.
PRIVACY_KEY = "privacy"
# An evaluation's scores per modality (visible-infrared pairs only): {modality: {'num_images', protocol: ...}}.
PER_MODALITY = "per_modality"


def results_entry(settings, history):
    entry = {"settings": dataclasses.asdict(settings),
             "train_loss": {str(epoch): loss for epoch, loss in sorted(history.train_loss.items())},
             "evaluations": {str(epoch): {"epoch": epoch, **record}
                             for epoch, record in sorted(history.evaluations.items())}}
    if history.validation_l1:
        entry["validation_l1"] = {str(epoch): loss for epoch, loss in sorted(history.validation_l1.items())}
    if history.best_evaluation is not None:
        entry["best"] = dict(history.best_evaluation)
    return entry


def scored_parts(record):
    """(label suffix, record) of an evaluation: the whole test split, then each modality's images when known."""
    parts = [("", record)]
    parts += [(f" ({modality})", part) for modality, part in sorted(record.get(PER_MODALITY, {}).items())]
    return parts


def scored_rows(record, protocol):
    """(row name, scored part, metric values) of each image kind: overall, then per modality."""
    for suffix, part in scored_parts(record):
        for kind in IMAGE_KINDS:
            yield f"{kind}{suffix}", part, part[protocol][kind]


def log_record(logger, attacker, epoch_index, record):
    for protocol in PROTOCOLS:
        for name, _, values in scored_rows(record, protocol):
            logger.info(f"[{attacker}] epoch {epoch_index} {protocol} {name} vs original: "
                        f"psnr:{values['psnr']:.2f}  mse:{values['mse']:.4f}  ssim:{values['ssim']:.2f}")


def read_results(log_dir):
    """The attackers' entries of ``<log_dir>/attack_results.json`` ({} if absent or invalid)."""
    json_path = os.path.join(log_dir, RESULTS_JSON)
    if not os.path.isfile(json_path):
        return {}
    try:
        with open(json_path) as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        logging.getLogger(LOGGER_NAME).warning(f"{json_path} cannot be read as JSON; rewriting it")
        return {}
    return results if isinstance(results, dict) else {}


def _write(log_dir, results):
    atomic_write_text(json.dumps(results, indent=2, sort_keys=True) + "\n",
                      os.path.join(log_dir, RESULTS_JSON))
    atomic_write_text(results_markdown(results), os.path.join(log_dir, RESULTS_MARKDOWN))


def write_results(log_dir, attacker, entry):
    """Put one attacker's entry into attack_results.json (others kept) and redraw the Markdown."""
    results = read_results(log_dir)
    results[attacker] = entry
    _write(log_dir, results)
    return entry


def write_privacy(log_dir, header, rows):
    """Put the privacy table (``header`` plus ``rows``) into attack_results.json.

    Rows of an earlier run with the same header (other attackers) are kept; a changed header (other
    queries, evaluators or authorization model) drops them.
    """
    results = read_results(log_dir)
    previous = results.get(PRIVACY_KEY) or {}
    kept = previous.get("rows", {}) if {k: v for k, v in previous.items() if k != "rows"} == header else {}
    results[PRIVACY_KEY] = {**header, "rows": {**kept, **rows}}
    _write(log_dir, results)
    return results[PRIVACY_KEY]


def privacy_table(log_dir_or_results):
    """``attack_results.json``'s privacy table (a folder or its results dict), or None."""
    results = log_dir_or_results if isinstance(log_dir_or_results, dict) else read_results(log_dir_or_results)
    return results.get(PRIVACY_KEY)


def attacker_entries(results):
    """The attackers' entries of a results dict (every key but the privacy table)."""
    return {name: entry for name, entry in results.items() if name != PRIVACY_KEY}


PROTOCOL_TITLES = {
    "reference_normalisation": "Reference protocol: each batch min-max scaled to [0, 1]",
    "pixel_space": "Pixel space: the run's normalisation undone, pixels clamped to [0, 1]",
}
PROTOCOL_NOTES = {
    "reference_normalisation": (
        "As the reference script computes it: each batch tensor (protected, recovered and "
        "original, each on its own) is min-max scaled to [0, 1] as a whole, then piq PSNR and "
        "SSIM (data_range 1) and the MSE are taken per batch and averaged over batches weighted "
        "by their image counts."),
    "pixel_space": (
        "What a viewer of the stored images sees: the run's normalisation (INPUT.PIXEL_MEAN, "
        "INPUT.PIXEL_STD: ImageNet's, CLIP's on a text-to-image run) is undone and pixels are clamped to [0, 1]; "
        "piq PSNR (capped at "
        f"{PSNR_CAP_DB:.0f} dB for identical images), SSIM (data_range 1) and MSE per image, "
        "averaged over the images."),
}
ROWS_NOTE = (
    "Rows: `protected` = the stored protected test image vs its original (what the protection "
    "leaves); `recovered` = the attacker's generator output from the protected image vs the "
    "original (what an attacker gets back). Higher PSNR/SSIM and lower MSE mean closer to the "
    "original, i.e. less privacy. `attacker`: reference = the paper's (Tanh output, L1 to the "
    "normalised original); strong = no Tanh, L1 to the original's pixels, output clamped to "
    "[0, 1]; identity = strong plus the feature loss of a Re-ID model. `epoch`: 0-based index of the "
    "epoch after which the test split was scored, `(best)` = the weights of the epoch with the lowest "
    "validation L1; `images`: test images scored.")


PRIVACY_NOTE = (
    "Rows: `original` = the original query images (the clean2clean retrieval: the most any attacker could "
    "leak); `chance` = the expected score of a random ranking (exact, per query, averaged); `protected` = the "
    "stored protected queries; each attacker = what it recovers from them. Identity leakage = Rank-1 / mAP "
    "(%) of those query images searched against the ORIGINAL gallery by each evaluator model "
    "(`authorization` = the protection's own model; others = ATTACK.EVAL_MODELS). Near chance = the identity "
    "does not leak to that model; near `original` = it fully does. PSNR/SSIM/LPIPS compare with the original "
    "queries (higher PSNR/SSIM, lower LPIPS = closer). `selection`: best_validation = the epoch with the "
    "lowest validation L1 on held-out train identities; last = the last epoch. Cost: per query image.")


MODALITY_NOTE = (
    "Visible-infrared pairs: a row whose image kind names a modality, e.g. `recovered (infrared)`, scores only "
    "that modality's test images (`images` = their count); the rows without one score all test images. Infrared "
    "images are darker and simpler than visible ones, so their PSNR/SSIM differ.")


def _records(attackers):
    """Every scored record of the attackers' entries: each evaluated epoch's and the best epoch's."""
    for entry in attackers.values():
        yield from entry.get("evaluations", {}).values()
        if entry.get("best") is not None:
            yield entry["best"]


def percent_cell(value):
    """A share as a table cell in percent, one decimal; 'n/a' for None."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def number_cell(value, digits):
    """A number as a table cell with ``digits`` decimals; 'n/a' for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row_order(name):
    """The protected images first, then the attackers in ATTACKERS order."""
    order = ("protected", *ATTACKERS)
    return (order.index(name) if name in order else len(order), name)


def privacy_markdown(table):
    """The privacy table: pixel similarity, LPIPS and identity leakage per row, then what it means."""
    evaluators = table["evaluators"]
    header = ["row", "selection", "images", "PSNR px (dB)", "SSIM px", "PSNR ref (dB)", "SSIM ref", "LPIPS"]
    header += [f"{metric} {label}" for label in evaluators for metric in ("Rank-1", "mAP")]
    header += ["ms/image", "passes f/b"]
    lines = ["## Privacy: what an attacker gets back from the protected queries", "",
             (f"Authorization model: {table.get('authorization_model', 'n/a')}; {table['num_query']} queries "
              f"against {table['num_gallery']} original gallery images. {table['lpips']['note']}."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blank = ["", "", "", "", "", "", ""]
    for name, scores in (("original", table["clean"]), ("chance", {label: table["chance"] for label in evaluators})):
        cells = [name, *blank]
        cells += [percent_cell(scores[label][metric]) for label in evaluators for metric in ("rank1", "mAP")]
        lines.append("| " + " | ".join(cells + ["", ""]) + " |")
    for name, row in sorted(table["rows"].items(), key=lambda item: _row_order(item[0])):
        selection = row["selection"] if row["epoch"] is None else f"{row['selection']} (epoch {row['epoch']})"
        cells = [name, selection, str(row["num_images"]), number_cell(row["psnr_pixel"], 2),
                 number_cell(row["ssim_pixel"], 4), number_cell(row["psnr_reference"], 2),
                 number_cell(row["ssim_reference"], 4), number_cell(row["lpips"], 4)]
        cells += [percent_cell(row["leakage"][label][metric]) for label in evaluators for metric in ("rank1", "mAP")]
        cost = row.get("cost")
        cells += ["", ""] if not cost else [f"{cost['ms_per_image']:.1f}", f"{cost['forward']}/{cost['backward']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", PRIVACY_NOTE, ""]


def results_markdown(results):
    """One Markdown table per protocol, each followed by what its rows and columns mean, then the privacy table."""
    lines = ["# Recovery attack results", ""]
    attackers = attacker_entries(results)
    for protocol in PROTOCOLS:
        lines += [f"## {PROTOCOL_TITLES[protocol]}", "",
                  "| attacker | epoch | images | image vs original | PSNR (dB) | SSIM | MSE |",
                  "|---|---|---|---|---|---|---|"]
        for attacker in sorted(attackers):
            evaluations = dict(attackers[attacker].get("evaluations", {}))
            best = attackers[attacker].get("best")
            scored = [(epoch, str(epoch), evaluations[epoch]) for epoch in sorted(evaluations, key=int)]
            if best is not None:
                scored.append((best["epoch"], f"{best['epoch']} (best)", best))
            for _, label, record in scored:
                lines += [f"| {attacker} | {label} | {part['num_images']} | {name} | {values['psnr']:.2f} | "
                          f"{values['ssim']:.4f} | {values['mse']:.4f} |"
                          for name, part, values in scored_rows(record, protocol)]
        modality_note = f" {MODALITY_NOTE}" if any(PER_MODALITY in record for record in _records(attackers)) else ""
        lines += ["", f"{ROWS_NOTE} {PROTOCOL_NOTES[protocol]}{modality_note}", ""]
    if PRIVACY_KEY in results:
        lines += privacy_markdown(results[PRIVACY_KEY])
    return "\n".join(lines)
