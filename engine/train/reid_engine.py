"""The AGW trainer as ignite composes one: ``create_reid_trainer`` (the Engine and its step) and ``attach_*`` handlers.

Each ``attach_*`` adds one concern (per-epoch set-up, step accounting, the epoch summary,
evaluation, model files, the resume point, the results files); ``engine.train.reid`` builds the
parts, attaches them in this order and runs. Only rank 0 logs and writes; every rank steps.
"""
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average
from ignite.metrics.metric import SingleEpochRunningBatchWise

from data.loaders import ImageDataset
from data.samplers import IdentityBatchSampler
from data.transforms import build_train_transform
from engine.common.resume import epoch_checkpointer
from engine.train.reid_recipe import (
    METRIC_KEYS,
    EpochData,
    RankSlicedBatches,
    build_center_optimizer,
    build_optimizer,
    max_batches_per_epoch,
    model_filename,
    plain_state_dict,
    rescale_center_gradient,
)
from engine.train.schedule import WarmupMultiStepLR, lr_at_epoch
from engine.train.seeding import rank_epoch_seed, seed_everything
from modeling import build_model
from modeling.losses import AGWCriterion
from utils.cpus import loader_workers
from utils.errors import NonFiniteError
from utils.file_io import atomic_write

logger = logging.getLogger("pixelfade.train")


@dataclass
class ReidParts:
    """What the step and the handlers share: the model (wrapped when several processes train), losses, optimizers."""

    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    center_optimizer: torch.optim.Optimizer | None
    scheduler: WarmupMultiStepLR
    scaler: torch.amp.GradScaler
    device: object
    feat_dim: int
    world_size: int
    use_amp: bool
    amp_dtype: torch.dtype

    @property
    def loss_names(self):
        return ["loss", "id", "triplet"] + (["center"] if self.center_optimizer is not None else [])

    def to_save(self, progress):
        """The objects of the resume point (the centers and their optimizer, the scaler, only when used)."""
        objects = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "progress": progress}
        if self.center_optimizer is not None:
            objects.update(center_param=self.criterion.center, optimizer_center=self.center_optimizer)
        if self.scaler.is_enabled():
            objects["scaler"] = self.scaler
        return objects


def build_reid_parts(cfg, num_classes, device, rank, world_size):
    """Model, criterion (centers seeded from SOLVER.SEED), optimizers, schedule and AMP scaler on ``device``."""
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
        logger.info("center loss on %d-d features (the backbone's), not MODEL.CENTER_FEAT_DIM=%d",
                    feat_dim, cfg.MODEL.CENTER_FEAT_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.SOLVER.SEED)
        criterion = AGWCriterion.from_config(cfg, num_classes, feat_dim)
    model.to(device)
    criterion.to(device)
    optimizer = build_optimizer(cfg, model)
    use_amp = cfg.SOLVER.AMP != "off" and torch.device(device).type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.SOLVER.AMP == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if world_size > 1:
        model = idist.auto_model(model, sync_bn=False)
    return ReidParts(model, criterion, optimizer, build_center_optimizer(cfg, criterion),
                     WarmupMultiStepLR.from_config(optimizer, cfg), scaler, device, feat_dim, world_size, use_amp,
                     amp_dtype)


def build_epoch_data(cfg, records, settings, device, rank, world_size):
    """(this rank's PK batches, the trainer's lazily loaded data, the bound of an epoch's batches)."""
    pids = [record.pid for record in records]
    P, K = settings.ids_per_batch, settings.num_instances
    batches = RankSlicedBatches(IdentityBatchSampler(pids, P, K, seed=cfg.SOLVER.SEED), K, world_size, rank)
    pin = torch.device(device).type == "cuda"
    data = EpochData(ImageDataset(records, build_train_transform(cfg)), batches,
                     loader_workers(cfg.DATALOADER.NUM_WORKERS), pin)
    return batches, data, max_batches_per_epoch(pids, P, K)


def create_reid_trainer(parts, center_loss_weight):
    """An Engine whose step is one AGW step (AMP when asked on CUDA); the losses' running epoch means as metrics."""
    p = parts
    timer = {"last": time.perf_counter()}

    def train_step(engine, batch):
        p.model.train()
        images = batch["image"].to(p.device, non_blocking=True)
        targets = torch.as_tensor(batch["pid"]).to(p.device, non_blocking=True)
        p.optimizer.zero_grad(set_to_none=True)
        if p.center_optimizer is not None:
            p.center_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(p.device).type, dtype=p.amp_dtype, enabled=p.use_amp):
            logits, pooled = p.model(images)
        terms = p.criterion(logits, pooled, targets)
        p.scaler.scale(terms["loss"]).backward()
        p.scaler.step(p.optimizer)
        if p.center_optimizer is not None:
            p.scaler.unscale_(p.center_optimizer)
            rescale_center_gradient(p.criterion, center_loss_weight, p.world_size)
            p.scaler.step(p.center_optimizer)
        p.scaler.update()
        now = time.perf_counter()
        seconds, timer["last"] = now - timer["last"], now
        output = {key: float(value.detach()) for key, value in terms.items()}
        output["images_per_s"] = images.shape[0] * p.world_size / max(seconds, 1e-9)
        return output

    trainer = Engine(train_step)
    trainer.logger.setLevel(logging.CRITICAL)
    for name in parts.loss_names + ["images_per_s"]:
        # The mean over the current epoch's steps so far (reset when an epoch starts), as the bar shows it.
        Average(output_transform=lambda out, name=name: out[name]).attach(
            trainer, name, usage=SingleEpochRunningBatchWise())
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: timer.update(last=time.perf_counter()))
    return trainer


