"""Training an AGW authorization model (README, "Training an authorization model") with an ignite trainer.

``run`` checks the settings, the data set and any checkpoint to resume before anything is
written, then trains in one process, under torchrun, or in ``nproc_per_node`` spawned processes
(ignite.distributed). The recipe is ReID-Survey's:

* PK batches (``data.samplers``: SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE identities x
  NUM_INSTANCE images, the reference chunking and stopping rule, so the epoch length varies);
  with W processes every global batch of P identities is cut into W slices of P/W identities,
  so the effective batch stays IMS_PER_BATCH and no identity is on two ranks in one step;
* the AGW train transform (``data.transforms.build_train_transform``);
* label-smoothed CE on the BNNeck logits + WRT (or batch-hard triplet with SOLVER.MARGIN) +
  CENTER_LOSS_WEIGHT * center loss on the pooled feature (``modeling.losses``);
* Adam (or SGD) with one parameter group per trainable parameter, all with BASE_LR and
  WEIGHT_DECAY; the centers have their own SGD(CENTER_LR) and their gradient is multiplied by
  1 / CENTER_LOSS_WEIGHT before its step;
* ``WarmupMultiStepLR`` stepped on EPOCH_STARTED (``engine.train.schedule``);
* evaluation every EVAL_PERIOD epochs and at the end (L2-normalised features, Euclidean).

Every epoch re-seeds torch, numpy and random from (SOLVER.SEED, epoch, rank) and the sampler
from (SOLVER.SEED, epoch), so a run resumed from the checkpoint of epoch e repeats epochs e+1...
exactly as an uninterrupted run (CPU; the RNG states are saved in the checkpoint too).
"""

import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from ignite.metrics import Average
from ignite.metrics.metric import SingleEpochRunningBatchWise
from ignite.utils import setup_logger

from configs import save_config
from configs.checks import ConfigChecker, is_int
from configs.keys import flat_items
from data.datasets import build_dataset
from data.loaders import ImageDataset, build_loader, eval_records
from data.samplers import IdentityBatchSampler
from data.transforms import build_eval_transform, build_train_transform
from engine.common.checkpoint import AtomicCheckpointSaver
from engine.train.curves import training_curves_figure
from engine.train.schedule import WarmupMultiStepLR, lr_at_epoch
from evaluation.reid import evaluate_reid
from modeling import build_model, resolve_device
from modeling.backbones import BACKBONES
from modeling.losses import AGWCriterion
from utils.cpus import configure_threads, loader_workers
from utils.errors import CheckpointError, ConfigError, DatasetError, NonFiniteError, RunConflictError
from utils.figures import save_figure
from utils.file_io import FolderLock, atomic_write, atomic_write_json, atomic_write_text, latest_numbered_file
from utils.logs import close_log_handlers
from utils.progress import attach_progress

logger = logging.getLogger("pixelfade.train")

CHECKPOINT_PREFIX = "training"
OPTIMIZERS = ("Adam", "SGD")
SWITCHES = ("on", "off")
AMP_MODES = ("off", "fp16", "bf16")
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
# Keys that do not change the weights a run produces; everything else must match to resume.
FREE_KEYS = (
    "SOLVER.MAX_EPOCHS",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.EVAL_PERIOD",
    "SOLVER.LOG_PERIOD",
    "OUTPUT_DIR",
    "DATASETS.ROOT_DIR",
    "DATALOADER.NUM_WORKERS",
    "MODEL.DEVICE",
    "TEST",
    "SYSTEM",
)


