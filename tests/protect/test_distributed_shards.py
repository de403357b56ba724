"""Contiguous, unpadded sharding of batches and gathering rows back by image index."""
import pytest
import torch

from engine.protect.sharding import batch_spans, gather_rows_by_index, shard_range


def test_batch_spans_cover_every_item_once_with_a_smaller_last_batch():
    assert batch_spans(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert batch_spans(6, 3) == [(0, 3), (3, 6)]
    assert batch_spans(0, 3) == []
    with pytest.raises(ValueError, match="batch size"):
        batch_spans(5, 0)


@pytest.mark.parametrize("num_batches, world_size, expected", [
    (10, 3, [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]),  # the first 10 % 3 = 1 rank takes one more
    (11, 3, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]),
    (2, 4, [[0], [1], [], []]),
    (7, 1, [[0, 1, 2, 3, 4, 5, 6]]),
    (0, 2, [[], []]),
    (8, 8, [[0], [1], [2], [3], [4], [5], [6], [7]]),
])
def test_shards_are_contiguous_disjoint_and_unpadded(num_batches, world_size, expected):
    shards = [list(shard_range(num_batches, world_size, rank)) for rank in range(world_size)]
    assert shards == expected


def test_gather_orders_rows_by_index_and_rejects_missing_rows():
    indices = torch.tensor([2, 0, 1])
    rows = torch.tensor([[20.0], [0.0], [10.0]])
    assert gather_rows_by_index(indices, rows, 3).flatten().tolist() == [0.0, 10.0, 20.0]
    with pytest.raises(RuntimeError, match="missing or was protected twice"):
        gather_rows_by_index(torch.tensor([0, 0, 1]), rows, 3)
    with pytest.raises(RuntimeError, match="gathered 3 rows for 4 images"):
        gather_rows_by_index(indices, rows, 4)
