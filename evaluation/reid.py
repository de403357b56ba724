"""Re-ID retrieval metrics (CMC, mAP, mINP) and the four protected/original scoring modes.

The protocol is the reference's Market-1501 one: for each query, gallery entries with the same
pid *and* the same camera are dropped, queries left without a match are skipped, and
INP = number of matches / rank of the hardest match.

Ties in distance are broken by gallery index (a stable sort): the reference sorts with numpy's
default quicksort, whose order among equal distances is unspecified, so on tied distances the two
can differ; with distinct distances they agree exactly.

The ranking is vectorised over chunks of queries. For float16/float32 distances each row is sorted
as 64-bit keys (order-preserving bits of the distance, then gallery index, then a 2-bit match/junk
status), so one plain sort gives the stable order and the status of every ranked item without a
gather; other dtypes take a stable argsort. Only the few same-pid entries per query are then
handled individually, so the cost is one sort plus a handful of elementwise passes per row.
"""
import sys
from types import MappingProxyType

import numpy as np
import torch

from .rerank import re_ranking

DISTANCE_METRICS = ("euclidean", "cosine")

# mode -> (query features, gallery features); the order is the reference's reporting order.
PROTECTION_MODES = MappingProxyType({
    "encry2encry": ("protected", "protected"),
    "clean2clean": ("original", "original"),
    "encry2clean": ("protected", "original"),
    "clean2encry": ("original", "protected"),
})

_STATUS_MATCH = 1
_STATUS_JUNK = 2
# Word order of a uint64 seen as two uint32: which half holds the low (index/status) bits.
_LOW_WORD, _HIGH_WORD = (0, 1) if sys.byteorder == "little" else (1, 0)
_MAX_GALLERY_FOR_KEYS = 2 ** 30


# ------------------------------------------------------------------------------------------------
# Distances
# ------------------------------------------------------------------------------------------------
def _as_feature_tensor(features, name):
    tensor = torch.as_tensor(features)
    if tensor.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D (num_items, feature_dim) array; got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        # Half precision loses too much for ranking near-equal distances.
        tensor = tensor.float()
    return tensor