@dataclass
class TrainOptions:
    """What a run needs beyond the config."""

    show_progress: bool = True
    # Called with the trainer after every handler is attached (tests interrupt runs with it).
    on_trainer: Callable | None = None


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
def validate_train_config(cfg, flag_of_key=None):
    """Raise ConfigError for the first bad training setting, naming its key (and flag)."""
    check = ConfigChecker(cfg, flag_of_key)
    check.choice("SOLVER.OPTIMIZER_NAME", OPTIMIZERS)
    for key in ("SOLVER.BASE_LR", "SOLVER.GAMMA", "SOLVER.WARMUP_FACTOR", "SOLVER.CENTER_LR"):
        check.positive(key)
    check.non_negative("SOLVER.WEIGHT_DECAY")
    check.non_negative("SOLVER.MARGIN")
    momentum = check.value("SOLVER.MOMENTUM")
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum < 1:
        check.fail("SOLVER.MOMENTUM", "a number in [0, 1)")
    for key, minimum in (
        ("SOLVER.MAX_EPOCHS", 1),
        ("SOLVER.IMS_PER_BATCH", 1),
        ("SOLVER.WARMUP_ITERS", 0),
        ("SOLVER.CHECKPOINT_PERIOD", 1),
        ("SOLVER.EVAL_PERIOD", 1),
        ("SOLVER.LOG_PERIOD", 1),
        ("SOLVER.SEED", 0),
        ("DATALOADER.NUM_INSTANCE", 1),
        ("DATALOADER.NUM_WORKERS", 0),
        ("SYSTEM.THREADS", 0),
        ("TEST.IMS_PER_BATCH", 1),
        ("INPUT.PADDING", 0),
        ("MODEL.INIT_SEED", 0),
    ):
        check.integer(key, minimum)
    steps = list(check.value("SOLVER.STEPS"))
    if not all(is_int(v) and v >= 0 for v in steps) or steps != sorted(steps):
        check.fail("SOLVER.STEPS", "increasing whole numbers of epochs")
    check.choice("SOLVER.WARMUP_METHOD", ("linear", "constant"))
    check.choice("SOLVER.AMP", AMP_MODES)
    for key in (
        "MODEL.CENTER_LOSS",
        "MODEL.WEIGHT_REGULARIZED_TRIPLET",
        "MODEL.GENERALIZED_MEAN_POOL",
        "TEST.FEAT_NORM",
        "TEST.RE_RANKING",
    ):
        check.choice(key, SWITCHES)
    if cfg.MODEL.CENTER_LOSS == "on":
        check.positive("SOLVER.CENTER_LOSS_WEIGHT")
    if cfg.DATALOADER.PK_SAMPLER != "on":
        check.fail("DATALOADER.PK_SAMPLER", "'on' (the AGW recipe trains on PK batches only)")
    check.choice("MODEL.NAME", tuple(BACKBONES.names()))
    check.choice("MODEL.PRETRAIN_CHOICE", ("imagenet", "self"))
    check.choice("MODEL.LAST_STRIDE", (1, 2))
    check.choice("TEST.DISTANCE", ("euclidean", "cosine"))
    if cfg.MODEL.PRETRAIN_PATH and not os.path.isfile(cfg.MODEL.PRETRAIN_PATH):
        check.fail("MODEL.PRETRAIN_PATH", "an existing local torchvision-format file, or empty (random init)")
    size = check.value("INPUT.IMG_SIZE")
    if len(size) != 2 or not all(is_int(v) and v >= 1 for v in size):
        check.fail("INPUT.IMG_SIZE", "[height, width] of two positive integers")
    for key in ("INPUT.PROB", "INPUT.RE_PROB"):
        value = check.value(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            check.fail(key, "a probability in [0, 1]")
    if len(cfg.INPUT.PIXEL_STD) != 3 or not all(v > 0 for v in cfg.INPUT.PIXEL_STD) or len(cfg.INPUT.PIXEL_MEAN) != 3:
        check.fail("INPUT.PIXEL_STD", "three positive numbers (and INPUT.PIXEL_MEAN three numbers)")
    if cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of "
            f"DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE}): P identities x K images"
        )
    if not isinstance(cfg.OUTPUT_DIR, str) or not cfg.OUTPUT_DIR:
        check.fail("OUTPUT_DIR", "a folder path")
    if cfg.DATASETS.NAMES == "image_folder":
        check.fail("DATASETS.NAMES", "a labelled data set (market1501, cuhk03, msmt17)")


