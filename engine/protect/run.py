"""A whole protection run: config in; protected images, features and Re-ID scores out.

``run`` checks everything a run needs (settings, data set, every image, the checkpoint) before
anything is written, then runs ``run_protection`` in each process (directly, under torchrun, or
spawned by ``ignite.distributed.Parallel``). Each split goes through the protection Engine
(``protect_engine``) in the reference's order: train first when pairs are saved for the attack,
then query + gallery as "test". Rank 0 gathers the features by image index, scores the four
protected/original modes and writes the results.
"""

import logging
import logging.handlers
import os
import time
from dataclasses import dataclass

import ignite.distributed as idist
import torch
from ignite.utils import setup_logger

from configs import config_with_flags, keys_set_by_user, save_config
from configs.keys import get_key
from data.datasets.image_folder import describe_skipped, protected_relative_name
from data.loaders import ImageDataset
from data.splits import plan_splits
from engine.common import launcher
from engine.common.trial_weights import per_trial, trial_checkpoints_identity
from engine.protect import text_image
from engine.protect.cross_modality import (
    apply_input_defaults,
    is_cross_modality,
    pair_selection,
    score_cross_modality,
    scoring_keys,
    scoring_models,
    split_models,
    split_store,
    split_transform,
)
from engine.protect.engine import BatchSchedule, attach_outputs, create_protect_engine
from engine.protect.protector import Protector
from engine.protect.results import (
    RECORD_STATS,
    gather_split,
    protection_cost,
    score,
    summarize_statistics,
    warn_above_epsilon,
    write_folder_features,
    write_results,
    write_statistics_csv,
)
from engine.protect.run_store import RunStore
from engine.protect.settings import validate_protect_config
from modeling import build_authorization_model, feature_dim, resolve_device
from modeling.authorization import build_eval_models
from utils.cpus import configure_threads, loader_workers
from utils.errors import CheckpointError, ConfigError
from utils.file_io import FolderLock, file_digest, weights_label
from utils.logs import close_log_handlers

logger = logging.getLogger("pixelfade.protect")

# Keys whose value changes what a finished batch holds; a resumed run must match all of them.
# AVIH settings that change its output (its key model is fingerprinted by content).
AVIH_RESULT_KEYS = ("KEY_NGF", "STEPS", "INIT", "ALPHA", "MOMENTUM", "KEY_WEIGHT", "TEXTURE_WEIGHT")
RESULT_KEYS = (
    "PIXELFADE.METHOD",
    "PIXELFADE.MODE",
    "PIXELFADE.BATCH_SIZE",
    "PIXELFADE.MAX_ITER",
    "PIXELFADE.FADE_NUM_ITER",
    "PIXELFADE.WARMUP_ITER",
    "PIXELFADE.MOMENTUM",
    "PIXELFADE.BETA",
    "PIXELFADE.BETA_TEMP",
    "PIXELFADE.EPSILON",
    "PIXELFADE.TAIL_ITERS",
    "PIXELFADE.SEED",
    "PIXELFADE.PRECISION",
    "PIXELFADE.CHANNELS_LAST",
    "PIXELFADE.BLUR_SIGMA",
    "PIXELFADE.MOSAIC_BLOCK",
    "PIXELFADE.NOISE_STD",
    "PIXELFADE.SAVE_IMAGE_NPY",
    "PIXELFADE.SAVE_PNG",
    "PIXELFADE.TRAIN_ORDER",
    "PIXELFADE.REPLACEMENT",
    "MODEL.NAME",
    "MODEL.LAST_STRIDE",
    "MODEL.GENERALIZED_MEAN_POOL",
    "INPUT.IMG_SIZE",
    "INPUT.PIXEL_MEAN",
    "INPUT.PIXEL_STD",
    "INPUT.PROB",
    "DATALOADER.NUM_INSTANCE",
    "DATASETS.NAMES",
    "DATASETS.CUHK03_LABELED",
    "MODEL.FORMAT",
    "MODEL.FACTORY",
    "MODEL.FASTREID_MAXPOOL",
    "MODEL.FASTREID_POOL",
    "INPUT.MODEL_INPUT",
    "INPUT.PIXEL_RANGE",
    "PIXELFADE.EPSILON_MODE",
    "TEST.EVAL_MODELS",
)


@dataclass
class ProtectOptions:
    """What a run needs beyond the config: whether an untrained model is allowed, and the bar."""

    random_init: bool = False
    show_progress: bool = True


