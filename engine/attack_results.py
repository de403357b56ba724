"""The recovery attack's results: per-attacker entries, ``attack_results.json`` and ``.md``, the log lines."""
import dataclasses
import json
import logging
import os

from evaluation.image_quality import PROTOCOLS, PSNR_CAP_DB
from utils.file_io import atomic_write_text

from .attack_settings import LOGGER_NAME

IMAGE_KINDS = ("protected", "recovered")
RESULTS_JSON = "attack_results.json"
RESULTS_MARKDOWN = "attack_results.md"


def results_entry(settings, history):
    return {"settings": dataclasses.asdict(settings),
            "train_loss": {str(epoch): loss for epoch, loss in sorted(history.train_loss.items())},
            "evaluations": {str(epoch): {"epoch": epoch, **record}
                            for epoch, record in sorted(history.evaluations.items())}}


def log_record(logger, attacker, epoch_index, record):
    for protocol in PROTOCOLS:
        for kind in IMAGE_KINDS:
            values = record[protocol][kind]
            logger.info(f"[{attacker}] epoch {epoch_index} {protocol} {kind} vs original: "
                        f"psnr:{values['psnr']:.2f}  mse:{values['mse']:.4f}  "
                        f"ssim:{values['ssim']:.2f}")


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


def write_results(log_dir, attacker, entry):
    """Put one attacker's entry into attack_results.json (others kept) and redraw the Markdown."""
    results = read_results(log_dir)
    results[attacker] = entry
    atomic_write_text(json.dumps(results, indent=2, sort_keys=True) + "\n",
                      os.path.join(log_dir, RESULTS_JSON))
    atomic_write_text(results_markdown(results), os.path.join(log_dir, RESULTS_MARKDOWN))
    return entry


PROTOCOL_TITLES = {
    "reference_normalisation": "Reference protocol: each batch min-max scaled to [0, 1]",
    "pixel_space": "Pixel space: ImageNet normalisation undone, pixels clamped to [0, 1]",
}
PROTOCOL_NOTES = {
    "reference_normalisation": (
        "As the reference script computes it: each batch tensor (protected, recovered and "
        "original, each on its own) is min-max scaled to [0, 1] as a whole, then piq PSNR and "
        "SSIM (data_range 1) and the MSE are taken per batch and averaged over batches weighted "
        "by their image counts."),
    "pixel_space": (
        "What a viewer of the stored images sees: the ImageNet normalisation (INPUT.PIXEL_MEAN, "
        "INPUT.PIXEL_STD) is undone and pixels are clamped to [0, 1]; piq PSNR (capped at "
        f"{PSNR_CAP_DB:.0f} dB for identical images), SSIM (data_range 1) and MSE per image, "
        "averaged over the images."),
}
ROWS_NOTE = (
    "Rows: `protected` = the stored protected test image vs its original (what the protection "
    "leaves); `recovered` = the attacker's generator output from the protected image vs the "
    "original (what an attacker gets back). Higher PSNR/SSIM and lower MSE mean closer to the "
    "original, i.e. less privacy. `attacker`: reference = the paper's (Tanh output, L1 to the "
    "normalised original); strong = no Tanh, L1 to the original's pixels, output clamped to "
    "[0, 1]. `epoch`: 0-based index of the epoch after which the test split was scored; "
    "`images`: test images scored.")


def results_markdown(results):
    """One Markdown table per protocol, each followed by what its rows and columns mean."""
    lines = ["# Recovery attack results", ""]
    for protocol in PROTOCOLS:
        lines += [f"## {PROTOCOL_TITLES[protocol]}", "",
                  "| attacker | epoch | images | image vs original | PSNR (dB) | SSIM | MSE |",
                  "|---|---|---|---|---|---|---|"]
        for attacker in sorted(results):
            evaluations = results[attacker].get("evaluations", {})
            for epoch in sorted(evaluations, key=int):
                record = evaluations[epoch]
                for kind in IMAGE_KINDS:
                    values = record[protocol][kind]
                    lines.append(f"| {attacker} | {epoch} | {record['num_images']} | {kind} | "
                                 f"{values['psnr']:.2f} | {values['ssim']:.4f} | "
                                 f"{values['mse']:.4f} |")
        lines += ["", f"{ROWS_NOTE} {PROTOCOL_NOTES[protocol]}", ""]
    return "\n".join(lines)