def ids_per_rank(cfg, world_size):
    """P / W identities per process; ConfigError unless W divides P."""
    ids = cfg.SOLVER.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE
    if ids % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {ids} identities per batch must be "
            f"divisible by the {world_size} processes (each process takes an equal share)"
        )
    return ids // world_size


def load_train_dataset(cfg):
    """The data set, checked to hold enough train identities and a query and gallery split."""
    options = {"labeled": cfg.DATASETS.CUHK03_LABELED} if cfg.DATASETS.NAMES == "cuhk03" else {}
    dataset = build_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, **options)
    ids = cfg.SOLVER.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE
    if dataset.num_train_pids < ids:
        raise DatasetError(
            f"{dataset.root}: {dataset.num_train_pids} train identities, fewer than the {ids} "
            "identities of one batch (SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE)"
        )
    if not dataset.query or not dataset.gallery:
        raise DatasetError(f"{dataset.root}: the query or gallery split is empty; training evaluates on them")
    return dataset


def run_identity(cfg, dataset, world_size):
    """What must not change between an interrupted run and its resumption."""
    flat = {name: value for name, value in flat_items(cfg)
            if not any(name == free or name.startswith(free + ".") for free in FREE_KEYS)}
    flat["train_images"] = len(dataset.train)
    flat["train_ids"] = dataset.num_train_pids
    flat["processes"] = world_size
    return flat


def latest_checkpoint(output_dir):
    return latest_numbered_file(output_dir, CHECKPOINT_PREFIX + "_checkpoint_", ".pt")


def read_training_checkpoint(path):
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        identity = saved["progress"]["identity"]
        epoch = int(saved["progress"]["epoch"])
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"cannot read the training checkpoint {path} ({reason}); delete it to train "
            "afresh, or pass another --output"
        ) from None
    return saved, identity, epoch


def check_resumable(cfg, identity):
    """(path, epoch) of the checkpoint to resume, or (None, 0); RunConflictError for another run's."""
    path = latest_checkpoint(cfg.OUTPUT_DIR)
    if path is None:
        return None, 0
    _, saved_identity, epoch = read_training_checkpoint(path)
    changed = sorted(k for k in set(saved_identity) | set(identity) if saved_identity.get(k) != identity.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved_identity.get(k)!r} -> {identity.get(k)!r}" for k in changed[:6])
        raise RunConflictError(
            f"{path} was written by a different training run ({details}); pass the same "
            "settings to resume it, or another --output to start afresh"
        )
    return path, epoch


# ------------------------------------------------------------------------------------------------
# Pieces of the recipe
# ------------------------------------------------------------------------------------------------
def epoch_seed(seed, epoch, rank=0):
    return ((int(seed) * 1_000_003 + int(epoch)) * 1009 + int(rank)) % (2**63)


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


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


class TrainProgress:
    """Finished epochs, per-epoch losses and evaluations, the RNG states: saved with each checkpoint."""

    def __init__(self, identity):
        self.identity = identity
        self.epoch = 0
        self.steps = 0
        self.epochs = {}
        self.evaluations = {}

    def state_dict(self):
        return {
            "identity": self.identity,
            "epoch": self.epoch,
            "steps": self.steps,
            "epochs": {str(k): v for k, v in self.epochs.items()},
            "evaluations": {str(k): v for k, v in self.evaluations.items()},
            "rng": rng_states(),
        }

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self.steps = int(state["steps"])
        self.epochs = {int(k): v for k, v in state["epochs"].items()}
        self.evaluations = {int(k): v for k, v in state["evaluations"].items()}
        set_rng_states(state["rng"])


