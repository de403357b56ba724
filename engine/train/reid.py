"""Training an AGW authorization model (README, "Training an authorization model") with an ignite trainer.

``run`` takes settings checked once (``engine.train.reid_settings``), loads the data set and reads
any checkpoint to resume once, all before anything is written, then trains in one process, under
torchrun, or in ``nproc_per_node`` spawned processes (``engine.common.launcher``). The trainer is
``engine.train.reid_engine``'s Engine with its handlers; the recipe is ReID-Survey's:

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
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import ignite.distributed as idist
from ignite.utils import setup_logger

from configs import save_config
from data.loaders import build_loader, eval_records
from data.transforms import build_eval_transform
from engine.common import launcher
from engine.common.resume import find_resume_point, restore
from engine.train.reid_engine import (
    attach_checkpointing,
    attach_epoch_setup,
    attach_epoch_summary,
    attach_evaluation,
    attach_model_files,
    attach_results,
    attach_step_accounting,
    build_epoch_data,
    build_reid_parts,
    create_reid_trainer,
)
from engine.train.reid_recipe import TrainProgress, evaluate, model_filename
from engine.train.reid_results import results_json, run_info, write_results
from engine.train.reid_settings import (
    ReidTrainSettings,
    identity_defaults,
    ids_per_rank,
    load_train_dataset,
    run_identity,
    train_settings,
    validate_train_config,
)
from modeling import resolve_device
from utils.cpus import configure_threads, loader_workers
from utils.file_io import FolderLock
from utils.logs import close_log_handlers
from utils.progress import attach_progress

# The trainer's Python API (experiments/demo.py, tests): the run and the pieces a caller scores or names files with.
__all__ = [
    "ReidTrainSettings", "TrainOptions", "evaluate", "load_train_dataset", "model_filename",
    "results_json", "run", "run_identity", "validate_train_config",
]

logger = logging.getLogger("pixelfade.train")


@dataclass
class TrainOptions:
    """What a run needs beyond the config."""

    show_progress: bool = True
    # Called with the trainer after every handler is attached (tests interrupt runs with it).
    on_trainer: Callable | None = None


def run(cfg, options=None, nproc_per_node=None, backend=None):
    """Check everything once, then train in one process, under torchrun, or in spawned ones.

    ``cfg``: ``ReidTrainSettings`` (train_reid.py's, checked when its config was built) or a plain
    config, checked here. Returns the results dict (None in a run of several processes).
    """
    options = options or TrainOptions()
    settings = train_settings(cfg)
    cfg = settings.cfg
    world_size = launcher.world_size(nproc_per_node)
    ids_per_rank(settings, world_size)
    if not launcher.under_launcher():
        resolve_device(cfg.MODEL.DEVICE)
    dataset = load_train_dataset(cfg)
    resume = find_resume_point(cfg.OUTPUT_DIR, run_identity(cfg, dataset, world_size), defaults=identity_defaults())
    return launcher.launch(train_process, settings, options, dataset, resume, nproc_per_node=nproc_per_node,
                           backend=backend, device=cfg.MODEL.DEVICE)


def train_process(local_rank, settings, options, dataset, resume):
    """One process's run: rank 0 holds the folder's lock, its log.txt and config.yaml."""
    cfg = settings.cfg
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
        return _train(settings, options, dataset, resume, (device, rank, world_size))
    finally:
        if lock is not None:
            lock.release()
        close_log_handlers()


def evaluator(cfg, dataset, model, device):
    """``evaluate()`` of the model on the query + gallery split (the unwrapped module)."""
    records, num_query = eval_records(dataset)
    loader = build_loader(records, build_eval_transform(cfg), cfg.TEST.IMS_PER_BATCH,
                          loader_workers(cfg.DATALOADER.NUM_WORKERS))
    module = model.module if hasattr(model, "module") else model
    return lambda: evaluate(module, loader, records, num_query, cfg, device)


def _train(settings, options, dataset, resume, process):
    cfg = settings.cfg
    device, rank, world_size = process
    if rank == 0:
        logger.info("%s", dataset.summary())
    parts = build_reid_parts(cfg, dataset.num_train_pids, device, rank, world_size)
    batches, train_data, epoch_length = build_epoch_data(cfg, dataset.train, settings, device, rank, world_size)
    progress = TrainProgress(run_identity(cfg, dataset, world_size))
    trainer = create_reid_trainer(parts, float(cfg.SOLVER.CENTER_LOSS_WEIGHT))
    if options.show_progress and rank == 0:
        attach_progress(trainer, "train", metric_names=parts.loss_names + ["images_per_s"])
    attach_epoch_setup(trainer, cfg.SOLVER.SEED, batches, parts.scheduler, rank)
    tally = attach_step_accounting(trainer, cfg, progress, batches, parts, rank)
    attach_epoch_summary(trainer, cfg, progress, tally, parts.loss_names, epoch_length, rank)
    attach_evaluation(trainer, cfg, evaluator(cfg, dataset, parts.model, device), progress, rank)
    attach_model_files(trainer, cfg, parts.model, rank)
    to_save = parts.to_save(progress)
    checkpointer = attach_checkpointing(trainer, to_save, cfg.OUTPUT_DIR, rank)

    def finish():
        return write_results(cfg, progress, run_info(cfg, dataset, device, world_size)) if rank == 0 else None

    attach_results(trainer, cfg, finish)
    if options.on_trainer is not None:
        options.on_trainer(trainer)
    if resume is not None:
        restore(resume, to_save, checkpointer)
        if rank == 0:
            logger.info("resuming from %s after epoch %d", resume.path, resume.epoch)
        if resume.epoch >= cfg.SOLVER.MAX_EPOCHS:
            if rank == 0:
                logger.info("training already finished at epoch %d (SOLVER.MAX_EPOCHS %d)", resume.epoch,
                            cfg.SOLVER.MAX_EPOCHS)
            return finish()
        trainer.load_state_dict({"epoch": resume.epoch, "epoch_length": epoch_length,
                                 "max_epochs": cfg.SOLVER.MAX_EPOCHS})
    if rank == 0:
        log_start(cfg, settings, dataset, parts)
    trainer.run(train_data, max_epochs=cfg.SOLVER.MAX_EPOCHS, epoch_length=epoch_length)
    return finish()


def log_start(cfg, settings, dataset, parts):
    P, K = settings.ids_per_batch, settings.num_instances
    logger.info(
        "training %s (%d classes, %d-d features) for %d epochs on %s: %d processes x %d ids x %d images "
        "(effective batch %d), %s",
        cfg.MODEL.NAME,
        dataset.num_train_pids,
        parts.feat_dim,
        cfg.SOLVER.MAX_EPOCHS,
        parts.device,
        parts.world_size,
        P // parts.world_size,
        K,
        P * K,
        "WRT" if cfg.MODEL.WEIGHT_REGULARIZED_TRIPLET == "on" else f"hard triplet (margin {cfg.SOLVER.MARGIN})",
    )
