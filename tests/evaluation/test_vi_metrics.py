"""SYSU-MM01 / RegDB scoring rules on hand-built distance matrices, and the trial averaging."""
from types import SimpleNamespace

import numpy as np
import pytest

from data.datasets.visible_infrared import INFRARED, VISIBLE, Trial, VIImageRecord
from evaluation.cross_modality import distance_matrix, eval_regdb, eval_sysu, score_protocol, score_protocols

# Gallery: pids and SYSU camera numbers. Query A (pid 1, cam 3) ranks g0..g4 in order and loses g0
# (cam 2); query B (pid 2, cam 6) ranks pids 1, 1, 3, 2, 2; query C (pid 4) has no match.
G_PIDS = np.array([1, 2, 1, 3, 2])
G_CAMS = np.array([2, 1, 1, 4, 5])
Q_PIDS = np.array([1, 2, 4])
Q_CAMS = np.array([3, 6, 3])
DISTMAT = np.array([
    [0.1, 0.2, 0.3, 0.4, 0.5],
    [0.1, 0.4, 0.2, 0.3, 0.5],
    [0.5, 0.4, 0.3, 0.2, 0.1],
])


def test_eval_sysu_by_hand():
    scores = eval_sysu(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    # A: kept ranked pids 2, 1, 3, 2 -> de-duplicated 2, 1, 3: rank 2; AP 1/2; mINP 1/2.
    # B: ranked pids 1, 1, 3, 2, 2 -> de-duplicated 1, 3, 2: rank 3 (4 without de-duplication);
    #    AP (1/4 + 2/5) / 2 = 0.325; mINP 2/5. C is skipped.
    assert scores.cmc.shape == (20,)
    np.testing.assert_allclose(scores.cmc[:4], [0.0, 0.5, 1.0, 1.0])
    assert scores.cmc[19] == 1.0
    assert scores.mAP == pytest.approx((0.5 + 0.325) / 2)
    assert scores.mINP == pytest.approx((0.5 + 0.4) / 2)
    assert scores.num_valid_queries == 2
    assert scores.short_list  # three identities per list, fewer than 20 ranks
    assert not eval_sysu(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=3).short_list


def test_cam3_rule_only_for_cam3_queries():
    # Query A from camera 6 keeps g0: ranked 1, 2, 1, 3, 2 -> rank 1, AP (1 + 2/3) / 2, mINP 2/3.
    scores = eval_sysu(DISTMAT[:1], Q_PIDS[:1], G_PIDS, [6], G_CAMS)
    assert scores.cmc[0] == 1.0
    assert scores.mAP == pytest.approx((1 + 2 / 3) / 2) and scores.mINP == pytest.approx(2 / 3)
    # Camera 3 does not drop camera 1, 4 or 5 images.
    scores = eval_sysu(DISTMAT[:1], Q_PIDS[:1], G_PIDS, [3], [1, 1, 1, 4, 5])
    assert scores.cmc[0] == 1.0


def test_eval_regdb_by_hand():
    scores = eval_regdb(DISTMAT, Q_PIDS, G_PIDS)
    # A: rank 1, AP (1 + 2/3) / 2, mINP 2/3; B: rank 4, AP 0.325, mINP 0.4; C skipped.
    np.testing.assert_allclose(scores.cmc[:5], [0.5, 0.5, 0.5, 1.0, 1.0])
    assert scores.cmc[19] == 1.0 and scores.short_list  # 5 gallery images: ranks 6..20 repeat rank 5
    assert scores.mAP == pytest.approx(((1 + 2 / 3) / 2 + 0.325) / 2)
    assert scores.mINP == pytest.approx((2 / 3 + 0.4) / 2)
    assert not eval_regdb(DISTMAT, Q_PIDS, G_PIDS, max_rank=5).short_list


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a match"):
        eval_regdb(DISTMAT, [7, 8, 9], G_PIDS)


def loop_scores(distmat, q_pids, g_pids, q_cams, g_cams, dedup, max_rank=20):
    """The rules written as one loop per query, as the reference does, with the short-list rule."""
    cmcs, aps, inps = [], [], []
    for row, pid, cam in zip(distmat, q_pids, q_cams):
        order = np.argsort(row, kind="stable")
        keep = ~((cam == 3) & (g_cams[order] == 2)) if dedup else np.ones(len(order), bool)
        ranked = g_pids[order][keep]
        hits = (ranked == pid).astype(int)
        if not hits.any():
            continue
        listed = list(dict.fromkeys(ranked)) if dedup else list(ranked)
        first = listed.index(pid) + 1
        cmcs.append([1.0 if first <= k else 0.0 for k in range(1, max_rank + 1)])
        positions = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        inps.append(len(positions) / positions[-1])
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps)


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_equals_loop(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g, num_ids = 30, 60, 12
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    distmat = rng.standard_normal((num_q, num_g))
    for scores, dedup in ((eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams), True),
                          (eval_regdb(distmat, q_pids, g_pids), False)):
        cmc, mean_ap, mean_inp = loop_scores(distmat, q_pids, g_pids, q_cams, g_cams, dedup)
        np.testing.assert_allclose(scores.cmc, cmc)
        assert scores.mAP == pytest.approx(mean_ap) and scores.mINP == pytest.approx(mean_inp)


def test_distance_is_minus_cosine():
    query, gallery = np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(distance_matrix(query, gallery), [[-0.6, -0.8]])


def record(name, pid, camera):
    modality = INFRARED if camera in (3, 6) else VISIBLE
    return VIImageRecord(f"/d/{name}.jpg", pid, camera - 1, modality)


def test_score_protocol_per_trial_and_mean():
    query = (record("q", 1, 3),)
    same_room, far, other = record("g_cam2", 1, 2), record("g_cam1", 1, 1), record("h", 2, 1)
    stranger = record("s", 2, 4)
    trials = [Trial(0, query, (same_room, far, other)), Trial(1, query, (far, stranger))]
    features = {"/d/q.jpg": [1.0, 0.0], "/d/g_cam2.jpg": [1.0, 0.0], "/d/h.jpg": [1.0, 0.1],
                "/d/g_cam1.jpg": [0.5, 1.0], "/d/s.jpg": [0.0, 1.0]}
    result = score_protocol("sysu", trials, features)
    # Trial 0: the cam2 twin is dropped (cam3 query), so identity 2 comes first: rank 2. Trial 1: rank 1.
    first, second = result["trials"]
    assert first == {"trial": 0, "rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0, "mAP": 0.5,
                     "mINP": 0.5, "num_query": 1, "num_gallery": 3, "num_valid_queries": 1, "short_list": True}
    assert (second["trial"], second["rank1"], second["mAP"], second["mINP"]) == (1, 1.0, 1.0, 1.0)
    assert result["mean"] == {"rank1": 0.5, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0, "mAP": 0.75, "mINP": 0.75,
                              "short_list": True}
    # RegDB's rule keeps the twin; features as (paths, array); a separate gallery mapping.
    paths = list(features)
    dataset = SimpleNamespace(metric="regdb", protocols={"visible_to_thermal": trials})
    scored = score_protocols(dataset, (paths, np.array([features[p] for p in paths])), features)
    assert list(scored) == ["visible_to_thermal"]
    assert scored["visible_to_thermal"]["trials"][0]["rank1"] == 1.0
    with pytest.raises(KeyError, match="no gallery feature for 1 image"):
        score_protocol("sysu", trials, features, {"/d/h.jpg": [1.0, 0.0], "/d/g_cam1.jpg": [1.0, 0.0]})