def build_protect_config(config_file, opts, flag_values, flag_of_key=None):
    """Defaults < --config_file < trailing KEY VALUE overrides < flags; validated and frozen."""
    cfg = config_with_flags(config_file, opts, flag_values, "protect")
    cfg.defrost()
    keys = keys_set_by_user(config_file, opts, flag_values)
    apply_input_defaults(cfg, keys)
    text_image.apply_input_defaults(cfg, keys)
    cfg.freeze()
    validate_protect_config(cfg, flag_of_key)
    return cfg


def config_value(cfg, key):
    value = get_key(cfg, key)
    return list(value) if isinstance(value, (list, tuple)) else value


def run_fingerprint(cfg, checkpoint_digest):
    """Everything that decides what a finished batch holds, key by key.

    The images themselves are not part of it: each batch record names its images, so a data set
    that moved, or lost a bad file, resumes with every batch that still holds the same images.
    """
    fingerprint = {key: config_value(cfg, key) for key in RESULT_KEYS}
    fingerprint["checkpoint"] = checkpoint_digest
    if cfg.PIXELFADE.METHOD == "avih":
        fingerprint.update({f"AVIH.{key}": config_value(cfg, f"AVIH.{key}") for key in AVIH_RESULT_KEYS})
        fingerprint["avih_key_model"] = file_digest(cfg.AVIH.KEY_MODEL)
    if cfg.PIXELFADE.MODE == "reference":
        fingerprint["processes"] = idist.get_world_size()
    if is_cross_modality(cfg):
        fingerprint.update({key: config_value(cfg, key) for key in ("MODEL.VI_FEATURE", "DATASETS.TRIALS")})
        fingerprint["input_transform"] = "agw_vi test transform (Lanczos resize, then bilinear)"
    fingerprint.update(text_image.fingerprint_entries(cfg))
    return fingerprint


def checkpoint_identity(cfg, random_init):
    """A digest that identifies the authorization model's weights."""
    if cfg.TEST.WEIGHT:
        if per_trial(cfg):
            return trial_checkpoints_identity(cfg, file_digest)
        if not os.path.isfile(cfg.TEST.WEIGHT):
            raise CheckpointError(
                f"Re-ID checkpoint not found: {cfg.TEST.WEIGHT} (--reid_ckpt_path / TEST.WEIGHT); "
                "see ckpt/README.md for the released AGW files"
            )
        return weights_label(cfg.TEST.WEIGHT)
    if random_init:
        return f"UNTRAINED {cfg.MODEL.NAME}, random weights from MODEL.INIT_SEED={cfg.MODEL.INIT_SEED}"
    raise ConfigError(
        "no Re-ID checkpoint given: pass --reid_ckpt_path (TEST.WEIGHT), or --random_init for an untrained model"
    )


def load_authorization_model(cfg, device, checkpoint_path=None):
    """The model of ``checkpoint_path`` (default TEST.WEIGHT), in the configured memory layout."""
    path = cfg.TEST.WEIGHT if checkpoint_path is None else checkpoint_path
    model = build_authorization_model(cfg, path, device, logger)
    if cfg.PIXELFADE.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def png_names(split, plan, dataset_root, plain_folder):
    """Where each protected PNG goes: the input tree mirrored for a folder, index-prefixed otherwise."""
    names = {}
    for index, record in enumerate(plan.records):
        if plain_folder:
            names[index] = os.path.join(
                "protected", protected_relative_name(os.path.relpath(record.path, dataset_root))
            )
        else:
            stem = os.path.splitext(os.path.basename(record.path))[0]
            names[index] = os.path.join("png", split, f"{index:06d}_{stem}.png")
    return names


def run(cfg, options, nproc_per_node=None, backend=None):
    """Check everything, then protect in one process, under torchrun, or in ``nproc_per_node`` spawned ones."""
    setup_logger("pixelfade", reset=True)
    try:
        checkpoint_digest = checkpoint_identity(cfg, options.random_init)
        plan = plan_splits(cfg)
    finally:
        close_log_handlers()
    if launcher.world_size(nproc_per_node) > 1:
        # A spawned process's error reaches this one as a traceback: check the weights fit here first.
        split_models(cfg, plan, "cpu", load_authorization_model)
    return launcher.launch(run_protection, cfg, options, plan, checkpoint_digest, nproc_per_node=nproc_per_node,
                           backend=backend, device=cfg.MODEL.DEVICE)


