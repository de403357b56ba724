from collections import Counter

import pytest
import torch

from data.samplers import (
    IdentityBatchSampler,
    flip_decisions,
    identity_balanced_batches,
    ids_per_batch_for,
)
from utils.errors import ConfigError, DatasetError


def gen(seed):
    return torch.Generator().manual_seed(seed)


def pid_list(sizes):
    """pids[i] for identities 0..len(sizes)-1 holding sizes[pid] images, interleaved."""
    pids, left = [], list(sizes)
    while any(left):
        for pid, count in enumerate(left):
            if count:
                pids.append(pid)
                left[pid] -= 1
    return pids


# 30 identities with 1..13 images: small ones are resampled, others lose a remainder.
SIZES = [1 + (7 * pid) % 13 for pid in range(30)]
PIDS = pid_list(SIZES)


def chunk_count(size, k):
    return max(1, size // k)


@pytest.mark.parametrize("p, k", [(5, 4), (4, 2), (3, 5), (1, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batches_are_p_times_k_with_p_distinct_identities_in_blocks_of_k(p, k, seed):
    batches = identity_balanced_batches(PIDS, p, k, gen(seed))
    assert batches
    for batch in batches:
        assert len(batch) == p * k
        blocks = [[PIDS[i] for i in batch[s : s + k]] for s in range(0, p * k, k)]
        assert all(len(set(block)) == 1 for block in blocks)
        assert len({block[0] for block in blocks}) == p


def test_remainder_is_dropped_and_small_identities_repeat_their_own_indices():
    # identity 0: 6 images -> 1 chunk; 1: 9 -> 2 chunks; 2: 2 -> 1 chunk of repeats; 3: 4 -> 1.
    pids = [0] * 6 + [1] * 9 + [2] * 2 + [3] * 4
    own = {pid: {i for i, q in enumerate(pids) if q == pid} for pid in range(4)}
    both_small_indices_seen = False
    for seed in range(40):
        batches = identity_balanced_batches(pids, 1, 4, gen(seed))  # P = 1: every chunk is used
        per_pid = Counter(pids[batch[0]] for batch in batches)
        assert per_pid == {0: 1, 1: 2, 2: 1, 3: 1}
        for batch in batches:
            assert set(batch) <= own[pids[batch[0]]]
        big = [i for b in batches if pids[b[0]] in (0, 1, 3) for i in b]
        assert len(big) == len(set(big)) == 4 + 8 + 4
        (small,) = [b for b in batches if pids[b[0]] == 2]
        assert len(small) == 4 and set(small) <= {15, 16}
        both_small_indices_seen |= set(small) == {15, 16}
    assert both_small_indices_seen


@pytest.mark.parametrize(
    "sizes, p, k, expected",
    [
        ([4] * 7, 3, 4, 2),  # 7 one-chunk ids, 3 per batch: 2 batches, 1 id left over
        ([12, 12], 2, 4, 3),  # 2 ids with 3 chunks each: 3 batches, both used up
        ([9, 6, 2], 3, 4, 1),  # after one batch only the 9-image id has a chunk left
        ([5, 5, 5, 5, 5, 3], 6, 5, 1),  # exactly P ids: one batch
        ([3, 5, 2, 1], 4, 2, 1),  # 4 ids, one chunk each (the 1-image id resampled): 1 batch
    ],
)
def test_stopping_rule_batch_counts(sizes, p, k, expected):
    for seed in range(10):
        assert len(identity_balanced_batches(pid_list(sizes), p, k, gen(seed))) == expected


@pytest.mark.parametrize("p, k", [(5, 4), (7, 2), (2, 6)])
def test_epoch_stops_only_when_fewer_than_p_identities_have_chunks_left(p, k):
    for seed in range(10):
        batches = identity_balanced_batches(PIDS, p, k, gen(seed))
        used = Counter(PIDS[batch[s]] for batch in batches for s in range(0, p * k, k))
        assert all(used[pid] <= chunk_count(size, k) for pid, size in enumerate(SIZES))
        left = [pid for pid, size in enumerate(SIZES) if used[pid] < chunk_count(size, k)]
        assert len(left) < p


def test_each_index_at_most_once_except_resampled_small_identities():
    k = 4
    for seed in range(10):
        batches = identity_balanced_batches(PIDS, 5, k, gen(seed))
        counts = Counter(i for batch in batches for i in batch)
        for index, count in counts.items():
            if SIZES[PIDS[index]] >= k:
                assert count == 1
        for pid, size in enumerate(SIZES):
            if size < k:
                total = sum(counts[i] for i, q in enumerate(PIDS) if q == pid)
                assert total in (0, k)


def test_same_seed_same_epoch_other_seed_other_epoch():
    first = identity_balanced_batches(PIDS, 5, 4, gen(123))
    assert identity_balanced_batches(PIDS, 5, 4, gen(123)) == first
    assert identity_balanced_batches(torch.tensor(PIDS), 5, 4, gen(123)) == first
    assert identity_balanced_batches(PIDS, 5, 4, gen(124)) != first


def test_draw_order_is_the_documented_one():
    # K = 3: pid 3 has 2 images (resampled), 7 has 7 (2 chunks, 1 dropped), 9 has 1 (resampled)
    pids = [7, 3, 7, 7, 3, 7, 7, 9, 7, 7]
    own = {3: [1, 4], 7: [0, 2, 3, 5, 6, 8, 9], 9: [7]}
    for seed in range(5):
        g = gen(seed)
        chunks = {}
        chunks[3] = [[own[3][j] for j in torch.randint(2, (3,), generator=g).tolist()]]
        shuffled = [own[7][j] for j in torch.randperm(7, generator=g).tolist()]
        chunks[7] = [shuffled[0:3], shuffled[3:6]]
        chunks[9] = [[own[9][j] for j in torch.randint(1, (3,), generator=g).tolist()]]
        available, taken, expected = [3, 7, 9], Counter(), []
        while len(available) >= 2:
            chosen = [available[j] for j in torch.randperm(len(available), generator=g)[:2].tolist()]
            batch = []
            for pid in chosen:
                batch += chunks[pid][taken[pid]]
                taken[pid] += 1
            expected.append(batch)
            available = [pid for pid in available if taken[pid] < len(chunks[pid])]
        expected_flips = torch.rand(6, generator=g) < 0.5

        g = gen(seed)
        assert identity_balanced_batches(pids, 2, 3, g) == expected
        assert torch.equal(flip_decisions(6, 0.5, g), expected_flips)


def test_flip_decisions():
    flips = flip_decisions(20000, 0.5, gen(0))
    assert flips.dtype == torch.bool and flips.shape == (20000,)
    assert 0.48 < flips.float().mean() < 0.52
    assert 0.28 < flip_decisions(20000, 0.3, gen(0)).float().mean() < 0.32
    assert not flip_decisions(100, 0.0, gen(0)).any()
    assert flip_decisions(100, 1.0, gen(0)).all()
    assert torch.equal(flip_decisions(50, 0.5, gen(9)), flip_decisions(50, 0.5, gen(9)))
    assert flip_decisions(0, 0.5, gen(0)).shape == (0,)
    with pytest.raises(ConfigError, match="INPUT.PROB"):
        flip_decisions(5, 1.5, gen(0))
    with pytest.raises(ValueError, match="num_items"):
        flip_decisions(-1, 0.5, gen(0))


def test_ids_per_batch_for():
    assert ids_per_batch_for(20, 4) == 5 and ids_per_batch_for(64, 4) == 16 and ids_per_batch_for(3, 1) == 3
    with pytest.raises(
        ConfigError, match=r"PIXELFADE.BATCH_SIZE \(20\) must be a multiple of DATALOADER.NUM_INSTANCE \(3\)"
    ):
        ids_per_batch_for(20, 3)
    with pytest.raises(ConfigError, match="multiple of DATALOADER.NUM_INSTANCE"):
        ids_per_batch_for(4, 8)
    with pytest.raises(ConfigError, match="PIXELFADE.BATCH_SIZE must be a whole number >= 1, got 0"):
        ids_per_batch_for(0, 4)
    with pytest.raises(ConfigError, match="DATALOADER.NUM_INSTANCE must be a whole number >= 1, got 2.5"):
        ids_per_batch_for(20, 2.5)


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="DATALOADER.NUM_INSTANCE must be a whole number >= 1, got 0"):
        identity_balanced_batches(PIDS, 5, 0, gen(0))
    with pytest.raises(ConfigError, match="DATALOADER.NUM_INSTANCE .*got True"):
        identity_balanced_batches(PIDS, 5, True, gen(0))
    with pytest.raises(ConfigError, match="ids per batch .*got -1"):
        identity_balanced_batches(PIDS, -1, 4, gen(0))
    with pytest.raises(ConfigError, match="ids per batch .*got '5'"):
        identity_balanced_batches(PIDS, "5", 4, gen(0))
    with pytest.raises(TypeError, match="torch.Generator"):
        identity_balanced_batches(PIDS, 5, 4, 0)
    with pytest.raises(DatasetError, match="need at least 5 identities .*the 6 images hold 3"):
        identity_balanced_batches([0, 0, 1, 1, 2, 2], 5, 4, gen(0))
    with pytest.raises(DatasetError, match="the 0 images hold 0"):
        identity_balanced_batches([], 1, 4, gen(0))


def test_batch_sampler_epochs():
    sampler = IdentityBatchSampler(PIDS, 5, 4, seed=3)
    first = list(sampler)
    assert len(sampler) == len(first) and first == list(sampler)
    assert first == identity_balanced_batches(PIDS, 5, 4, gen(3))
    sampler.set_epoch(2)
    assert list(sampler) == identity_balanced_batches(PIDS, 5, 4, gen(5))
    with pytest.raises(DatasetError):
        IdentityBatchSampler([0, 1], 5, 4)