def model_filename(cfg, epoch):
    """The reference's ``<MODEL.NAME>_model_<epoch>.pth`` (ignite 0.1.x ModelCheckpoint naming)."""
    return f"{cfg.MODEL.NAME}_model_{epoch}.pth"


def plain_state_dict(model):
    module = model.module if hasattr(model, "module") else model
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
def results_markdown(results):
    lines = [
        f"# AGW training: {results['run']['model']} on {results['run']['dataset']}",
        "",
        "| epoch | Rank-1 | Rank-5 | Rank-10 | mAP | mINP |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["evaluations"]:
        lines.append(f"| {row['epoch']} | " + " | ".join(f"{100 * row[k]:.2f}" for k in METRIC_KEYS) + " |")
    lines += [
        "",
        "| epoch | lr | loss | id | triplet | center | images/s | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["epochs"]:
        center = f"{row['center']:.4f}" if "center" in row else "-"
        lines.append(
            f"| {row['epoch']} | {row['lr']:.3g} | {row['loss']:.4f} | {row['id']:.4f} | "
            f"{row['triplet']:.4f} | {center} | {row['images_per_s']:.1f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def draw_curves(results, path):
    """``training_curves.png``: losses per epoch and mAP / Rank-1 at the evaluated epochs."""
    return save_figure(training_curves_figure(results), path)


def write_results(cfg, progress, run_info):
    results = {
        "run": run_info,
        "epochs": [{"epoch": e, **progress.epochs[e]} for e in sorted(progress.epochs)],
        "evaluations": [{"epoch": e, **progress.evaluations[e]} for e in sorted(progress.evaluations)],
    }
    if results["evaluations"]:
        results["final"] = results["evaluations"][-1]
    atomic_write_json(results, os.path.join(cfg.OUTPUT_DIR, "results.json"))
    atomic_write_text(results_markdown(results), os.path.join(cfg.OUTPUT_DIR, "results.md"))
    draw_curves(results, os.path.join(cfg.OUTPUT_DIR, "training_curves.png"))
    return results


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def run(cfg, options=None, nproc_per_node=None, backend=None):
    """Check everything, then train in one process, under torchrun, or in spawned ones."""
    options = options or TrainOptions()
    validate_train_config(cfg)
    under_launcher = int(os.environ.get("WORLD_SIZE", "1")) > 1
    world_size = int(os.environ["WORLD_SIZE"]) if under_launcher else max(1, nproc_per_node or 1)
    ids_per_rank(cfg, world_size)
    if not under_launcher:
        resolve_device(cfg.MODEL.DEVICE)
    dataset = load_train_dataset(cfg)
    check_resumable(cfg, run_identity(cfg, dataset, world_size))
    if backend is None and world_size > 1:
        backend = "nccl" if torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu" else "gloo"
    if world_size == 1:
        return train_process(0, cfg, options, dataset)
    spawn = None if under_launcher else world_size
    with idist.Parallel(backend=backend, nproc_per_node=spawn) as parallel:
        parallel.run(train_process, cfg, options, dataset)
    return None


def train_process(local_rank, cfg, options, dataset):
    rank, world_size = idist.get_rank(), idist.get_world_size()
    setup_logger("pixelfade", distributed_rank=rank, reset=True)
    if world_size > 1:
        configure_threads(cfg.SYSTEM.THREADS, processes=idist.get_nproc_per_node())
    device = idist.device() if world_size > 1 else resolve_device(cfg.MODEL.DEVICE)
    lock = FolderLock(cfg.OUTPUT_DIR, "train_reid.py") if rank == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        if rank == 0:
            setup_logger(
                "pixelfade", filepath=os.path.join(cfg.OUTPUT_DIR, "log.txt"), distributed_rank=rank, reset=True
            )
            save_config(cfg, cfg.OUTPUT_DIR)
        return _train(cfg, options, dataset, device, rank, world_size)
    finally:
        if lock is not None:
            lock.release()
        close_log_handlers()


def _train(cfg, options, dataset, device, rank, world_size):
    identity = run_identity(cfg, dataset, world_size)
    resume_path, _ = check_resumable(cfg, identity)
    num_classes = dataset.num_train_pids
    train_records = dataset.train
    pids = [record.pid for record in train_records]
    P, K = cfg.SOLVER.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE, cfg.DATALOADER.NUM_INSTANCE
    if rank == 0:
        logger.info("%s", dataset.summary())

    build_cfg = cfg.clone()
    build_cfg.defrost()
    build_cfg.MODEL.PRETRAIN_CHOICE = "imagenet"  # 'self' in the PixelFade ymls is the protection side's
    model = build_model(build_cfg, num_classes)
    if not cfg.MODEL.PRETRAIN_PATH and rank == 0:
        logger.warning(
            "MODEL.PRETRAIN_PATH is empty: the backbone starts from random weights "
            "(MODEL.INIT_SEED=%d), not ImageNet; expect far lower accuracy than the reference",
            cfg.MODEL.INIT_SEED,
        )
    feat_dim = model.in_planes
    if cfg.MODEL.CENTER_LOSS == "on" and feat_dim != cfg.MODEL.CENTER_FEAT_DIM and rank == 0:
        logger.info(
            "center loss on %d-d features (the backbone's), not MODEL.CENTER_FEAT_DIM=%d",
            feat_dim,
            cfg.MODEL.CENTER_FEAT_DIM,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.SOLVER.SEED)
        criterion = AGWCriterion.from_config(cfg, num_classes, feat_dim)
    model.to(device)
    criterion.to(device)
    optimizer = build_optimizer(cfg, model)
    center_optimizer = build_center_optimizer(cfg, criterion)
    scheduler = WarmupMultiStepLR.from_config(optimizer, cfg)
    use_amp = cfg.SOLVER.AMP != "off" and torch.device(device).type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.SOLVER.AMP == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if world_size > 1:
        model = idist.auto_model(model, sync_bn=False)

    batches = RankSlicedBatches(IdentityBatchSampler(pids, P, K, seed=cfg.SOLVER.SEED), K, world_size, rank)
    pin = torch.device(device).type == "cuda"
    train_data = EpochData(
        ImageDataset(train_records, build_train_transform(cfg)), batches, loader_workers(cfg.DATALOADER.NUM_WORKERS), pin
    )
    epoch_length = max_batches_per_epoch(pids, P, K)
    eval_recs, num_query = eval_records(dataset)
    eval_loader = build_loader(eval_recs, build_eval_transform(cfg), cfg.TEST.IMS_PER_BATCH,
                               loader_workers(cfg.DATALOADER.NUM_WORKERS))
    center_weight = float(cfg.SOLVER.CENTER_LOSS_WEIGHT)
    timer = {"last": time.perf_counter()}

    def train_step(engine, batch):
        model.train()
        images = batch["image"].to(device, non_blocking=True)
        targets = torch.as_tensor(batch["pid"]).to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if center_optimizer is not None:
            center_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype, enabled=use_amp):
            logits, pooled = model(images)
        terms = criterion(logits, pooled, targets)
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        if center_optimizer is not None:
            scaler.unscale_(center_optimizer)
            rescale_center_gradient(criterion, center_weight, world_size)
            scaler.step(center_optimizer)
        scaler.update()
        now = time.perf_counter()
        seconds, timer["last"] = now - timer["last"], now
        output = {key: float(value.detach()) for key, value in terms.items()}
        output["images_per_s"] = images.shape[0] * world_size / max(seconds, 1e-9)
        return output

    trainer = Engine(train_step)
    trainer.logger.setLevel(logging.CRITICAL)
    progress = TrainProgress(identity)
    loss_names = ["loss", "id", "triplet"] + (["center"] if center_optimizer is not None else [])
    for name in loss_names + ["images_per_s"]:
        # The mean over the current epoch's steps so far (reset when an epoch starts), as the bar shows it.
        Average(output_transform=lambda out, name=name: out[name]).attach(
            trainer, name, usage=SingleEpochRunningBatchWise())
    if options.show_progress and rank == 0:
        attach_progress(trainer, "train", metric_names=loss_names + ["images_per_s"])
    epoch_state = {}

    @trainer.on(Events.EPOCH_STARTED)
    def _start_epoch(engine):
        epoch = engine.state.epoch
        seed_everything(epoch_seed(cfg.SOLVER.SEED, epoch, rank))
        batches.set_epoch(epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        epoch_state.update(count=0, total=len(batches), sums={}, started=time.perf_counter(), images=0)
        timer["last"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _count(engine):
        output = engine.state.output
        if not math.isfinite(output["loss"]):
            raise NonFiniteError(
                f"the training loss is {output['loss']} at epoch {engine.state.epoch}: training "
                f"diverged; try a lower SOLVER.BASE_LR (now {cfg.SOLVER.BASE_LR})"
            )
        epoch_state["count"] += 1
        epoch_state["images"] += engine.state.batch["image"].shape[0] * world_size
        for key in loss_names:
            epoch_state["sums"][key] = epoch_state["sums"].get(key, 0.0) + output[key]
        progress.steps += 1
        if rank == 0 and progress.steps % cfg.SOLVER.LOG_PERIOD == 0:
            logger.info(
                "epoch %d iteration %d/%d: %s",
                engine.state.epoch,
                epoch_state["count"],
                epoch_state["total"],
                ", ".join(f"{k} {output[k]:.4f}" for k in loss_names),
            )
        if epoch_state["count"] >= epoch_state["total"]:
            engine.terminate_epoch()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _align_iteration(engine):
        # ignite counts iterations as epoch * epoch_length; keep it so for its progress bar.
        engine.state.iteration = engine.state.epoch * epoch_length

    @trainer.on(Events.EPOCH_COMPLETED)
    def _end_epoch(engine):
        epoch = engine.state.epoch
        seconds = time.perf_counter() - epoch_state["started"]
        count = max(1, epoch_state["count"])
        record = {key: epoch_state["sums"][key] / count for key in loss_names}
        record.update(
            lr=lr_at_epoch(cfg, epoch),
            batches=epoch_state["count"],
            seconds=round(seconds, 3),
            images_per_s=epoch_state["images"] / max(seconds, 1e-9),
        )
        progress.epochs[epoch] = record
        progress.epoch = epoch
        if rank == 0:
            logger.info(
                "epoch %d/%d: lr %.3g, %s, %d batches, %.1f s, %.1f images/s",
                epoch,
                cfg.SOLVER.MAX_EPOCHS,
                record["lr"],
                ", ".join(f"{k} {record[k]:.4f}" for k in loss_names),
                record["batches"],
                seconds,
                record["images_per_s"],
            )

    def should_evaluate(engine, epoch):
        return epoch % cfg.SOLVER.EVAL_PERIOD == 0 or epoch == cfg.SOLVER.MAX_EPOCHS

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=should_evaluate))
    def _evaluate(engine):
        if rank == 0:
            module = model.module if hasattr(model, "module") else model
            with torch.random.fork_rng(devices=[]):
                scores = evaluate(module, eval_loader, eval_recs, num_query, cfg, device)
            progress.evaluations[engine.state.epoch] = scores
            logger.info(
                "epoch %d evaluation: Rank-1 %.2f%%, Rank-5 %.2f%%, Rank-10 %.2f%%, mAP %.2f%%, mINP %.2f%%",
                engine.state.epoch,
                *(100 * scores[k] for k in METRIC_KEYS),
            )
        idist.barrier()

    def should_save(engine, epoch):
        return epoch % cfg.SOLVER.CHECKPOINT_PERIOD == 0 or epoch == cfg.SOLVER.MAX_EPOCHS

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=should_save))
    def _save_model(engine):
        if rank == 0:
            state = plain_state_dict(model)
            path = os.path.join(cfg.OUTPUT_DIR, model_filename(cfg, engine.state.epoch))
            atomic_write(path, lambda handle: torch.save(state, handle))
            logger.info("model weights: %s", path)

    to_save = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "progress": progress}
    if center_optimizer is not None:
        to_save.update(center_param=criterion.center, optimizer_center=center_optimizer)
    if scaler.is_enabled():
        to_save["scaler"] = scaler
    checkpointer = Checkpoint(
        to_save,
        AtomicCheckpointSaver(cfg.OUTPUT_DIR) if rank == 0 else _NoSave(),
        filename_prefix=CHECKPOINT_PREFIX,
        n_saved=1,
        include_self=True,
        global_step_transform=lambda engine, _: engine.state.epoch,
    )
    # The resume point follows every epoch (the latest only, replaced atomically); the model files
    # above keep SOLVER.CHECKPOINT_PERIOD.
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=should_save))
    def _write_results(engine):
        if rank == 0:
            write_results(cfg, progress, run_info(cfg, dataset, device, world_size))

    if options.on_trainer is not None:
        options.on_trainer(trainer)

    if resume_path is not None:
        saved, _, done = read_training_checkpoint(resume_path)
        Checkpoint.load_objects({**to_save, "checkpointer": checkpointer}, saved)
        if rank == 0:
            logger.info("resuming from %s after epoch %d", resume_path, done)
        if done >= cfg.SOLVER.MAX_EPOCHS:
            if rank == 0:
                logger.info("training already finished at epoch %d (SOLVER.MAX_EPOCHS %d)", done, cfg.SOLVER.MAX_EPOCHS)
                return write_results(cfg, progress, run_info(cfg, dataset, device, world_size))
            return None
        trainer.load_state_dict({"epoch": done, "epoch_length": epoch_length, "max_epochs": cfg.SOLVER.MAX_EPOCHS})
    if rank == 0:
        logger.info(
            "training %s (%d classes, %d-d features) for %d epochs on %s: %d processes x %d ids x %d images "
            "(effective batch %d), %s",
            cfg.MODEL.NAME,
            num_classes,
            feat_dim,
            cfg.SOLVER.MAX_EPOCHS,
            device,
            world_size,
            P // world_size,
            K,
            P * K,
            "WRT" if cfg.MODEL.WEIGHT_REGULARIZED_TRIPLET == "on" else f"hard triplet (margin {cfg.SOLVER.MARGIN})",
        )
    trainer.run(train_data, max_epochs=cfg.SOLVER.MAX_EPOCHS, epoch_length=epoch_length)
    if rank == 0:
        return write_results(cfg, progress, run_info(cfg, dataset, device, world_size))
    return None


class _NoSave(BaseSaveHandler):
    """Save handler of ranks other than 0: rank 0 writes the files."""

    def __call__(self, checkpoint, filename, metadata=None):
        pass

    def remove(self, filename):
        pass


def run_info(cfg, dataset, device, world_size):
    return {
        "model": cfg.MODEL.NAME,
        "dataset": cfg.DATASETS.NAMES,
        "train_ids": dataset.num_train_pids,
        "train_images": len(dataset.train),
        "device": str(device),
        "processes": world_size,
        "effective_batch": cfg.SOLVER.IMS_PER_BATCH,
        "max_epochs": cfg.SOLVER.MAX_EPOCHS,
        "triplet": "WRT" if cfg.MODEL.WEIGHT_REGULARIZED_TRIPLET == "on" else "hard",
        "center_loss": cfg.MODEL.CENTER_LOSS,
        "pretrain_path": cfg.MODEL.PRETRAIN_PATH,
        "model_files": sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth")),
    }


def results_json(output_dir):
    with open(os.path.join(output_dir, "results.json")) as handle:
        return json.load(handle)