def run_protection(local_rank, cfg, options, plan, checkpoint_digest):
    """One process's run: open (or resume) the output folder, protect its shard of every split, score on rank 0."""
    rank = idist.get_rank()
    setup_logger("pixelfade", distributed_rank=rank, reset=True)
    if idist.get_world_size() > 1:
        configure_threads(cfg.SYSTEM.THREADS, processes=idist.get_nproc_per_node())
    # What is logged before the folder may be written (model loading) reaches log.txt once it is.
    early_records = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    logging.getLogger("pixelfade").addHandler(early_records)
    device = idist.device() if idist.get_world_size() > 1 else resolve_device(cfg.MODEL.DEVICE)
    started = time.perf_counter()
    # Exact resume and the same images run to run on CUDA need the same deterministic cuDNN kernels in every
    # process: autotuning (benchmark) may pick another algorithm in the next run, atomics-based ones vary.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    model, models = split_models(cfg, plan, device, load_authorization_model)
    text_image.require_text_tower(cfg, model)
    store = RunStore(cfg.OUTPUT_DIR)
    fingerprint = run_fingerprint(cfg, checkpoint_digest)
    lock = FolderLock(cfg.OUTPUT_DIR, "protect_image.py") if rank == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        if rank == 0:
            fresh = store.open_run(fingerprint)
            log = setup_logger("pixelfade", filepath=store.path("log.txt"), distributed_rank=rank, reset=True)
            early_records.setTarget(next(h for h in log.handlers if isinstance(h, logging.FileHandler)))
            early_records.close()
            save_config(cfg, cfg.OUTPUT_DIR)
            logger.info(
                "%s run in %s on %s, %d process(es)\n%s",
                "new" if fresh else "resumed",
                cfg.OUTPUT_DIR,
                device,
                idist.get_world_size(),
                plan.summary,
            )
            if plan.skipped:
                logger.warning("%s", describe_skipped(plan.skipped))
        idist.barrier()
        if rank != 0:
            store.open_run(fingerprint)
        eval_models = build_eval_models(cfg, device, logger)
        shards = protect_splits(cfg, options, plan, model, store, device, list(eval_models.values()), models)
        results = collect_results(cfg, plan, model, store, shards, eval_models, device)
        if rank == 0:
            results["run"] = {
                "method": cfg.PIXELFADE.METHOD,
                "mode": cfg.PIXELFADE.MODE,
                "dataset": cfg.DATASETS.NAMES,
                "checkpoint": checkpoint_digest,
                "device": str(device),
                "processes": idist.get_world_size(),
                "seconds_this_run": round(time.perf_counter() - started, 2),
                "num_query": attack_num_query(plan, attack_pair_selection(cfg, plan)),
                "features": "extracted from the final protected images (the reference scores the previous step's)",
            }
            results["cost"] = protection_cost(store, {split: spans for split, (spans, _) in shards.items()}, device)
            results["skipped"] = [{"path": path, "reason": reason} for path, reason in plan.skipped]
            write_results(store, cfg, results)
        return results
    finally:
        if lock is not None:
            lock.release()
        close_log_handlers()


def attack_pair_selection(cfg, plan):
    """Visible-infrared runs that save pairs write one trial's test images, each once (``PairSelection``)."""
    return pair_selection(cfg, plan) if is_cross_modality(cfg) and cfg.PIXELFADE.SAVE_IMAGE_NPY else None


def attack_num_query(plan, selection):
    """How many test pairs come first as the attack's queries (results.json ``run.num_query``)."""
    if selection is not None:
        return selection.num_query
    return plan.splits["test"].num_query if "test" in plan.splits else plan.num_query


