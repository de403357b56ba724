"""Visible-infrared Re-ID scores: SYSU-MM01's and RegDB's rules, and their means over trials.

The rules are those of the AGW cross-modality code (mangye16/Cross-Modal-Re-ID-baseline,
``eval_metrics.py``), vectorised over queries:

* ``eval_sysu``: rank by ``argsort`` of the distance; for a query from camera 3 the gallery images of
  camera 2 are removed (same room), nothing else. CMC on the ranked identities left after removal,
  de-duplicated keeping each identity's first occurrence; AP and mINP on the ranked list without
  de-duplication (mINP = matches / rank of the last match). Camera ids are SYSU camera numbers 1..6.
* ``eval_regdb``: standard CMC, AP and mINP; nothing removed.

A query without any match is skipped (AP, mINP and the count of valid queries). The reference fails
when a ranked list is shorter than ``max_rank``; here a rank beyond the list takes the cumulative
match at its last position, and ``short_list`` says that happened. Ties in distance are ranked by
gallery index (a stable sort); the reference's quicksort leaves their order unspecified.

Retrieval similarity is the dot product of L2-normalised features (the reference keeps the BNNeck
feature, "FC"); :func:`distance_matrix` returns minus that similarity, as the reference passes it.
"""
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

RANKS = (1, 5, 10, 20)
METRIC_KEYS = tuple(f"rank{k}" for k in RANKS) + ("mAP", "mINP")
SYSU_SAME_ROOM = (3, 2)  # (query camera, gallery camera) of the one pair SYSU-MM01 removes


class RetrievalScores(NamedTuple):
    """``cmc[k - 1]`` = Rank-k (fraction), mAP, mINP, queries with a match, whether a list was short."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    short_list: bool


def _labels(values, name, length):
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must be a 1-D array of {length} labels, got shape {array.shape}")
    return array.astype(np.int64)


def _ranked(distmat, q_pids, g_pids):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2 or 0 in distmat.shape:
        raise ValueError(f"distmat must be a non-empty (num_query, num_gallery) matrix, got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids = _labels(q_pids, "q_pids", num_q)
    g_pids = _labels(g_pids, "g_pids", num_g)
    order = np.argsort(distmat, axis=1, kind="stable")
    return order, g_pids[order], q_pids


def _scores(matches, kept, dedup_rank, list_length, max_rank):
    """Scores from per-rank booleans ``matches``/``kept`` (num_q, num_g) and each query's CMC rank."""
    matches = matches & kept
    num_matches = matches.sum(axis=1)
    valid = num_matches > 0
    if not valid.any():
        raise ValueError("no query has a match in the gallery: the scores are undefined")
    position = np.cumsum(kept, axis=1)  # rank of each kept entry in the list after removal
    hits = np.cumsum(matches, axis=1)
    precision_sum = np.where(matches, hits / np.maximum(position, 1), 0.0).sum(axis=1)
    average_precision = precision_sum[valid] / num_matches[valid]
    last_match = np.where(matches, position, 0).max(axis=1)
    inverse_penalty = num_matches[valid] / last_match[valid]
    ranks = np.arange(1, max_rank + 1)
    cmc = (dedup_rank[valid, None] <= ranks[None, :]).mean(axis=0)
    return RetrievalScores(cmc, float(average_precision.mean()), float(inverse_penalty.mean()),
                           int(valid.sum()), bool((list_length < max_rank).any()))


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """SYSU-MM01 scores (see the module docstring); camids are camera numbers 1..6."""
    order, ranked_pids, q_pids = _ranked(distmat, q_pids, g_pids)
    num_q, num_g = order.shape
    q_camids = _labels(q_camids, "q_camids", num_q)
    g_camids = _labels(g_camids, "g_camids", num_g)
    query_camera, gallery_camera = SYSU_SAME_ROOM
    kept = ~((q_camids[:, None] == query_camera) & (g_camids[order] == gallery_camera))
    matches = ranked_pids == q_pids[:, None]
    first = _first_occurrences(ranked_pids, kept)
    seen = np.cumsum(first, axis=1)  # de-duplicated rank of each entry's identity
    first_match = np.argmax(matches & kept, axis=1)
    dedup_rank = seen[np.arange(num_q), first_match]
    return _scores(matches, kept, dedup_rank, seen[:, -1], max_rank)


def _first_occurrences(ranked_pids, kept):
    """Boolean (num_q, num_g): a kept entry whose identity has no earlier kept entry in its row."""
    rows, cols = np.nonzero(kept)
    _, pid_index = np.unique(ranked_pids, return_inverse=True)
    pid_index = pid_index.reshape(ranked_pids.shape)
    keys = rows * (pid_index.max() + 1) + pid_index[rows, cols]
    _, first = np.unique(keys, return_index=True)  # row-major order: the first index is the best rank
    mask = np.zeros(kept.shape, dtype=bool)
    mask[rows[first], cols[first]] = True
    return mask


def eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    """RegDB scores (see the module docstring): standard CMC, AP and mINP."""
    order, ranked_pids, q_pids = _ranked(distmat, q_pids, g_pids)
    num_q, num_g = order.shape
    matches = ranked_pids == q_pids[:, None]
    kept = np.ones_like(matches)
    first_rank = np.argmax(matches, axis=1) + 1
    return _scores(matches, kept, first_rank, np.full(num_q, num_g), max_rank)


EVALUATORS = {"sysu": eval_sysu, "regdb": eval_regdb}


def l2_normalize(features):
    features = np.asarray(features, dtype=np.float64)
    norms = np.sqrt((features ** 2).sum(axis=1, keepdims=True))
    return features / np.maximum(norms, 1e-12)


def distance_matrix(query_features, gallery_features):
    """Minus the dot product of the L2-normalised features: what the reference ranks by."""
    return -(l2_normalize(query_features) @ l2_normalize(gallery_features).T)


def features_by_path(features):
    """``{path: vector}`` from a mapping or from a ``(paths, 2-D array)`` pair."""
    if isinstance(features, Mapping):
        return features
    paths, array = features
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] != len(paths):
        raise ValueError(f"features for {len(paths)} paths must be a ({len(paths)}, D) array, got {array.shape}")
    return dict(zip(paths, array))


def _stack(records, features, role):
    missing = [r.path for r in records if r.path not in features]
    if missing:
        raise KeyError(f"no {role} feature for {len(missing)} image(s), e.g. {missing[0]}")
    return np.stack([np.asarray(features[r.path], dtype=np.float64) for r in records])


def score_trial(metric, trial, query_features, gallery_features, max_rank=20):
    """Scores of one trial: ``metric`` 'sysu' or 'regdb', features as ``{path: vector}``."""
    distmat = distance_matrix(_stack(trial.query, query_features, "query"),
                              _stack(trial.gallery, gallery_features, "gallery"))
    q_pids = [r.pid for r in trial.query]
    g_pids = [r.pid for r in trial.gallery]
    if metric == "sysu":
        # Records keep 0-based camids; the SYSU rule is written on camera numbers.
        scores = eval_sysu(distmat, q_pids, g_pids, [r.camid + 1 for r in trial.query],
                           [r.camid + 1 for r in trial.gallery], max_rank)
    elif metric == "regdb":
        scores = eval_regdb(distmat, q_pids, g_pids, max_rank)
    else:
        raise ValueError(f"metric must be one of {', '.join(EVALUATORS)}, got {metric!r}")
    return scores


def summarize(scores):
    """Rank-1/5/10/20, mAP, mINP of one RetrievalScores as floats (fractions)."""
    result = {f"rank{k}": float(scores.cmc[k - 1]) for k in RANKS if k <= len(scores.cmc)}
    result.update(mAP=scores.mAP, mINP=scores.mINP)
    return result


def score_protocol(metric, trials, query_features, gallery_features=None, max_rank=20):
    """``{"mean": {...}, "trials": [...]}`` of one protocol's trials.

    ``query_features``/``gallery_features``: ``{path: vector}`` or ``(paths, array)`` (gallery
    defaults to the query mapping: one mapping of every test image). Each trial entry holds its
    number, the metrics, its sizes and ``short_list``; the mean averages the metrics over trials,
    and its ``short_list`` is true when any trial's was.
    """
    query_features = features_by_path(query_features)
    gallery_features = query_features if gallery_features is None else features_by_path(gallery_features)
    per_trial = []
    for trial in trials:
        scores = score_trial(metric, trial, query_features, gallery_features, max_rank)
        entry = {"trial": trial.trial, **summarize(scores), "num_query": len(trial.query),
                 "num_gallery": len(trial.gallery), "num_valid_queries": scores.num_valid_queries,
                 "short_list": scores.short_list}
        per_trial.append(entry)
    if not per_trial:
        raise ValueError("no trials to score")
    keys = [key for key in METRIC_KEYS if key in per_trial[0]]
    mean = {key: float(np.mean([entry[key] for entry in per_trial])) for key in keys}
    mean["short_list"] = any(entry["short_list"] for entry in per_trial)
    return {"mean": mean, "trials": per_trial}


def score_protocols(dataset, query_features, gallery_features=None, max_rank=20):
    """``{protocol: score_protocol(...)}`` for every protocol of a VisibleInfraredDataset."""
    return {protocol: score_protocol(dataset.metric, trials, query_features, gallery_features, max_rank)
            for protocol, trials in dataset.protocols.items()}