def attach_epoch_setup(trainer, seed, batches, scheduler, rank):
    """Before each epoch: the global RNGs from (seed, epoch, rank), the sampler from (seed, epoch), the lr."""

    @trainer.on(Events.EPOCH_STARTED)
    def _start_epoch(engine):
        epoch = engine.state.epoch
        seed_everything(rank_epoch_seed(seed, epoch, rank))
        batches.set_epoch(epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()


def attach_step_accounting(trainer, cfg, progress, batches, parts, rank):
    """After each step: refuse a non-finite loss, add up the epoch's losses, log every LOG_PERIOD steps.

    The epoch ends after this rank's batches (their number varies a little); returns the epoch's tally.
    """
    tally = {}
    names = parts.loss_names

    @trainer.on(Events.EPOCH_STARTED)
    def _reset(engine):
        tally.update(count=0, total=len(batches), sums={}, started=time.perf_counter(), images=0)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _count(engine):
        output = engine.state.output
        if not math.isfinite(output["loss"]):
            raise NonFiniteError(
                f"the training loss is {output['loss']} at epoch {engine.state.epoch}: training "
                f"diverged; try a lower SOLVER.BASE_LR (now {cfg.SOLVER.BASE_LR})"
            )
        tally["count"] += 1
        tally["images"] += engine.state.batch["image"].shape[0] * parts.world_size
        for key in names:
            tally["sums"][key] = tally["sums"].get(key, 0.0) + output[key]
        progress.steps += 1
        if rank == 0 and progress.steps % cfg.SOLVER.LOG_PERIOD == 0:
            logger.info("epoch %d iteration %d/%d: %s", engine.state.epoch, tally["count"], tally["total"],
                        ", ".join(f"{k} {output[k]:.4f}" for k in names))
        if tally["count"] >= tally["total"]:
            engine.terminate_epoch()

    return tally


def epoch_record(cfg, epoch, tally, names, seconds):
    """One ``epochs`` row of results.json: mean losses, lr, batches, seconds and images/s."""
    count = max(1, tally["count"])
    record = {key: tally["sums"][key] / count for key in names}
    record.update(lr=lr_at_epoch(cfg, epoch), batches=tally["count"], seconds=round(seconds, 3),
                  images_per_s=tally["images"] / max(seconds, 1e-9))
    return record


def attach_epoch_summary(trainer, cfg, progress, tally, names, epoch_length, rank):
    """After each epoch: ignite's iteration count realigned, the epoch's record in ``progress``, one log line."""

    @trainer.on(Events.EPOCH_COMPLETED)
    def _align_iteration(engine):
        # ignite counts iterations as epoch * epoch_length; keep it so for its progress bar.
        engine.state.iteration = engine.state.epoch * epoch_length

    @trainer.on(Events.EPOCH_COMPLETED)
    def _end_epoch(engine):
        epoch = engine.state.epoch
        seconds = time.perf_counter() - tally["started"]
        record = epoch_record(cfg, epoch, tally, names, seconds)
        progress.epochs[epoch] = record
        progress.epoch = epoch
        if rank == 0:
            logger.info("epoch %d/%d: lr %.3g, %s, %d batches, %.1f s, %.1f images/s", epoch,
                        cfg.SOLVER.MAX_EPOCHS, record["lr"], ", ".join(f"{k} {record[k]:.4f}" for k in names),
                        record["batches"], seconds, record["images_per_s"])


def every(period, last):
    """An event filter: epochs that are multiples of ``period``, and the ``last`` one."""
    return lambda engine, epoch: epoch % period == 0 or epoch == last


def attach_evaluation(trainer, cfg, evaluate, progress, rank):
    """Every EVAL_PERIOD epochs and at the end, rank 0 scores ``evaluate()`` (the RNGs untouched); all wait."""

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=every(cfg.SOLVER.EVAL_PERIOD, cfg.SOLVER.MAX_EPOCHS)))
    def _evaluate(engine):
        if rank == 0:
            with torch.random.fork_rng(devices=[]):
                scores = evaluate()
            progress.evaluations[engine.state.epoch] = scores
            logger.info("epoch %d evaluation: Rank-1 %.2f%%, Rank-5 %.2f%%, Rank-10 %.2f%%, mAP %.2f%%, mINP %.2f%%",
                        engine.state.epoch, *(100 * scores[k] for k in METRIC_KEYS))
        idist.barrier()


def attach_model_files(trainer, cfg, model, rank):
    """``<MODEL.NAME>_model_<epoch>.pth`` (a plain state dict) every CHECKPOINT_PERIOD epochs and at the end."""

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=every(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_EPOCHS)))
    def _save_model(engine):
        if rank == 0:
            state = plain_state_dict(model)
            path = os.path.join(cfg.OUTPUT_DIR, model_filename(cfg, engine.state.epoch))
            atomic_write(path, lambda handle: torch.save(state, handle))
            logger.info("model weights: %s", path)


def attach_checkpointing(trainer, to_save, output_dir, rank):
    """The resume point after every epoch (the latest only, replaced atomically; rank 0 writes it)."""
    checkpointer = epoch_checkpointer(to_save, output_dir, writes=rank == 0)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)
    return checkpointer


def attach_results(trainer, cfg, write_results):
    """``write_results()`` (results.json / .md and the curves) with each model file."""
    every_save = every(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_EPOCHS)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(event_filter=every_save), lambda engine: write_results())
