"""Identity leakage: can recovered (or protected) query images find their person in the ORIGINAL gallery?

Rank-1 and mAP come from ``evaluate_reid`` with the Market-1501 protocol. Beside them stands the
chance level: the expected Rank-1 and AP of a uniformly random ranking, computed exactly per query
from its number of counted matches m and of ranked gallery entries n (same-pid same-camera entries
are dropped, as in ``evaluate_rank``): E[Rank-1] = m / n and
E[AP] = (H_n + (m - 1) / (n - 1) * (n - H_n)) / n, with H_n the n-th harmonic number
(Bestgen 2015), averaged over the queries that have a match.
"""
import numpy as np
import torch

from .reid import _STATUS_JUNK, _STATUS_MATCH, _as_label_array, evaluate_reid, same_pid_pairs

LEAKAGE_METRICS = ("rank1", "mAP")


def expected_random_ap(matches, ranked):
    """Exact expected average precision of a random ranking of ``ranked`` items, ``matches`` relevant."""
    matches = np.asarray(matches, dtype=np.float64)
    ranked = np.asarray(ranked, dtype=np.float64)
    harmonic = np.array([np.sum(1.0 / np.arange(1, int(n) + 1)) for n in ranked.ravel()]).reshape(ranked.shape)
    spread = np.where(ranked > 1, (matches - 1) / np.maximum(ranked - 1, 1), 0.0)
    return (harmonic + spread * (ranked - harmonic)) / ranked


def chance_level(q_pids, g_pids, q_camids, g_camids):
    """{'rank1', 'mAP', 'how'}: expected scores of a random ranking, averaged over queries with a match."""
    q_pids = _as_label_array(q_pids, "q_pids", len(q_pids))
    g_pids = _as_label_array(g_pids, "g_pids", len(g_pids))
    q_camids = _as_label_array(q_camids, "q_camids", len(q_pids))
    g_camids = _as_label_array(g_camids, "g_camids", len(g_pids))
    query, _, status = same_pid_pairs(q_pids, g_pids, q_camids, g_camids)
    matches = np.bincount(query[status == _STATUS_MATCH], minlength=len(q_pids))
    junk = np.bincount(query[status == _STATUS_JUNK], minlength=len(q_pids))
    valid = matches > 0
    if not valid.any():
        raise ValueError("no query has a match in the gallery outside its own camera")
    ranked = len(g_pids) - junk[valid]
    return {"rank1": float(np.mean(matches[valid] / ranked)),
            "mAP": float(np.mean(expected_random_ap(matches[valid], ranked))),
            "how": "exact"}


def identity_leakage(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, **kwargs):
    """{'rank1', 'mAP'} of query features (recovered or protected images) against an original gallery.

    ``kwargs`` go to ``evaluate_reid`` (metric, feat_norm, rerank).
    """
    scores = evaluate_reid(torch.as_tensor(query_features), torch.as_tensor(gallery_features),
                           q_pids, g_pids, q_camids, g_camids, **kwargs)
    return {"rank1": scores["rank1"], "mAP": scores["mAP"]}
