"""Per-image protection statistics on hand-made tensors."""
import pytest
import torch

from evaluation.protection_stats import protection_statistics


def test_statistics_per_image():
    original = torch.zeros(2, 1, 2, 2)
    noise = torch.ones(2, 1, 2, 2)
    protected = torch.tensor([[[[1.0, 1.0], [0.9, 0.1]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    moved = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    stats = protection_statistics(original, protected, noise, features, moved)
    assert stats["feature_mse"].tolist() == [0.5, 8.0]
    assert torch.allclose(stats["cosine"], torch.tensor([2 ** -0.5, -1.0]))
    assert stats["noise_share"].tolist() == [0.5, 0.0]
    assert stats["closer_to_noise"].tolist() == [0.75, 0.0]


def test_methods_without_noise_get_zero_shares():
    images = torch.rand(3, 3, 4, 2)
    stats = protection_statistics(images, images + 1, None, torch.ones(3, 8), torch.ones(3, 8))
    assert stats["noise_share"].tolist() == [0.0] * 3 and stats["closer_to_noise"].tolist() == [0.0] * 3
    assert stats["feature_mse"].tolist() == [0.0] * 3


def test_a_value_halfway_between_noise_and_original_is_not_nearer_noise():
    original = torch.zeros(1, 1, 1, 4)
    noise = torch.ones(1, 1, 1, 4)
    protected = torch.tensor([[[[0.5, 0.5, 0.75, 1.0]]]])  # two ties, one nearer, one equal to noise
    stats = protection_statistics(original, protected, noise, torch.ones(1, 3), torch.tensor([[1.0, 1.0, 4.0]]))
    assert stats["closer_to_noise"].tolist() == [0.5]
    assert stats["noise_share"].tolist() == [0.25]
    assert stats["feature_mse"].tolist() == [3.0]
    assert stats["cosine"].tolist() == [pytest.approx(6 / (3 ** 0.5 * 18 ** 0.5), abs=1e-6)]