def pairwise_distance(query, gallery, metric="euclidean", normalize=True, chunk_size=2048):
    """Query x gallery distance matrix (torch, on the features' device).

    ``euclidean`` is the *squared* Euclidean distance from the squared-norm expansion
    ||q||^2 + ||g||^2 - 2 q.g, clamped at 0 against rounding - the reference's distance (it calls
    the removed ``addmm_(1, -2, ...)`` overload; this uses the keyword form). No square root is
    taken: rankings are the same either way, and re-ranking then sees the reference's values.
    ``cosine`` is 1 - cosine similarity (features are always normalised for it). ``normalize``
    L2-normalises both sets first (the reference's TEST.FEAT_NORM 'on'); on normalised features
    squared Euclidean = 2 * cosine distance, so both metrics rank identically. Rows are computed
    ``chunk_size`` queries at a time so temporaries stay at one chunk.
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric must be one of {DISTANCE_METRICS}; got {metric!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    query = _as_feature_tensor(query, "query features")
    gallery = _as_feature_tensor(gallery, "gallery features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query and gallery features differ in dimension: {query.shape[1]} vs {gallery.shape[1]}"
        )
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    query = query.to(dtype)
    gallery = gallery.to(device=query.device, dtype=dtype)
    if normalize or metric == "cosine":
        query = torch.nn.functional.normalize(query, p=2, dim=1)
        gallery = torch.nn.functional.normalize(gallery, p=2, dim=1)
    distances = torch.empty(query.shape[0], gallery.shape[0], dtype=dtype, device=query.device)
    gallery_t = gallery.t()
    gallery_sq = gallery.pow(2).sum(dim=1)
    for start in range(0, query.shape[0], chunk_size):
        rows = query[start:start + chunk_size]
        out = distances[start:start + chunk_size]
        if metric == "euclidean":
            torch.add(rows.pow(2).sum(dim=1, keepdim=True), gallery_sq.unsqueeze(0), out=out)
            out.addmm_(rows, gallery_t, beta=1.0, alpha=-2.0)
            out.clamp_(min=0.0)
        else:
            torch.mm(rows, gallery_t, out=out)
            out.neg_().add_(1.0)
    return distances


# ------------------------------------------------------------------------------------------------
# Ranking metrics
# ------------------------------------------------------------------------------------------------
def _as_label_array(labels, name, length):
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must be a 1-D array of {length} labels; got shape {array.shape}")
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{name} must hold integer labels; got dtype {array.dtype}")


def same_pid_pairs(q_pids, g_pids, q_camids, g_camids):
    """All (query, gallery) pairs sharing a pid, sorted by query then gallery index.

    Returns (query_index, gallery_index, status) with status 1 = counted match, 2 = junk (same
    camera, dropped). Built by grouping the gallery by pid, so cost grows with the number of
    pairs, not with queries x gallery.
    """
    gallery_order = np.argsort(g_pids, kind="stable")
    unique_pids, group_start, group_size = np.unique(
        g_pids[gallery_order], return_index=True, return_counts=True
    )
    slot = np.clip(np.searchsorted(unique_pids, q_pids), 0, max(len(unique_pids) - 1, 0))
    found = (unique_pids[slot] == q_pids) if len(unique_pids) else np.zeros(len(q_pids), bool)
    counts = np.where(found, group_size[slot], 0)
    query_index = np.repeat(np.arange(len(q_pids)), counts)
    offset_in_group = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    gallery_index = gallery_order[np.repeat(group_start[slot], counts) + offset_in_group]
    junk = g_camids[gallery_index] == q_camids[query_index]
    status = np.where(junk, _STATUS_JUNK, _STATUS_MATCH).astype(np.uint32)
    return query_index, gallery_index, status


def _float_sort_keys(values, out):
    """Write uint32 keys that order like the float32 ``values`` (-0.0 equal to +0.0) into ``out``."""
    canonical = np.add(values, np.float32(0.0), dtype=np.float32)
    bits = canonical.view(np.int32)
    flip = np.right_shift(bits, 31)
    np.bitwise_or(flip, np.int32(-2 ** 31), out=flip)
    np.bitwise_xor(bits, flip, out=out.view(np.int32))


_KEY_POS_INF = int(np.array([np.inf], np.float32).view(np.uint32)[0] | np.uint32(2 ** 31))
_KEY_NEG_INF = int(~np.array([-np.inf], np.float32).view(np.uint32)[0])


def _ranked_status_packed(block, local_rows, gallery_index, status):
    """(row, position, status) of match/junk items in each stable-sorted float32 row."""
    num_rows, num_gallery = block.shape
    packed = np.empty((num_rows, num_gallery), dtype=np.uint64)
    words = packed.view(np.uint32).reshape(num_rows, num_gallery, 2)
    _float_sort_keys(block, words[..., _HIGH_WORD])
    low = words[..., _LOW_WORD]
    low[...] = np.left_shift(np.arange(num_gallery, dtype=np.uint32), 2)
    low[local_rows, gallery_index] |= status
    packed.sort(axis=1)
    lowest = words[:, 0, _HIGH_WORD]
    highest = words[:, -1, _HIGH_WORD]
    if np.any(lowest < _KEY_NEG_INF) or np.any(highest > _KEY_POS_INF):
        raise ValueError("distance matrix contains NaN")
    ranked = np.bitwise_and(low, np.uint32(3))
    rows, positions = np.nonzero(ranked)
    return rows, positions, ranked[rows, positions]


def _ranked_status_argsort(block, local_rows, gallery_index, status):
    """Same as ``_ranked_status_packed`` for any real dtype, through a stable argsort."""
    if block.dtype.kind == "f" and np.isnan(block).any():
        raise ValueError("distance matrix contains NaN")
    order = np.argsort(block, axis=1, kind="stable")
    marks = np.zeros(block.shape, dtype=np.uint8)
    marks[local_rows, gallery_index] = status
    ranked = np.take_along_axis(marks, order, axis=1)
    rows, positions = np.nonzero(ranked)
    return rows, positions, ranked[rows, positions]


def _row_stats(num_rows, rows, positions, status):
    """Per-row number of matches, AP, rank of the first and of the hardest match.

    Entries arrive sorted by (row, position). A match's rank among the kept gallery is its position
    minus the junk ranked before it in the same row; its precision is (matches so far) / rank.
    """
    is_junk = (status == _STATUS_JUNK).astype(np.int64)
    is_match = (status == _STATUS_MATCH).astype(np.int64)
    row_first = np.searchsorted(rows, rows, side="left")
    junk_before_excl = np.cumsum(is_junk) - is_junk
    junk_before = junk_before_excl - junk_before_excl[row_first]
    match_incl = np.cumsum(is_match)
    match_ordinal = match_incl - (match_incl - is_match)[row_first]
    keep = is_match.astype(bool)
    match_rows = rows[keep]
    kept_rank = (positions[keep] + 1 - junk_before[keep]).astype(np.float64)
    num_matches = np.bincount(match_rows, minlength=num_rows)
    precision_sum = np.bincount(match_rows, weights=match_ordinal[keep] / kept_rank, minlength=num_rows)
    first = np.searchsorted(match_rows, np.arange(num_rows), side="left")
    last = np.searchsorted(match_rows, np.arange(num_rows), side="right") - 1
    return num_matches, precision_sum / num_matches, kept_rank[first], kept_rank[last]


def _distance_rows(distmat, rows):
    if isinstance(distmat, torch.Tensor):
        block = distmat[torch.as_tensor(rows, device=distmat.device)].detach()
        if block.dtype == torch.bfloat16:
            block = block.float()
        return block.cpu().numpy()
    return distmat[rows]


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, chunk_size=256):
    """CMC, mAP and mINP of a query x gallery distance matrix (numpy or torch).

    Returns {"cmc": float64 array of max_rank (clipped to the gallery size, as the reference
    does), "mAP", "mINP", "num_valid_queries"}. Queries are processed ``chunk_size`` at a time, so
    memory is about 24 bytes x chunk_size x gallery size on top of the matrix; queries without any
    remaining match are skipped before sorting. Ties rank by gallery index (see module docstring).
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer; got {max_rank!r}")
    if not isinstance(distmat, torch.Tensor):
        distmat = np.asarray(distmat)
        if distmat.dtype.kind not in "iuf":
            raise ValueError(f"distance matrix must be numeric; got dtype {distmat.dtype}")
    if distmat.ndim != 2:
        raise ValueError(
            f"distance matrix must be 2-D (num_query, num_gallery); got shape {tuple(distmat.shape)}"
        )
    num_query, num_gallery = distmat.shape
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"distance matrix is empty: shape {tuple(distmat.shape)}")
    q_pids = _as_label_array(q_pids, "q_pids", num_query)
    q_camids = _as_label_array(q_camids, "q_camids", num_query)
    g_pids = _as_label_array(g_pids, "g_pids", num_gallery)
    g_camids = _as_label_array(g_camids, "g_camids", num_gallery)
    max_rank = min(max_rank, num_gallery)

    pair_query, pair_gallery, pair_status = same_pid_pairs(q_pids, g_pids, q_camids, g_camids)
    valid = np.zeros(num_query, dtype=bool)
    valid[pair_query[pair_status == _STATUS_MATCH]] = True
    valid_queries = np.flatnonzero(valid)
    if len(valid_queries) == 0:
        raise ValueError(
            "no query has a match in the gallery outside its own camera: check that query and "
            "gallery pids/camids belong to the same data set and split"
        )
    pair_keep = valid[pair_query]
    pair_query, pair_gallery, pair_status = (
        part[pair_keep] for part in (pair_query, pair_gallery, pair_status)
    )
    packed_path = num_gallery < _MAX_GALLERY_FOR_KEYS and (
        distmat.dtype in (torch.float32, torch.float16, torch.bfloat16)
        if isinstance(distmat, torch.Tensor) else distmat.dtype in (np.float32, np.float16)
    )
    ranked_status = _ranked_status_packed if packed_path else _ranked_status_argsort

    num_valid = len(valid_queries)
    first_rank_hist = np.zeros(max_rank + 2, dtype=np.int64)
    # Per-query values are kept so the means do not depend on how the queries were chunked.
    average_precision = np.empty(num_valid)
    inverse_negative_penalty = np.empty(num_valid)
    for start in range(0, len(valid_queries), chunk_size):
        rows = valid_queries[start:start + chunk_size]
        lo, hi = np.searchsorted(pair_query, [rows[0], rows[-1] + 1])
        local_rows = np.searchsorted(rows, pair_query[lo:hi])
        block = _distance_rows(distmat, rows)
        ranked = ranked_status(block, local_rows, pair_gallery[lo:hi], pair_status[lo:hi])
        num_matches, ap, first_rank, hardest_rank = _row_stats(len(rows), *ranked)
        average_precision[start:start + len(rows)] = ap
        inverse_negative_penalty[start:start + len(rows)] = num_matches / hardest_rank
        first_rank_hist += np.bincount(
            np.minimum(first_rank.astype(np.int64), max_rank + 1), minlength=max_rank + 2
        )
    cmc = np.cumsum(first_rank_hist)[1:max_rank + 1] / num_valid
    return {
        "cmc": cmc,
        "mAP": float(average_precision.mean()),
        "mINP": float(inverse_negative_penalty.mean()),
        "num_valid_queries": num_valid,
    }


