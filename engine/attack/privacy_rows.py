"""The privacy table's rows: its scorer and Re-ID models (built from the protect run) and the row of each attacker.

The protected queries form the first row; each learned attacker's scored generator and the white-box
inversion recover the queries for theirs (``evaluation.privacy.PrivacyScorer`` scores a row).
"""
import dataclasses
import os

import torch

from data.img_npy import run_dir_of
from engine.attack.inversion import invert_protected
from engine.attack.layout import GRID_DIRNAME
from engine.attack.models import (
    authorization_model,
    evaluator_models,
    identity_model,
    privacy_information,
    query_count,
    scoring_config,
)
from engine.attack.weights import generator_recovery, scored_generator
from evaluation.image_quality import to_pixels
from evaluation.privacy import PrivacyScorer, routed_forward


def prepare_privacy(cfg, npy_dir, test_pairs, attackers, settings, device, logger=None):
    """The models and scorer of the privacy table, built (and so checked) before anything is written.

    Returns (scorer, authorization model, its description, identity model and label or (None, '')).
    The scorer is None when only the reference and strong attackers run on pairs whose protect run
    is unknown (no config.yaml beside img_npy, no ATTACK.AUTH_MODEL and ATTACK.NUM_QUERY): then
    there is no privacy table, as before this table existed.
    """
    run_dir = run_dir_of(npy_dir)
    if not privacy_information(cfg, run_dir) and set(attackers) <= {"reference", "strong"}:
        return None, None, "not identified", None, ""
    num_query = query_count(cfg, run_dir, len(test_pairs))
    authorization, description = authorization_model(cfg, run_dir, device, logger)
    evaluators = evaluator_models(cfg, run_dir, authorization, device, logger)
    feature_model, feature_label = None, ""
    if "identity" in attackers:
        feature_model, feature_label = identity_model(cfg, run_dir, authorization, device, logger)
    scoring = scoring_config(cfg, run_dir)
    scorer = PrivacyScorer(test_pairs, num_query, evaluators, settings, device, cfg.ATTACK.LPIPS_ALEXNET,
                           reid_kwargs={"metric": scoring.TEST.DISTANCE, "feat_norm": scoring.TEST.FEAT_NORM == "on",
                                        "rerank": scoring.TEST.RE_RANKING == "on"})
    return scorer, authorization, description, feature_model, feature_label


def protected_row(scorer):
    """The protected queries themselves, unrecovered."""
    return {**scorer.score(lambda protected, modalities=None: protected), "epoch": None, "selection": "none", "cost": None}


def generator_row(scorer, settings, log_dir, image_shape, device):
    """A learned attacker's row, through the weights it is scored with (best epoch, else last)."""
    generator, epoch, selection = scored_generator(settings, log_dir, image_shape, device)
    with torch.no_grad():
        recovered = scorer.score(generator_recovery(generator, settings))
    return {**recovered, "epoch": epoch, "selection": selection, "cost": None}


def dataset_mean_image(train_pairs, settings):
    """The train split's mean original image in pixel space (1 x C x H x W): the inversion's start."""
    total, count = 0.0, 0
    for position in range(train_pairs.num_batches):
        _, originals = train_pairs.load_batch(position)
        total = total + to_pixels(originals, settings.pixel_mean, settings.pixel_std).double().sum(dim=0)
        count += originals.shape[0]
    return (total / count).float().unsqueeze(0)


def run_inversion(settings, scorer, model, train_pairs, log_dir, device, logger):
    """The white-box attacker over the query images: (entry, privacy row with its per-image cost)."""
    start = dataset_mean_image(train_pairs, settings) if settings.inversion_init == "mean" else None
    totals = {"seconds": 0.0, "images": 0, "forward": 0, "backward": 0, "error_start": 0.0, "error_end": 0.0}

    def recover(protected, modalities=None):
        # Each image is inverted through its own sensor's stem (a visible-infrared model), as it was protected.
        recovered, stats = invert_protected(lambda images: routed_forward(model, images, modalities), protected,
                                            start, settings, device)
        totals["seconds"] += stats["seconds"]
        totals["images"] += protected.shape[0]
        totals["forward"], totals["backward"] = stats["forward"], stats["backward"]
        totals["error_start"] += float(stats["feature_error_start"].sum())
        totals["error_end"] += float(stats["feature_error_end"].sum())
        return recovered

    logger.info(f"[inversion] {settings.inversion_steps} steps per image from the "
                f"{'train mean image' if start is not None else 'protected image'}, lr {settings.inversion_lr}, "
                f"TV weight {settings.inversion_tv}, on {scorer.num_query} query images")
    row = scorer.score(recover, grid_dir=os.path.join(log_dir, GRID_DIRNAME, "inversion"),
                       num_grids=settings.num_grids)
    images = totals["images"]
    cost = {"ms_per_image": 1000.0 * totals["seconds"] / images, "forward": totals["forward"],
            "backward": totals["backward"], "device": str(device)}
    entry = {"settings": dataclasses.asdict(settings), "cost": cost,
             "feature_error": {"start": totals["error_start"] / images, "end": totals["error_end"] / images}}
    logger.info(f"[inversion] relative feature error {entry['feature_error']['start']:.4f} -> "
                f"{entry['feature_error']['end']:.4f}; {cost['ms_per_image']:.1f} ms per image "
                f"({cost['forward']} forward, {cost['backward']} backward passes)")
    return entry, {**row, "epoch": None, "selection": "none", "cost": cost}
