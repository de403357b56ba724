"""data/splits.py: the identity-balanced train order is one seeded stream, batches first, then flips."""
import os

import torch

from configs import load_config
from data.datasets.bases import ImageRecord
from data.splits import train_split_plan


def test_identity_balanced_plan_draws_flips_after_the_batches_from_one_generator():
    root = "/data"
    pids = [pid for pid in range(7) for _ in range(5 + pid % 3)]
    records = [ImageRecord(os.path.join(root, f"{pid:04d}_{n:02d}.jpg"), pid, n % 2)
               for n, pid in enumerate(pids)]
    cfg = load_config("", ["PIXELFADE.SEED", "11", "PIXELFADE.BATCH_SIZE", "8", "DATALOADER.NUM_INSTANCE", "4",
                           "INPUT.PROB", "0.5"])
    plan = train_split_plan(cfg, records, root)

    # The reference sampler's rule by hand (data/samplers.py), then the flips from the same generator.
    generator = torch.Generator().manual_seed(11)
    chunks = {}
    for pid in sorted(set(pids)):
        indices = [index for index, p in enumerate(pids) if p == pid]
        order = torch.randperm(len(indices), generator=generator).tolist()
        shuffled = [indices[k] for k in order]
        chunks[pid] = [shuffled[start:start + 4] for start in range(0, len(shuffled) - 3, 4)]
    expected = []
    while sum(1 for pid in chunks if chunks[pid]) >= 2:
        available = [pid for pid in sorted(chunks) if chunks[pid]]
        chosen = [available[k] for k in torch.randperm(len(available), generator=generator).tolist()[:2]]
        expected += [index for pid in chosen for index in chunks[pid].pop(0)]
    flips = (torch.rand(len(expected), generator=generator) < 0.5).tolist()

    assert [record.path for record in plan.records] == [records[index].path for index in expected]
    assert plan.flips == flips and any(flips) and not all(flips)
    assert plan.keys == [f"{os.path.basename(records[index].path)}{'|flipped' if flip else ''}"
                         for index, flip in zip(expected, flips)]
