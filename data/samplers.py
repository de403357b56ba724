"""Identity-balanced (PK) batches as the reference AGW ``RandomIdentitySampler`` forms them.

Each batch holds ``P = ids_per_batch`` identities with ``K = num_instances`` images each
(the AGW recipe of mangye16/ReID-Survey). One epoch is built like this:

1. For every identity, in increasing pid order: if it has at least K images, its indices
   (ascending) are shuffled with ``torch.randperm(n, generator)`` and cut into chunks of K,
   the last ``n % K`` indices being DROPPED (an identity with 6 images gives 1 chunk, with 9
   gives 2). An identity with fewer than K images gets one chunk of K indices drawn with
   replacement from its own indices, ``torch.randint(n, (K,), generator)`` (the reference
   draws with replacement and then shuffles; the draws are already in random order).
2. While at least P identities have chunks left: ``torch.randperm(len(available), generator)``
   over the identities with chunks left (increasing pid order); its first P entries are the
   batch's identities, in that order; the first unused chunk of each is taken and the P
   chunks are concatenated into one batch.

Every random number comes from the given ``torch.Generator`` in exactly that order, so one
seed gives one epoch on any machine. ``flip_decisions`` called afterwards with the same
generator continues the same stream, which reproduces the reference's protected train
split (PK batches of 5 ids x 4 images, horizontal flip with p 0.5) deterministically.
"""
import operator
from collections import defaultdict

import torch
from torch.utils.data import Sampler

from utils.errors import ConfigError, DatasetError

NUM_INSTANCE_KEY = "DATALOADER.NUM_INSTANCE"
BATCH_SIZE_KEY = "PIXELFADE.BATCH_SIZE"


def _positive_int(value, name):
    """``value`` as an int when it is an integer >= 1 (not a bool), else a ConfigError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {number}")
    return number


def _check_generator(generator):
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def ids_per_batch_for(batch_size, num_instances):
    """P for a batch of ``batch_size`` images with ``num_instances`` (K) images per identity.

    Raises ConfigError naming PIXELFADE.BATCH_SIZE and DATALOADER.NUM_INSTANCE unless both are
    whole numbers >= 1 and K divides the batch size (the reference's 20 = 5 ids x 4 images).
    """
    batch_size = _positive_int(batch_size, BATCH_SIZE_KEY)
    num_instances = _positive_int(num_instances, NUM_INSTANCE_KEY)
    if batch_size % num_instances:
        raise ConfigError(
            f"{BATCH_SIZE_KEY} ({batch_size}) must be a multiple of {NUM_INSTANCE_KEY} "
            f"({num_instances}): identity-balanced batches hold whole groups of "
            f"{num_instances} images per identity"
        )
    return batch_size // num_instances


def _indices_by_identity(pids):
    """{pid: ascending indices into ``pids``}, pids as plain ints."""
    if isinstance(pids, torch.Tensor):
        pids = pids.tolist()
    by_pid = defaultdict(list)
    for index, pid in enumerate(pids):
        by_pid[int(pid)].append(index)
    return by_pid


def identity_balanced_batches(pids, ids_per_batch, num_instances, generator):
    """One epoch of PK batches: a list of batches, each a list of indices into ``pids``.

    ``pids[i]`` is the identity of item i (a sequence of ints or a 1-D tensor). Every batch has
    exactly ``ids_per_batch * num_instances`` indices, ``num_instances`` consecutive ones per
    identity, and no identity twice. An index appears at most once per epoch, except that an
    identity with fewer than ``num_instances`` items repeats its own indices to fill its one
    chunk. See the module docstring for the rule and the order of random draws.

    Raises ConfigError for ``ids_per_batch`` / ``num_instances`` (DATALOADER.NUM_INSTANCE) that
    are not whole numbers >= 1, and DatasetError when there are fewer than ``ids_per_batch``
    identities, so not even one batch can be formed.
    """
    ids_per_batch = _positive_int(ids_per_batch, "ids per batch (PIXELFADE.BATCH_SIZE / DATALOADER.NUM_INSTANCE)")
    num_instances = _positive_int(num_instances, NUM_INSTANCE_KEY)
    _check_generator(generator)
    by_pid = _indices_by_identity(pids)
    if len(by_pid) < ids_per_batch:
        raise DatasetError(
            f"identity-balanced batches need at least {ids_per_batch} identities "
            f"({ids_per_batch} ids x {num_instances} images per batch), "
            f"but the {sum(len(v) for v in by_pid.values())} images hold {len(by_pid)}"
        )

    chunks = {}
    for pid in sorted(by_pid):
        indices = by_pid[pid]
        if len(indices) < num_instances:
            picks = torch.randint(len(indices), (num_instances,), generator=generator).tolist()
            chunks[pid] = [[indices[p] for p in picks]]
        else:
            order = torch.randperm(len(indices), generator=generator).tolist()
            shuffled = [indices[p] for p in order]
            usable = len(shuffled) - len(shuffled) % num_instances
            chunks[pid] = [shuffled[s:s + num_instances] for s in range(0, usable, num_instances)]

    next_chunk = dict.fromkeys(chunks, 0)
    available = sorted(chunks)
    batches = []
    while len(available) >= ids_per_batch:
        picked = torch.randperm(len(available), generator=generator)[:ids_per_batch].tolist()
        chosen = [available[p] for p in picked]
        batch = []
        for pid in chosen:
            batch.extend(chunks[pid][next_chunk[pid]])
            next_chunk[pid] += 1
        batches.append(batch)
        available = [pid for pid in available if next_chunk[pid] < len(chunks[pid])]
    return batches


def flip_decisions(num_items, probability, generator):
    """BoolTensor of ``num_items`` horizontal-flip decisions, each True with ``probability``.

    Drawn as ``torch.rand(num_items, generator=generator) < probability``: one number per item,
    in item order, from the same generator (call it after ``identity_balanced_batches`` to
    continue that epoch's stream).
    """
    if isinstance(num_items, bool) or not hasattr(num_items, "__index__") or operator.index(num_items) < 0:
        raise ValueError(f"num_items must be a whole number >= 0, got {num_items!r}")
    num_items = operator.index(num_items)
    probability = float(probability)
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"flip probability (INPUT.PROB) must lie in [0, 1], got {probability}")
    _check_generator(generator)
    return torch.rand(num_items, generator=generator) < probability


class IdentityBatchSampler(Sampler):
    """``identity_balanced_batches`` as a DataLoader ``batch_sampler``, one epoch per seed.

    Epoch ``e`` uses a generator seeded with ``seed + e`` (``set_epoch`` selects it), so a run
    that resumes at an epoch gets that epoch's batches again. ``len`` is the epoch's number of
    batches, which varies a little from epoch to epoch as in the reference.
    """

    def __init__(self, pids, ids_per_batch, num_instances, seed=0):
        self.pids = pids.tolist() if isinstance(pids, torch.Tensor) else [int(p) for p in pids]
        self.ids_per_batch = ids_per_batch
        self.num_instances = num_instances
        self.seed = int(seed)
        self.epoch = 0
        self._cache = None
        self.batches()  # validate now rather than at the first iteration

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def batches(self):
        if self._cache is None or self._cache[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            self._cache = (
                self.epoch,
                identity_balanced_batches(self.pids, self.ids_per_batch, self.num_instances, generator),
            )
        return self._cache[1]

    def __iter__(self):
        return iter([list(batch) for batch in self.batches()])

    def __len__(self):
        return len(self.batches())
