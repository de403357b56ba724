"""What a protection run reports: gathered features, statistics, Re-ID scores, and the files they go to."""

import csv
import io
import json
import logging
import os

import torch

from data.splits import UNREADABLE
from engine.protect.sharding import gather_rows_by_index
from engine.protect.text_image import PRIMARY_PROTOCOL as TEXT_PROTOCOL
from engine.protect.text_image import text_image_markdown
from evaluation.protection_stats import STAT_NAMES
from evaluation.reid import PROTECTION_MODES, evaluate_protection_modes, format_results_table
from utils.file_io import atomic_torch_save

logger = logging.getLogger("pixelfade.protect")
# Per-image values every batch record holds, beside the features.
RECORD_STATS = STAT_NAMES + ("constraint_held",)


def gather_split(store, split, shard, num_items, row_shapes):
    """All ranks' records of ``split`` for the keys of ``row_shapes``, gathered and ordered by image index.

    ``row_shapes`` gives each key's per-image shape, so a rank with an empty shard still
    contributes a correctly shaped (empty) tensor to the collective.
    """
    parts = [store.load_batch(split, batch_index) for batch_index in shard]
    indices = torch.cat([p["indices"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    gathered = {}
    for key, row_shape in row_shapes.items():
        rows = torch.cat([p[key].float() for p in parts]) if parts else torch.zeros((0, *row_shape))
        gathered[key] = gather_rows_by_index(indices, rows, num_items)
    return gathered


def summarize_statistics(gathered, epsilon, epsilon_mode="absolute"):
    """Means of the per-image statistics, and the share of images whose final feature MSE is above
    the bound (EPSILON, or EPSILON times the image's mean squared original feature)."""
    summary = {name: float(gathered[name].float().mean()) for name in RECORD_STATS}
    error = gathered["feature_mse"]
    if epsilon_mode == "relative":
        error = error / gathered["original_features"].float().pow(2).mean(dim=1)
    summary["share_above_epsilon"] = float((error > epsilon).float().mean())
    return summary


def warn_above_epsilon(cfg, split, stats):
    share = stats["share_above_epsilon"]
    if cfg.PIXELFADE.METHOD == "pixelfade" and share > 0:
        logger.warning(
            "%s: %.1f%% of the images end with a feature MSE above EPSILON = %g (mean %.4g): the constraint "
            "was not met for them; lower --beta/--beta_temp or raise --max_iter",
            split,
            100 * share,
            cfg.PIXELFADE.EPSILON,
            stats["feature_mse"],
        )


def write_statistics_csv(store, split, plan, root, gathered):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "path", "flipped", "pid", "camid", *RECORD_STATS])
    for index, (record, flip) in enumerate(zip(plan.records, plan.flips)):
        writer.writerow(
            [
                index,
                os.path.relpath(record.path, root),
                int(flip),
                record.pid,
                record.camid,
                *(f"{float(gathered[n][index]):.6g}" for n in RECORD_STATS),
            ]
        )
    store.write_text(f"protection_stats_{split}.csv", buffer.getvalue())


def write_folder_features(store, plan, root, gathered):
    """``features/features.pt`` of a protected folder: paths and original/protected/stored features."""
    atomic_torch_save(
        {
            "paths": [os.path.relpath(r.path, root) for r in plan.records],
            "original": gathered["original_features"],
            "protected": gathered["protected_features"],
            "stored": gathered["stored_features"],
        },
        store.path("features", "features.pt"),
    )


def score(cfg, gathered, plan, protected_key, original_key="original_features"):
    """Rank-k, mAP and mINP in the four protected/original modes of the test split."""
    return evaluate_protection_modes(
        gathered[original_key],
        gathered[protected_key],
        torch.tensor([r.pid for r in plan.records]),
        torch.tensor([r.camid for r in plan.records]),
        plan.num_query,
        metric=cfg.TEST.DISTANCE,
        feat_norm=cfg.TEST.FEAT_NORM == "on",
        rerank=cfg.TEST.RE_RANKING == "on",
    )


def protection_cost(store, spans_of_split, device):
    """Per-image cost of the protection: wall time of the method alone over every batch whose record has it,
    and the method's passes of the authorization model per image (``passes_per_image()``, None if unknown).

    ``spans_of_split``: {split: [(start, stop) per batch]}. Feature extraction, checks and writing are not
    counted; records of an older version without timings are left out of ``images_timed``.
    """
    seconds, images, passes = 0.0, 0, None
    for split, spans in spans_of_split.items():
        for batch_index, (start, stop) in enumerate(spans):
            record = store.load_batch(split, batch_index)
            if "method_seconds" in record:
                seconds += float(record["method_seconds"])
                images += stop - start
            passes = passes or record.get("passes_per_image")
    return {
        "ms_per_image": 1000.0 * seconds / images if images else None,
        "images_timed": images,
        "forward": None if passes is None else passes.get("forward"),
        "backward": None if passes is None else passes.get("backward"),
        "passes": passes,
        "device": str(device),
    }


def skipped_note(skipped):
    """One Markdown line on the files left out of the run, or None when there were none."""
    if not skipped:
        return None
    unreadable = sum(1 for entry in skipped if entry["reason"].startswith(UNREADABLE))
    return (f"Skipped {len(skipped)} file(s) of the data set ({unreadable} unreadable image(s), "
            f"{len(skipped) - unreadable} not taken as images); `skipped` in results.json lists each with the reason.")


def results_markdown(cfg, results):
    lines = [f"# Protection results ({cfg.PIXELFADE.METHOD}, {cfg.DATASETS.NAMES})", ""]
    note = skipped_note(results.get("skipped"))
    if note:
        lines += [note, ""]
    if results.get("reid_primary_protocol") == TEXT_PROTOCOL:
        lines += text_image_markdown(results)
    elif "reid_protocols" in results:
        lines += cross_modality_markdown(results)
    elif "reid" in results:
        lines += [
            "Re-ID, features of the final protected images (float, normalised space):",
            "",
            format_results_table(results["reid"]),
            "",
        ]
    if "reid_stored_png" in results and results.get("reid_primary_protocol") != TEXT_PROTOCOL:
        lines += [
            "Re-ID, protected images stored as 8-bit PNG and read back:",
            "",
            format_results_table(results["reid_stored_png"]),
            "",
        ]
    for label, table in results.get("eval_models", {}).items():
        lines += [
            f"Re-ID scored by the extra model {label} (TEST.EVAL_MODELS): do protected images work with it?",
            "",
            format_results_table(table),
            "",
        ]
    lines += [
        "| split | feature MSE | cosine to original | values equal to noise | values nearer noise than original "
        "| steps the constraint held | images above EPSILON |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, stats in results["protection"].items():
        lines.append(
            f"| {split} | {stats['feature_mse']:.4f} | {stats['cosine']:.4f} | {stats['noise_share']:.1%} "
            f"| {stats['closer_to_noise']:.1%} | {stats['constraint_held']:.1%} | {stats['share_above_epsilon']:.1%} |"
        )
    if "protection_modalities" in results:
        header = ("| modality | feature MSE | cosine to original | values nearer noise than original "
                  "| steps the constraint held | images above EPSILON |")
        lines += ["", "Test images by modality:", "", header, "|---|---|---|---|---|---|"]
        for name, stats in results["protection_modalities"].items():
            lines.append(f"| {name} | {stats['feature_mse']:.4f} | {stats['cosine']:.4f} | "
                         f"{stats['closer_to_noise']:.1%} | {stats['constraint_held']:.1%} "
                         f"| {stats['share_above_epsilon']:.1%} |")
    bound = (
        "EPSILON"
        if cfg.PIXELFADE.EPSILON_MODE == "absolute"
        else "EPSILON times the image's mean squared original feature"
    )
    lines += [
        "",
        "Feature MSE and cosine compare each protected image's feature with its original's (raw "
        "features, authorization model); 'steps the constraint held' is the mean share of the loop's steps "
        f"whose feature test passed; 'images above EPSILON' is the share whose final feature MSE exceeds {bound} "
        f"(EPSILON = {cfg.PIXELFADE.EPSILON}, PIXELFADE.EPSILON_MODE {cfg.PIXELFADE.EPSILON_MODE}).",
    ]
    cost = results.get("cost")
    if cost and cost["ms_per_image"] is not None:
        passes = (
            f", {cost['forward']} forward and {cost['backward']} backward passes of the authorization model"
            if cost["forward"] is not None
            else ""
        )
        lines += [
            "",
            (
                f"Cost of protection: {cost['ms_per_image']:.1f} ms per image on {cost['device']} (the method "
                f"alone, {cost['images_timed']} images timed){passes}."
            ),
        ]
    return "\n".join(lines) + "\n"


SHORT_LIST_NOTE = ("Some ranked lists were shorter than 20: a rank beyond a list's length takes the cumulative "
                   "match at its last position (the reference fails there).")
# What the query and the gallery of each visible-infrared protocol are.
PROTOCOL_ROLES = {
    "all_search": "infrared queries (cam3, cam6) vs one visible image per identity and camera of cam1, 2, 4, 5",
    "indoor_search": "infrared queries (cam3, cam6) vs one visible image per identity and camera of cam1, 2",
    "visible_to_thermal": "visible queries vs thermal gallery",
    "thermal_to_visible": "thermal queries vs visible gallery",
}


def cross_modality_markdown(results):
    """One table per visible-infrared protocol (means over its trials), then Rank-1/mAP per trial."""
    intro = ("Re-ID per protocol, mean over trials of the BNNeck features (L2-normalised, dot product, as the "
             "reference scores them), of the final protected images; `reid` in results.json holds "
             f"{results['reid_primary_protocol']}:")
    lines = [intro, ""]
    for protocol, modes in results["reid_protocols"].items():
        trials = results["reid_trials"][protocol]["clean2clean"]
        numbers = ", ".join(str(entry["trial"]) for entry in trials)
        title = f"**{protocol}** ({PROTOCOL_ROLES.get(protocol, protocol)}; trials {numbers}):"
        lines += [title, "", format_results_table(modes), ""]
        if any(scores["short_list"] for scores in modes.values()):
            lines += [SHORT_LIST_NOTE, ""]
    lines += ["| protocol | trial | " + " | ".join(f"{mode} Rank-1 / mAP" for mode in PROTECTION_MODES) + " |",
              "|---|---|" + "---|" * len(PROTECTION_MODES)]
    for protocol, modes in results["reid_trials"].items():
        for number, _ in enumerate(modes["clean2clean"]):
            cells = [f"{100 * modes[mode][number]['rank1']:.1f} / {100 * modes[mode][number]['mAP']:.1f}"
                     for mode in PROTECTION_MODES]
            lines.append(f"| {protocol} | {modes['clean2clean'][number]['trial']} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_results(store, cfg, results):
    markdown = results_markdown(cfg, results)
    store.write_text("results.json", json.dumps(to_jsonable(results), indent=2))
    store.write_text("results.md", markdown)
    logger.info("results in %s\n%s", store.path("results.md"), markdown)


def to_jsonable(value):
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