def protect_splits(cfg, options, plan, model, store, device, eval_models=(), models=None):
    """Protect this process's shard of every split (skipping finished batches); returns the shards.

    ``models``: {split: model} where splits differ (visible-infrared: one stem per modality); one
    Protector per model, the random stream running on through the splits in order.
    """
    rank = idist.get_rank()
    models = models or {split: model for split in plan.splits}
    protectors = {}
    for split_model in models.values():
        if id(split_model) not in protectors:
            protectors[id(split_model)] = Protector.for_run(split_model, cfg, device, rank)
    extra_models = scoring_models(cfg, models)
    schedule = BatchSchedule()
    shards = {
        split: schedule.add_split(split, len(sp.records), cfg.PIXELFADE.BATCH_SIZE) for split, sp in plan.splits.items()
    }
    plain_folder = cfg.DATASETS.NAMES == "image_folder"
    transform = split_transform(cfg)
    selection = attack_pair_selection(cfg, plan)
    for split, split_plan in plan.splits.items():
        protector = protectors[id(models[split])]
        spans, shard = shards[split]
        pending = pending_batches(store, split, split_plan, spans, shard)
        if not pending:
            continue
        loader = torch.utils.data.DataLoader(
            ImageDataset(split_plan.records, transform, flips=split_plan.flips),
            batch_sampler=[list(range(*spans[i])) for i in pending],
            num_workers=loader_workers(cfg.DATALOADER.NUM_WORKERS),
            pin_memory=torch.device(device).type == "cuda",
        )
        engine = create_protect_engine(protector, device, cfg.PIXELFADE.BATCH_SIZE)
        # A failing step reaches the caller as its exception; ignite's own error log would repeat it.
        engine.logger.setLevel(logging.CRITICAL)
        attach_outputs(
            engine,
            split=split,
            method=protector.method,
            model=models[split],
            store=split_store(store, split_plan, selection),
            schedule=schedule,
            cfg=cfg,
            item_keys=split_plan.keys,
            png_paths=png_names(split, split_plan, plan.root, plain_folder),
            save_png=cfg.PIXELFADE.SAVE_PNG or plain_folder,
            show_progress=options.show_progress,
            eval_models=eval_models if split == "test" else extra_models.get(split, ()),
        )
        engine.run(loader, max_epochs=1)
        logger.info("%s: protected %d batches on rank %d", split, len(pending), rank)
    idist.barrier()
    if rank == 0:
        for split, (spans, _) in shards.items():
            store.remove_batches_from(split, len(spans))
    return shards


def pending_batches(store, split, plan, spans, shard):
    """The batches of ``shard`` not finished yet; a record of other images (a changed data set) is redone."""
    pending = []
    for batch_index in shard:
        start, stop = spans[batch_index]
        state = store.batch_state(split, batch_index, plan.keys[start:stop])
        if state != "done":
            pending.append(batch_index)
        if state == "stale":
            logger.info("%s batch %d holds other images than before; protecting it again", split, batch_index)
    if len(pending) < len(shard):
        logger.info(
            "%s: %d of %d batches of this process already done, resuming", split, len(shard) - len(pending), len(shard)
        )
    return pending


def collect_results(cfg, plan, model, store, shards, eval_models, device):
    """Gather every split's records by image index; on rank 0 write statistics and score the test split."""
    results = {"protection": {}}
    plain_folder = cfg.DATASETS.NAMES == "image_folder"
    save_png = cfg.PIXELFADE.SAVE_PNG or plain_folder
    dim = feature_dim(model, cfg, device)
    gathered_of = {}
    for split, split_plan in plan.splits.items():
        feature_keys = ["original_features", "protected_features"] + (["stored_features"] if save_png else [])
        row_shapes = {key: (dim,) for key in feature_keys}
        row_shapes.update({name: () for name in RECORD_STATS})
        if split == "test":
            for k, extra in enumerate(eval_models.values()):
                extra_dim = feature_dim(extra, cfg, device)
                row_shapes.update(
                    {f"eval{k}_original_features": (extra_dim,), f"eval{k}_protected_features": (extra_dim,)}
                )
        if split_plan.modality:
            row_shapes.update({key: (dim,) for key in scoring_keys(cfg)})
        gathered = gather_split(store, split, shards[split][1], len(split_plan.records), row_shapes)
        if idist.get_rank() != 0:
            continue
        gathered_of[split] = gathered
        stats = summarize_statistics(gathered, cfg.PIXELFADE.EPSILON, cfg.PIXELFADE.EPSILON_MODE)
        results["protection"][split] = stats
        warn_above_epsilon(cfg, split, stats)
        write_statistics_csv(store, split, split_plan, plan.root, gathered)
        if plain_folder:
            write_folder_features(store, split_plan, plan.root, gathered)
        if split == "test" and plan.captions:
            stored = {"reid_stored_png": "stored_features"} if save_png else {}
            protected_keys = {"reid": "protected_features", **stored}
            results.update(text_image.score_text_image(cfg, plan, model, gathered, protected_keys))
        elif split == "test":
            results["reid"] = score(cfg, gathered, split_plan, "protected_features")
            if save_png:
                results["reid_stored_png"] = score(cfg, gathered, split_plan, "stored_features")
            if eval_models:
                results["eval_models"] = {
                    label: score(cfg, gathered, split_plan, f"eval{k}_protected_features", f"eval{k}_original_features")
                    for k, label in enumerate(eval_models)
                }
    if plan.protocols and idist.get_rank() == 0:
        results.update(score_cross_modality(cfg, plan, gathered_of))
    return results
