import numpy as np
import pytest
import torch

import evaluation.reid as reid
from evaluation.reid import (
    PROTECTION_MODES,
    evaluate_protection_modes,
    evaluate_rank,
    evaluate_reid,
    format_results_table,
    pairwise_distance,
)


def loop_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Per-query reference protocol with a stable argsort (ties by gallery index)."""
    max_rank = min(max_rank, distmat.shape[1])
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        keep = ~(same_pid & (g_camids[order] == q_camids[i]))
        hits = same_pid[keep].astype(np.int64)
        if not hits.any():
            continue
        found = hits.cumsum()
        positions = np.flatnonzero(hits)
        aps.append(np.sum(found[positions] / (positions + 1.0)) / hits.sum())
        inps.append(found[positions[-1]] / (positions[-1] + 1.0))
        cmc = np.minimum(found, 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)))])[:max_rank]
        cmcs.append(cmc)
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps), len(aps)


def random_problem(rng, num_query, num_gallery, num_pids=8, num_cams=3, levels=6):
    """Quantised distances (many ties), distractors (pid 0), same-camera matches, unmatched queries."""
    distmat = rng.integers(0, levels, (num_query, num_gallery)).astype(np.float32) / levels
    q_pids = rng.integers(1, num_pids + 3, num_query)  # pids above num_pids never occur in the gallery
    g_pids = rng.integers(0, num_pids + 1, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    return distmat, q_pids, g_pids, q_camids, g_camids


def assert_same_scores(result, expected):
    cmc, mean_ap, mean_inp, num_valid = expected
    np.testing.assert_allclose(result["cmc"], cmc, rtol=0, atol=1e-12)
    assert result["mAP"] == pytest.approx(mean_ap, abs=1e-12)
    assert result["mINP"] == pytest.approx(mean_inp, abs=1e-12)
    assert result["num_valid_queries"] == num_valid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_per_query_loop_with_ties(seed, dtype):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, num_query=int(rng.integers(5, 40)), num_gallery=int(rng.integers(20, 90)))
    distmat = problem[0].astype(dtype)
    expected = loop_rank(distmat, *problem[1:], max_rank=15)
    assert expected[3] < distmat.shape[0], "the problem should contain queries without a match"
    result = evaluate_rank(distmat, *problem[1:], max_rank=15, chunk_size=int(rng.integers(1, 9)))
    assert_same_scores(result, expected)


def test_float16_torch_and_integer_inputs_agree_with_loop():
    rng = np.random.default_rng(11)
    distmat, *labels = random_problem(rng, 30, 70)
    expected = loop_rank(distmat, *labels, max_rank=20)
    torch_labels = [torch.as_tensor(x) for x in labels]
    assert_same_scores(evaluate_rank(torch.from_numpy(distmat).half(), *torch_labels, max_rank=20), expected)
    assert_same_scores(evaluate_rank(torch.from_numpy(distmat), *labels, max_rank=20), expected)
    assert_same_scores(evaluate_rank((distmat * 6).astype(np.int64), *labels, max_rank=20), expected)


def test_negative_and_signed_zero_distances_order_like_stable_argsort():
    rng = np.random.default_rng(3)
    distmat, *labels = random_problem(rng, 25, 60)
    distmat = distmat - 0.5
    distmat[:, ::7] = -0.0
    distmat[:, 3::7] = 0.0
    distmat[:, 5] = -np.inf
    distmat[:, 6] = np.inf
    assert_same_scores(evaluate_rank(distmat, *labels, max_rank=10), loop_rank(distmat, *labels, max_rank=10))


def test_hand_computed_single_query():
    # Query pid 1 camera 1. Sorted by distance: g1 (pid 1, camera 1: junk, dropped), g2 (match),
    # g0, g3, g4 (match), g5 (distractor pid 0). Matches at kept ranks 1 and 4.
    distmat = np.array([[0.3, 0.05, 0.1, 0.4, 0.5, 0.6]], dtype=np.float32)
    result = evaluate_rank(distmat, [1], [2, 1, 1, 3, 1, 0], [1], [1, 1, 2, 2, 2, 1], max_rank=3)
    assert result["mAP"] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert result["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_array_equal(result["cmc"], [1.0, 1.0, 1.0])
    assert result["num_valid_queries"] == 1


def test_ties_rank_by_gallery_index():
    # Equal distances: the non-match at gallery index 0 ranks before the match at index 1.
    result = evaluate_rank(np.array([[0.2, 0.2, 0.9]]), [5], [7, 5, 5], [0], [1, 1, 1])
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(result["cmc"], [0.0, 1.0, 1.0])  # max_rank clipped to 3 gallery items
    swapped = evaluate_rank(np.array([[0.2, 0.2, 0.9]]), [5], [5, 7, 5], [0], [1, 1, 1])
    np.testing.assert_array_equal(swapped["cmc"], [1.0, 1.0, 1.0])


def test_chunk_sizes_give_identical_results():
    rng = np.random.default_rng(5)
    distmat, *labels = random_problem(rng, 37, 80, levels=4)
    results = [evaluate_rank(distmat, *labels, chunk_size=size) for size in (1, 3, 16, 37, 1000)]
    for other in results[1:]:
        np.testing.assert_array_equal(other["cmc"], results[0]["cmc"])
        assert other["mAP"] == results[0]["mAP"]
        assert other["mINP"] == results[0]["mINP"]


def test_bad_inputs_raise_clear_errors():
    distmat = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="no query has a match"):
        evaluate_rank(distmat, [1, 2], [3, 3, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="no query has a match"):
        evaluate_rank(distmat, [1, 2], [1, 2, 3], [0, 0], [0, 0, 1])  # matches only in the same camera
    with pytest.raises(ValueError, match="g_pids must be a 1-D array of 3"):
        evaluate_rank(distmat, [1, 2], [1, 2], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.array([[np.nan, 1.0, 2.0]], np.float32), [1], [1, 2, 3], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.array([[np.nan, 1.0, 2.0]]), [1], [1, 2, 3], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_rank(np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_rank(distmat, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], chunk_size=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distance(np.ones((2, 4)), np.ones((3, 4)), metric="manhattan")
    with pytest.raises(ValueError, match="differ in dimension"):
        pairwise_distance(np.ones((2, 4)), np.ones((3, 5)))


def test_pairwise_distance_values_and_chunks():
    torch.manual_seed(0)
    query, gallery = torch.randn(7, 16, dtype=torch.float64), torch.randn(11, 16, dtype=torch.float64)
    raw = pairwise_distance(query, gallery, normalize=False, chunk_size=3)
    torch.testing.assert_close(raw, torch.cdist(query, gallery) ** 2)
    qn, gn = torch.nn.functional.normalize(query, dim=1), torch.nn.functional.normalize(gallery, dim=1)
    normalized = pairwise_distance(query, gallery, chunk_size=2)
    torch.testing.assert_close(normalized, torch.cdist(qn, gn) ** 2)
    cosine = pairwise_distance(query.numpy(), gallery.numpy(), metric="cosine", normalize=False)
    torch.testing.assert_close(cosine, 1 - qn @ gn.t())
    torch.testing.assert_close(normalized, 2 * cosine)
    assert pairwise_distance(query.half(), gallery.half()).dtype == torch.float32


def test_rounding_below_zero_is_clamped_to_exactly_zero():
    features = torch.nn.functional.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    squared = features.pow(2).sum(dim=1)
    unclamped = (squared[:, None] + squared[None, :]).addmm(features, features.t(), beta=1.0, alpha=-2.0)
    assert (unclamped < 0).sum() > 0  # float32 rounding of ||a||^2 + ||b||^2 - 2 a.b, e.g. a = b
    same = pairwise_distance(features, features, normalize=False)
    assert torch.equal(same, unclamped.clamp(min=0.0))
    assert same.min().item() == 0.0


def test_cosine_and_euclidean_rank_identically_on_normalized_features():
    rng = np.random.default_rng(2)
    query, gallery = rng.normal(size=(12, 32)), rng.normal(size=(40, 32))
    q_pids, g_pids = rng.integers(1, 6, 12), rng.integers(1, 6, 40)
    q_camids, g_camids = rng.integers(0, 2, 12), rng.integers(0, 2, 40)
    euclidean = pairwise_distance(query, gallery, metric="euclidean").numpy()
    cosine = pairwise_distance(query, gallery, metric="cosine").numpy()
    np.testing.assert_array_equal(np.argsort(euclidean, axis=1, kind="stable"),
                                  np.argsort(cosine, axis=1, kind="stable"))
    labels = (q_pids, g_pids, q_camids, g_camids)
    by_euclidean = evaluate_reid(query, gallery, *labels, metric="euclidean")
    by_cosine = evaluate_reid(query, gallery, *labels, metric="cosine")
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries"):
        assert by_euclidean[key] == by_cosine[key]


def test_evaluate_reid_keys_and_ranges():
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(5, 8))
    g_pids = np.repeat(np.arange(1, 6), 4)
    gallery = centers[g_pids - 1] + 0.05 * rng.normal(size=(20, 8))
    q_pids = np.arange(1, 6)
    query = centers[q_pids - 1] + 0.05 * rng.normal(size=(5, 8))
    result = evaluate_reid(query, gallery, q_pids, g_pids, np.zeros(5, int), np.ones(20, int), max_rank=8)
    assert set(result) == {"rank1", "rank5", "rank10", "mAP", "mINP", "cmc", "num_valid_queries"}
    assert result["rank1"] == result["mAP"] == result["mINP"] == 1.0  # well-separated clusters
    assert result["cmc"].shape == (8,) and result["num_valid_queries"] == 5
    assert all(isinstance(result[k], float) for k in ("rank1", "rank5", "rank10", "mAP", "mINP"))


def identity_coded_features(pids, code_of_pid):
    return torch.eye(8, dtype=torch.float64)[code_of_pid[pids]] + 0.01 * torch.arange(len(pids))[:, None]


def test_protection_modes_pick_the_right_rows(monkeypatch):
    pids = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 3])
    camids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    original = identity_coded_features(pids, torch.tensor([0, 1, 2, 3]))
    # Protected features keep identities apart among themselves but code them differently.
    protected = identity_coded_features(pids, torch.tensor([0, 2, 3, 1]))
    results = evaluate_protection_modes(original, protected, pids, camids, num_query=3)
    assert list(results) == list(PROTECTION_MODES) == ["encry2encry", "clean2clean", "encry2clean", "clean2encry"]
    assert results["encry2encry"]["rank1"] == results["clean2clean"]["rank1"] == 1.0
    assert results["encry2clean"]["rank1"] == results["clean2encry"]["rank1"] == 0.0

    calls = []
    monkeypatch.setattr(reid, "evaluate_reid", lambda qf, gf, *labels, **kw: calls.append((qf, gf, labels, kw)) or {})
    evaluate_protection_modes(original, protected, pids, camids, num_query=3, metric="cosine")
    sources = {"original": original, "protected": protected}
    for (query, gallery, labels, kwargs), (query_source, gallery_source) in zip(calls, PROTECTION_MODES.values()):
        torch.testing.assert_close(query, sources[query_source][:3])
        torch.testing.assert_close(gallery, sources[gallery_source][3:])
        np.testing.assert_array_equal(labels[0], [1, 2, 3])
        np.testing.assert_array_equal(labels[3], [1, 1, 1, 2, 2, 2])
        assert kwargs == {"metric": "cosine"}
    with pytest.raises(ValueError, match="num_query must be an integer in"):
        evaluate_protection_modes(original, protected, pids, camids, num_query=9)


def test_results_table_text():
    scores = {"rank1": 0.9512, "rank5": 0.98, "rank10": 0.99, "mAP": 0.8766, "mINP": 0.5}
    table = format_results_table({"encry2encry": scores, "clean2clean": dict(scores, rank1=1.0)})
    assert table == (
        "| mode | Rank-1 | Rank-5 | Rank-10 | mAP | mINP |\n"
        "|---|---|---|---|---|---|\n"
        "| encry2encry | 95.1 | 98.0 | 99.0 | 87.7 | 50.0 |\n"
        "| clean2clean | 100.0 | 98.0 | 99.0 | 87.7 | 50.0 |\n"
        "\n"
        "- encry2encry: protected query vs protected gallery\n"
        "- clean2clean: original query vs original gallery"
    )
    assert format_results_table({"other": scores}) == (
        "| mode | Rank-1 | Rank-5 | Rank-10 | mAP | mINP |\n"
        "|---|---|---|---|---|---|\n"
        "| other | 95.1 | 98.0 | 99.0 | 87.7 | 50.0 |"
    )
    with pytest.raises(ValueError, match="lack \\['mINP'\\]"):
        format_results_table({"x": {k: v for k, v in scores.items() if k != "mINP"}})


# ------------------------------------------------------------------------------------------------
# An asymmetric problem: every mode has its own, hand-computed scores.
# ------------------------------------------------------------------------------------------------
# Features are 2-D vectors at an angle (degrees) with arbitrary lengths; on L2-normalised features
# the squared Euclidean distance grows with the angle between them, so rankings follow angles.
# Rows: query q0 (pid 1), q1 (pid 2) in camera 0; gallery g0 (pid 1), g1 (pid 2), g2 (pid 1),
# g3 (pid 2) in camera 1.
ORIGINAL_ANGLES = [60, 195, 10, 100, 30, 120]
PROTECTED_ANGLES = [22, 108, 205, 40, 300, 112]
ORIGINAL_LENGTHS = [1.0, 4.0, 0.5, 2.0, 3.0, 0.25]  # lengths matter unless features are normalised
PROTECTED_LENGTHS = [2.0, 0.5, 1.0, 3.0, 0.25, 4.0]
ASYMMETRIC_PIDS = [1, 2, 1, 2, 1, 2]
ASYMMETRIC_CAMIDS = [0, 0, 1, 1, 1, 1]
# Angular distances, gallery ranked nearest first (m = same pid):
# encry2encry  q0 22:  g1 18, g2 82 m, g3 90, g0 177 m -> AP (1/2 + 2/4)/2 = 1/2, INP 2/4, R1 0
#              q1 108: g3 4 m, g1 68 m, g0 97, g2 168   -> AP 1, INP 1, R1 1
# clean2clean  q0 60:  g2 30 m, g1 40, g0 50 m, g3 60   -> AP (1 + 2/3)/2 = 5/6, INP 2/3, R1 1
#              q1 195: g3 75 m, g1 95 m, g2 165, g0 175 -> AP 1, INP 1, R1 1
# encry2clean  q0 22:  g2 8 m, g0 12 m, g1 78, g3 98    -> AP 1, INP 1, R1 1
#              q1 108: g1 8 m, g3 12 m, g2 78, g0 98    -> AP 1, INP 1, R1 1
# clean2encry  q0 60:  g1 20, g3 52, g2 120 m, g0 145 m -> AP (1/3 + 2/4)/2 = 5/12, INP 2/4, R1 0
#              q1 195: g0 10, g3 83 m, g2 105, g1 155 m -> AP (1/2 + 2/4)/2 = 1/2, INP 2/4, R1 0
EXPECTED_MODE_SCORES = {  # (CMC over the 4 gallery ranks, mAP, mINP)
    "encry2encry": ([0.5, 1.0, 1.0, 1.0], 0.75, 0.75),
    "clean2clean": ([1.0, 1.0, 1.0, 1.0], 11 / 12, 5 / 6),
    "encry2clean": ([1.0, 1.0, 1.0, 1.0], 1.0, 1.0),
    "clean2encry": ([0.0, 0.5, 1.0, 1.0], 11 / 24, 0.5),
}


def angle_features(angles, lengths):
    radians = np.deg2rad(np.asarray(angles, dtype=np.float64))
    return torch.tensor(np.stack([np.cos(radians), np.sin(radians)], axis=1) * np.asarray(lengths)[:, None])


@pytest.mark.parametrize("metric_options", [{}, {"metric": "cosine"}, {"metric": "euclidean", "feat_norm": True}],
                         ids=["defaults", "cosine", "euclidean"])
def test_asymmetric_modes_have_their_own_scores(metric_options):
    original = angle_features(ORIGINAL_ANGLES, ORIGINAL_LENGTHS)
    protected = angle_features(PROTECTED_ANGLES, PROTECTED_LENGTHS)
    results = evaluate_protection_modes(original, protected, torch.tensor(ASYMMETRIC_PIDS),
                                        torch.tensor(ASYMMETRIC_CAMIDS), num_query=2, **metric_options)
    assert list(results) == ["encry2encry", "clean2clean", "encry2clean", "clean2encry"]
    for mode, (cmc, mean_ap, mean_inp) in EXPECTED_MODE_SCORES.items():
        scores = results[mode]
        np.testing.assert_array_equal(scores["cmc"], cmc)  # max_rank clipped to the 4 gallery items
        assert scores["rank1"] == cmc[0], mode
        assert scores["mAP"] == pytest.approx(mean_ap, abs=1e-12), mode
        assert scores["mINP"] == pytest.approx(mean_inp, abs=1e-12), mode
        assert scores["rank5"] == scores["rank10"] == 1.0 and scores["num_valid_queries"] == 2, mode
    table = format_results_table(results)
    assert table.splitlines()[2:] == [
        "| encry2encry | 50.0 | 100.0 | 100.0 | 75.0 | 75.0 |",
        "| clean2clean | 100.0 | 100.0 | 100.0 | 91.7 | 83.3 |",
        "| encry2clean | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |",
        "| clean2encry | 0.0 | 100.0 | 100.0 | 45.8 | 50.0 |",
        "",
        "- encry2encry: protected query vs protected gallery",
        "- clean2clean: original query vs original gallery",
        "- encry2clean: protected query vs original gallery",
        "- clean2encry: original query vs protected gallery",
    ]


def test_asymmetric_modes_one_direction_at_a_time():
    """evaluate_reid on the raw pieces: protected queries find the original gallery, not the reverse."""
    original = angle_features(ORIGINAL_ANGLES, ORIGINAL_LENGTHS)
    protected = angle_features(PROTECTED_ANGLES, PROTECTED_LENGTHS)
    labels = (ASYMMETRIC_PIDS[:2], ASYMMETRIC_PIDS[2:], ASYMMETRIC_CAMIDS[:2], ASYMMETRIC_CAMIDS[2:])
    protected_query = evaluate_reid(protected[:2], original[2:], *labels)
    original_query = evaluate_reid(original[:2], protected[2:], *labels)
    assert (protected_query["rank1"], protected_query["mAP"], protected_query["mINP"]) == (1.0, 1.0, 1.0)
    assert original_query["rank1"] == 0.0
    assert original_query["mAP"] == pytest.approx(11 / 24, abs=1e-12)
    assert original_query["mINP"] == pytest.approx(0.5, abs=1e-12)
    # Without normalisation the lengths reorder the gallery: the reference normalises (FEAT_NORM on).
    raw = evaluate_reid(original[:2], protected[2:], *labels, feat_norm=False)
    assert (raw["rank1"], raw["mAP"], raw["mINP"]) == pytest.approx((0.5, 17 / 24, 0.75), abs=1e-12)
