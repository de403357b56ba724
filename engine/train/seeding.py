"""Per-epoch seeds: each epoch of a run draws from (seed, epoch[, rank]) alone, so a resumed run repeats it."""
import random

import numpy as np
import torch


def epoch_seed(seed, epoch):
    """The seed of ``epoch`` of a run seeded ``seed`` (one process)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


def rank_epoch_seed(seed, epoch, rank=0):
    """The seed of ``epoch`` in process ``rank`` (the AGW trainer's: each process draws its own crops and flips)."""
    return (epoch_seed(seed, epoch) * 1009 + int(rank)) % (2**63)


def seed_everything(seed):
    """torch's, Python's and numpy's global generators from one seed (numpy takes it modulo 2**32)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