# ------------------------------------------------------------------------------------------------
# Whole evaluations
# ------------------------------------------------------------------------------------------------
def evaluate_reid(query_feats, gallery_feats, q_pids, g_pids, q_camids, g_camids, metric="euclidean",
                  feat_norm=True, rerank=False, max_rank=50):
    """Distances, optional k-reciprocal re-ranking, then Rank-1/5/10, mAP, mINP (floats in [0, 1]).

    Re-ranking runs on the same distance as the ranking (squared Euclidean for 'euclidean', as in
    the reference AGW code) with the paper's k1=20, k2=6, lambda=0.3.
    """
    distmat = pairwise_distance(query_feats, gallery_feats, metric=metric, normalize=feat_norm)
    if rerank:
        query_query = pairwise_distance(query_feats, query_feats, metric=metric, normalize=feat_norm)
        gallery_gallery = pairwise_distance(gallery_feats, gallery_feats, metric=metric, normalize=feat_norm)
        distmat = re_ranking(distmat, query_query, gallery_gallery)
    scores = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    cmc = scores["cmc"]
    result = {f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10)}
    result.update(mAP=float(scores["mAP"]), mINP=float(scores["mINP"]), cmc=cmc,
                  num_valid_queries=scores["num_valid_queries"])
    return result


def evaluate_protection_modes(original_feats, protected_feats, pids, camids, num_query, **kwargs):
    """Scores of every mode of ``PROTECTION_MODES``; rows are queries then gallery.

    The first ``num_query`` rows of both feature sets (and of pids/camids) are the queries, the
    rest the gallery. ``kwargs`` go to ``evaluate_reid`` (metric, feat_norm, rerank, max_rank).
    """
    sources = {
        "original": _as_feature_tensor(original_feats, "original features"),
        "protected": _as_feature_tensor(protected_feats, "protected features"),
    }
    num_items = sources["original"].shape[0]
    if sources["protected"].shape != sources["original"].shape:
        raise ValueError(
            f"original and protected features differ in shape: {tuple(sources['original'].shape)} "
            f"vs {tuple(sources['protected'].shape)}"
        )
    if not isinstance(num_query, (int, np.integer)) or not 0 < num_query < num_items:
        raise ValueError(f"num_query must be an integer in [1, {num_items - 1}]; got {num_query!r}")
    pids = _as_label_array(pids, "pids", num_items)
    camids = _as_label_array(camids, "camids", num_items)
    results = {}
    for mode, (query_source, gallery_source) in PROTECTION_MODES.items():
        results[mode] = evaluate_reid(
            sources[query_source][:num_query], sources[gallery_source][num_query:],
            pids[:num_query], pids[num_query:], camids[:num_query], camids[num_query:], **kwargs,
        )
    return results


