import inspect

import numpy as np
import pytest
import torch

from evaluation.reid import evaluate_rank, evaluate_reid, pairwise_distance
from evaluation.rerank import re_ranking, stable_smallest


def loop_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """Row-by-row k-reciprocal re-ranking in float64, as the paper and reference describe it."""
    num_query = q_g.shape[0]
    joint = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    normalized = (joint / joint.max(axis=0)).T
    size = len(normalized)
    ranked = np.argsort(normalized, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = ranked[i, :k + 1]
        return np.array([j for j in forward if i in ranked[j, :k + 1]], dtype=np.int64)

    encoding = np.zeros((size, size))
    for i in range(size):
        own = reciprocal(i, k1)
        expanded = list(own)
        for candidate in own:
            theirs = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(theirs, own)) > 2 / 3 * len(theirs):
                expanded.extend(theirs)
        expanded = np.unique(expanded)
        weight = np.exp(-normalized[i, expanded])
        encoding[i, expanded] = weight / weight.sum()
    if k2 != 1:
        encoding = np.stack([encoding[ranked[i, :k2]].mean(axis=0) for i in range(size)])
    final = np.empty(q_g.shape)
    for i in range(num_query):
        for g in range(q_g.shape[1]):
            overlap = np.minimum(encoding[i], encoding[num_query + g]).sum()
            jaccard = 1 - overlap / (2 - overlap)
            final[i, g] = (1 - lambda_value) * jaccard + lambda_value * normalized[i, num_query + g]
    return final


def clustered_features(rng, num_ids, per_id_gallery, per_id_query, dim=16, spread=0.6):
    centers = rng.normal(size=(num_ids, dim))
    g_pids = np.repeat(np.arange(1, num_ids + 1), per_id_gallery)
    q_pids = np.repeat(np.arange(1, num_ids + 1), per_id_query)
    gallery = centers[g_pids - 1] + spread * rng.normal(size=(len(g_pids), dim))
    query = centers[q_pids - 1] + spread * rng.normal(size=(len(q_pids), dim))
    return query, gallery, q_pids, g_pids


def distance_matrices(query, gallery):
    return (pairwise_distance(query, gallery).numpy(), pairwise_distance(query, query).numpy(),
            pairwise_distance(gallery, gallery).numpy())


@pytest.mark.parametrize("k1, k2, lambda_value", [(4, 3, 0.3), (6, 1, 0.5), (3, 6, 0.0)])
def test_matches_row_by_row_implementation(k1, k2, lambda_value):
    rng = np.random.default_rng(k1)
    query, gallery, _, _ = clustered_features(rng, num_ids=5, per_id_gallery=5, per_id_query=2)
    distances = distance_matrices(query, gallery)
    result = re_ranking(*distances, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=7)
    expected = loop_re_ranking(*distances, k1=k1, k2=k2, lambda_value=lambda_value)
    assert result.shape == (10, 25) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-6)


def test_chunk_size_and_torch_inputs_do_not_change_the_result():
    rng = np.random.default_rng(7)
    query, gallery, _, _ = clustered_features(rng, num_ids=4, per_id_gallery=6, per_id_query=3)
    distances = distance_matrices(query, gallery)
    reference = re_ranking(*distances, k1=5, k2=3)
    np.testing.assert_array_equal(re_ranking(*distances, k1=5, k2=3, chunk_size=1), reference)
    np.testing.assert_array_equal(re_ranking(*(torch.from_numpy(d) for d in distances), k1=5, k2=3), reference)


def test_lambda_one_returns_the_column_normalized_distance():
    rng = np.random.default_rng(1)
    q_g, q_q, g_g = distance_matrices(*clustered_features(rng, 3, 4, 2)[:2])
    joint_column_max = np.maximum(q_q.max(axis=0), q_g.T.max(axis=0))
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=3, k2=2, lambda_value=1.0),
                               q_g / joint_column_max[:, None], rtol=1e-6)


def test_improves_retrieval_on_clustered_identities():
    # Noisy views of well-populated identities: the k-reciprocal neighbourhoods agree on identity
    # more often than single distances do.
    rng = np.random.default_rng(0)
    query, gallery, q_pids, g_pids = clustered_features(rng, num_ids=12, per_id_gallery=8, per_id_query=2, spread=1.1)
    labels = (q_pids, g_pids, np.zeros(len(q_pids), int), np.ones(len(g_pids), int))
    plain = evaluate_reid(query, gallery, *labels)
    reranked = evaluate_reid(query, gallery, *labels, rerank=True)
    assert reranked["mAP"] > plain["mAP"] + 0.02
    assert reranked["rank1"] >= plain["rank1"]
    wired = evaluate_rank(re_ranking(*distance_matrices(query, gallery)), *labels)
    assert wired["mAP"] == reranked["mAP"]
    # The paper's k1=20, k2=6, lambda=0.3, as the row-by-row implementation computes them.
    looped = loop_re_ranking(*distance_matrices(query, gallery), k1=20, k2=6, lambda_value=0.3)
    expected = evaluate_rank(looped, *labels)
    assert reranked["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert reranked["mINP"] == pytest.approx(expected["mINP"], abs=1e-9)
    np.testing.assert_array_equal(reranked["cmc"], expected["cmc"])


def test_reference_defaults():
    defaults = {name: p.default for name, p in inspect.signature(re_ranking).parameters.items()}
    assert (defaults["k1"], defaults["k2"], defaults["lambda_value"]) == (20, 6, 0.3)
    evaluate = {name: p.default for name, p in inspect.signature(evaluate_reid).parameters.items()}
    assert (evaluate["metric"], evaluate["feat_norm"], evaluate["rerank"]) == ("euclidean", True, False)


def test_stable_smallest_breaks_ties_by_index():
    block = np.array([[0.5, 0.1, 0.5, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(stable_smallest(block, 3), [[4, 1, 0], [0, 1, 2]])


def test_bad_inputs_raise_clear_errors():
    q_g, q_q, g_g = np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3))
    with pytest.raises(ValueError, match=r"g_g_dist must have shape \(3, 3\)"):
        re_ranking(q_g, q_q, np.ones((2, 2)))
    with pytest.raises(ValueError, match="k1 must be a positive integer"):
        re_ranking(q_g, q_q, g_g, k1=0)
    with pytest.raises(ValueError, match="lambda_value must lie in"):
        re_ranking(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="positive distances"):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="q_q_dist contains NaN"):
        re_ranking(q_g, np.full((2, 2), np.nan), g_g)
