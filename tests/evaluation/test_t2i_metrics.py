"""IRRA's text-to-image ranking metrics on hand-built similarity matrices (values worked out by hand)."""
import math

import pytest
import torch

from evaluation.text_to_image import evaluate_text_protection, evaluate_text_to_image, rank_metrics, similarity_matrix


def test_gallery_of_three_images_by_hand():
    # Gallery pids [7, 8, 7]. Caption 0 (pid 7) ranks images 0, 1, 2: matches at ranks 1 and 3,
    # AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3. Caption 1 (pid 8) ranks 2, 0, 1: its match at rank 3,
    # AP = 1/3, INP = 1/3.
    similarity = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.1, 0.3]])
    result = rank_metrics(similarity, [7, 8], [7, 8, 7])
    assert result["rank1"] == 0.5
    assert result["rank5"] == 1.0 and result["rank10"] == 1.0  # beyond 3 images: the cumulative match at rank 3
    assert result["clipped_ranks"] == [5, 10] and result["num_gallery"] == 3
    assert result["mAP"] == pytest.approx((5 / 6 + 1 / 3) / 2, abs=1e-12)
    assert result["mINP"] == pytest.approx((2 / 3 + 1 / 3) / 2, abs=1e-12)
    assert result["num_queries"] == result["num_valid_queries"] == 2


def test_cmc_counts_the_first_match_and_ranks_are_configurable():
    # Six images, one match at rank 2 for caption 0 and at rank 6 for caption 1.
    similarity = torch.tensor([[0.6, 0.5, 0.4, 0.3, 0.2, 0.1], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    result = rank_metrics(similarity, [1, 2], [0, 1, 0, 0, 0, 2], ranks=(1, 2, 5, 6))
    assert [result[f"rank{k}"] for k in (1, 2, 5, 6)] == [0.0, 0.5, 0.5, 1.0]
    assert result["mAP"] == pytest.approx((1 / 2 + 1 / 6) / 2) and result["clipped_ranks"] == []


def test_ties_rank_by_gallery_index_and_unmatched_queries_are_skipped():
    similarity = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    # Caption 0 (pid 2): all tied, order 0, 1, 2: its match at rank 3. Caption 1 (pid 9) has no match.
    result = rank_metrics(similarity, [2, 9], [1, 1, 2])
    assert result["num_valid_queries"] == 1 and result["num_queries"] == 2
    assert result["rank1"] == 0.0 and result["mAP"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no query has a match"):
        rank_metrics(similarity, [8, 9], [1, 1, 2])


def test_chunking_does_not_change_the_result():
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(37, 11, generator=generator)
    query, gallery = torch.randint(0, 4, (37,), generator=generator), torch.arange(11) % 4
    assert rank_metrics(similarity, query, gallery, chunk_size=5) == rank_metrics(similarity, query, gallery)


def test_text_to_image_and_image_to_text_from_features():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.5]])
    similarity = similarity_matrix(texts, images)
    expected = torch.tensor([[1 / math.sqrt(1.01), 0.1 / math.sqrt(1.01)],
                             [0.2 / math.sqrt(1.04), 1 / math.sqrt(1.04)],
                             [1 / math.sqrt(1.25), 0.5 / math.sqrt(1.25)]])
    assert torch.allclose(similarity, expected)
    results = evaluate_text_to_image(texts * 3.0, images, [1, 2, 2], [1, 2], image_to_text=True)
    # Text 2 (pid 2) is closer to image 0 (pid 1): its match at rank 2, AP 1/2.
    assert results["text_to_image"]["rank1"] == pytest.approx(2 / 3)
    assert results["text_to_image"]["mAP"] == pytest.approx((1 + 1 + 0.5) / 3)
    # Image 0 ranks texts 0, 2, 1 (one match, first); image 1 ranks 1, 2, 0 (both matches first).
    assert results["image_to_text"]["rank1"] == 1.0 and results["image_to_text"]["mAP"] == 1.0
    assert results["image_to_text"]["mINP"] == 1.0


def test_protection_modes_score_captions_against_original_and_protected_images():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.1], [0.2, 1.0]])
    protected = images.flip(0)  # each protected image now looks like the other person
    results = evaluate_text_protection(texts, images, protected, [1, 2], [1, 2], image_to_text=True)
    assert set(results) == {"text_to_image", "image_to_text"}
    assert set(results["text_to_image"]) == {"clean2clean", "clean2encry"}
    assert results["text_to_image"]["clean2clean"]["rank1"] == 1.0
    assert results["text_to_image"]["clean2encry"]["rank1"] == 0.0
    assert results["text_to_image"]["clean2encry"]["mAP"] == 0.5
    with pytest.raises(ValueError, match=r"differ in shape: \(2, 2\) vs \(1, 2\)"):
        evaluate_text_protection(texts, images, images[:1], [1, 2], [1, 2])


@pytest.mark.parametrize("call, message", [
    (lambda: rank_metrics(torch.tensor([[float("nan")]]), [1], [1]), "contains NaN"),
    (lambda: rank_metrics(torch.ones(2, 3), [1], [1, 1, 1]), "query pids must be a 1-D integer array of 2"),
    (lambda: rank_metrics(torch.ones(1, 1), [1], [1], ranks=(0,)), "ranks must be positive"),
    (lambda: similarity_matrix(torch.ones(2, 3), torch.ones(2, 4)), "differ in dimension: 3 vs 4"),
])
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