def describe_mode(mode):
    """'encry2clean' -> 'protected query vs original gallery' (from PROTECTION_MODES)."""
    query_source, gallery_source = PROTECTION_MODES[mode]
    return f"{query_source} query vs {gallery_source} gallery"


def format_results_table(results):
    """Markdown table of mode -> evaluate_reid result, in percent with one decimal.

    Directly under the table, after a blank line (so Markdown ends the table there), one line per
    mode of ``PROTECTION_MODES`` in the table says which features are the query and which the
    gallery, e.g. ``- encry2clean: protected query vs original gallery``.
    """
    columns = (
        ("Rank-1", "rank1"), ("Rank-5", "rank5"), ("Rank-10", "rank10"), ("mAP", "mAP"), ("mINP", "mINP"),
    )
    lines = [
        "| mode | " + " | ".join(title for title, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for mode, scores in results.items():
        missing = [key for _, key in columns if key not in scores]
        if missing:
            raise ValueError(f"results of mode {mode!r} lack {missing}")
        lines.append(f"| {mode} | " + " | ".join(f"{100.0 * scores[key]:.1f}" for _, key in columns) + " |")
    known = [mode for mode in results if mode in PROTECTION_MODES]
    if known:
        lines.append("")
        lines += [f"- {mode}: {describe_mode(mode)}" for mode in known]
    return "\n".join(lines)
