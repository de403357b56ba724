"""The pieces of the AGW recipe that the trainer composes: optimizers, PK batches, evaluation, progress.

Every epoch re-seeds torch, numpy and random from (SOLVER.SEED, epoch, rank) (``engine.train.seeding``)
and the sampler from (SOLVER.SEED, epoch); ``TrainProgress`` carries the RNG states into each checkpoint,
so a resumed run repeats the uninterrupted one exactly (CPU).
"""
import random

import ignite.distributed as idist
import numpy as np
import torch

from engine.train import loop
from evaluation.reid import evaluate_reid

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def rng_states():
    """torch, numpy and random states in types a weights-only ``torch.load`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": list(random.getstate()),
    }


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def build_optimizer(cfg, model):
    """One param group per trainable parameter, all with BASE_LR and WEIGHT_DECAY (the reference)."""
    groups = [
        {"params": [p], "lr": cfg.SOLVER.BASE_LR, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
        for p in model.parameters()
        if p.requires_grad
    ]
    if cfg.SOLVER.OPTIMIZER_NAME == "SGD":
        return torch.optim.SGD(groups, momentum=cfg.SOLVER.MOMENTUM)
    return torch.optim.Adam(groups)


def build_center_optimizer(cfg, criterion):
    if criterion.center is None:
        return None
    return torch.optim.SGD(criterion.center.parameters(), lr=cfg.SOLVER.CENTER_LR)


def rescale_center_gradient(criterion, center_loss_weight, world_size=1):
    """Centers' gradient x 1 / CENTER_LOSS_WEIGHT (averaged over processes first), as the reference.

    After ``loss.backward()`` the centers hold the gradient of CENTER_LOSS_WEIGHT * L_c; this turns
    it into the gradient of the unweighted L_c, so SGD(CENTER_LR) moves them by CENTER_LR * dL_c/dc.
    """
    for param in criterion.center.parameters():
        if param.grad is None:
            continue
        if world_size > 1:
            param.grad = idist.all_reduce(param.grad) / world_size
        param.grad.mul_(1.0 / center_loss_weight)


class RankSlicedBatches:
    """Global PK batches (IdentityBatchSampler); rank r keeps identities r*P/W .. (r+1)*P/W - 1 of each."""

    def __init__(self, sampler, num_instances, world_size, rank):
        self.sampler = sampler
        self.width = sampler.ids_per_batch // world_size * num_instances
        self.rank = rank

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def batches(self):
        return [batch[self.rank * self.width : (self.rank + 1) * self.width] for batch in self.sampler.batches()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return len(self.sampler)


class EpochData:
    """The trainer's data: each ``iter`` lazily opens a DataLoader over the current epoch's batches.

    Lazy, so the sampler's epoch (set on EPOCH_STARTED) is chosen before any worker starts.
    """

    def __init__(self, dataset, batches, num_workers, pin_memory):
        self.dataset = dataset
        self.batches = batches
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __iter__(self):
        def generate():
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self.batches.batches(),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
            )
            yield from loader

        return generate()


def max_batches_per_epoch(pids, ids_per_batch, num_instances):
    """Upper bound of an epoch's batches: all chunks divided by P (the real count varies a little)."""
    counts = {}
    for pid in pids:
        counts[pid] = counts.get(pid, 0) + 1
    chunks = sum(max(1, n // num_instances) for n in counts.values())
    return max(1, chunks // ids_per_batch)


@torch.no_grad()
def extract_features(model, loader, device):
    model.eval()
    features = []
    for batch in loader:
        features.append(model(batch["image"].to(device)).float().cpu())
    return torch.cat(features)


def evaluate(model, loader, records, num_query, cfg, device):
    """Rank-1/5/10, mAP and mINP of ``model``'s eval features on query (first) + gallery."""
    was_training = model.training
    features = extract_features(model, loader, device)
    pids = np.array([r.pid for r in records])
    camids = np.array([r.camid for r in records])
    scores = evaluate_reid(
        features[:num_query],
        features[num_query:],
        pids[:num_query],
        pids[num_query:],
        camids[:num_query],
        camids[num_query:],
        metric=cfg.TEST.DISTANCE,
        feat_norm=cfg.TEST.FEAT_NORM == "on",
        rerank=cfg.TEST.RE_RANKING == "on",
    )
    model.train(was_training)
    return {key: float(scores[key]) for key in METRIC_KEYS}


class TrainProgress(loop.TrainProgress):
    """Finished epochs, per-epoch losses and evaluations, steps and the RNG states: saved with each checkpoint."""

    def __init__(self, identity):
        super().__init__(identity)
        self.steps = 0

    def state_dict(self):
        return {**super().state_dict(), "steps": self.steps, "rng": rng_states()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps = int(state["steps"])
        set_rng_states(state["rng"])


def model_filename(cfg, epoch):
    """The reference's ``<MODEL.NAME>_model_<epoch>.pth`` (ignite 0.1.x ModelCheckpoint naming)."""
    return f"{cfg.MODEL.NAME}_model_{epoch}.pth"


def plain_state_dict(model):
    module = model.module if hasattr(model, "module") else model
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
