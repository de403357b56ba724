"""A whole protection run: model and data in, protected images, features and Re-ID scores out.

``run`` checks everything a run needs (settings, data set, every image, the checkpoint) before
anything is written, then runs ``run_protection`` in each process (directly, under torchrun, or
spawned by ``ignite.distributed.Parallel``). Splits are protected in the reference's order (train
first when pairs are saved for the attack, then query + gallery as "test"); rank 0 gathers the
test features by image index and scores the four protected/original modes.
"""
import csv
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field

import ignite.distributed as idist
import torch
from ignite.utils import setup_logger

from configs import load_config, save_config
from data.datasets import build_dataset
from data.datasets.image_folder import (describe_skipped, find_name_collisions, folder_is_case_sensitive,
                                        protected_relative_name)
from data.image_check import check_images_readable
from data.loaders import eval_records
from data.samplers import flip_decisions, identity_balanced_batches
from data.transforms import build_eval_transform
from evaluation.protection_stats import STAT_NAMES
from evaluation.reid import evaluate_protection_modes, format_results_table
from modeling import build_authorization_model, resolve_device
from utils.errors import CheckpointError, ConfigError, DatasetError
from utils.file_io import FolderLock, atomic_torch_save

from .batch_protector import BatchProtector
from .distributed import gather_rows_by_index
from .protect_engine import BatchSchedule, SplitProtector
from .protect_settings import validate_protect_config
from .run_store import RunStore

logger = logging.getLogger("pixelfade.protect")

# Keys whose value changes what a finished batch holds; a resumed run must match all of them.
RESULT_KEYS = (
    "PIXELFADE.METHOD", "PIXELFADE.MODE", "PIXELFADE.BATCH_SIZE", "PIXELFADE.MAX_ITER",
    "PIXELFADE.FADE_NUM_ITER", "PIXELFADE.WARMUP_ITER", "PIXELFADE.MOMENTUM", "PIXELFADE.BETA",
    "PIXELFADE.BETA_TEMP", "PIXELFADE.EPSILON", "PIXELFADE.TAIL_ITERS", "PIXELFADE.SEED",
    "PIXELFADE.PRECISION", "PIXELFADE.CHANNELS_LAST", "PIXELFADE.BLUR_SIGMA", "PIXELFADE.MOSAIC_BLOCK",
    "PIXELFADE.NOISE_STD", "PIXELFADE.SAVE_IMAGE_NPY", "PIXELFADE.SAVE_PNG", "PIXELFADE.TRAIN_ORDER",
    "MODEL.NAME", "MODEL.LAST_STRIDE", "MODEL.GENERALIZED_MEAN_POOL", "INPUT.IMG_SIZE",
    "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD", "INPUT.PROB", "DATALOADER.NUM_INSTANCE", "DATASETS.NAMES",
    "DATASETS.CUHK03_LABELED",
)


@dataclass
class ProtectOptions:
    """What a run needs beyond the config: whether an untrained model is allowed, and the bar."""

    random_init: bool = False
    show_progress: bool = True


@dataclass
class SplitPlan:
    """One split to protect: its items in protection order, and how many of them are queries.

    ``items`` are image records; ``flips`` marks items protected horizontally flipped (the
    reference's train loader); ``keys`` name each item independently of where the data set lies,
    so a record of a finished batch can be matched to the batch it should hold on resume.
    """

    records: list
    num_query: int = 0
    flips: list = field(default_factory=list)
    keys: list = field(default_factory=list)


@dataclass
class RunPlan:
    """Everything checked before writing: the data set's root and layout, the splits, skipped files."""

    root: str
    summary: str
    splits: dict
    skipped: list = field(default_factory=list)


def build_protect_config(config_file, opts, flag_values, flag_of_key=None):
    """Defaults < --config_file < trailing KEY VALUE overrides < flags; validated and frozen."""
    cfg = load_config(config_file, opts)
    cfg.defrost()
    for key, value in flag_values.items():
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        default = node[name]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[name] = value
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = os.path.join("log", f"{cfg.DATASETS.NAMES}_protect")
    cfg.freeze()
    validate_protect_config(cfg, flag_of_key)
    return cfg


def file_digest(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def config_value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def run_fingerprint(cfg, checkpoint_digest):
    """Everything that decides what a finished batch holds, key by key.

    The images themselves are not part of it: each batch record names its images, so a data set
    that moved, or lost a bad file, resumes with every batch that still holds the same images.
    """
    fingerprint = {key: config_value(cfg, key) for key in RESULT_KEYS}
    fingerprint["checkpoint"] = checkpoint_digest
    if cfg.PIXELFADE.MODE == "reference":
        fingerprint["processes"] = idist.get_world_size()
    return fingerprint


def checkpoint_identity(cfg, random_init):
    """A digest that identifies the authorization model's weights (checked before anything is written)."""
    if cfg.TEST.WEIGHT:
        if not os.path.isfile(cfg.TEST.WEIGHT):
            raise CheckpointError(
                f"Re-ID checkpoint not found: {cfg.TEST.WEIGHT} (--reid_ckpt_path / TEST.WEIGHT); "
                "see ckpt/README.md for the released AGW files"
            )
        return f"{os.path.basename(cfg.TEST.WEIGHT)} sha256={file_digest(cfg.TEST.WEIGHT)[:16]}"
    if random_init:
        return f"UNTRAINED {cfg.MODEL.NAME}, random weights from MODEL.INIT_SEED={cfg.MODEL.INIT_SEED}"
    raise ConfigError("no Re-ID checkpoint given: pass --reid_ckpt_path (TEST.WEIGHT), or --random_init for an untrained model")


def load_authorization_model(cfg, device):
    model = build_authorization_model(cfg, cfg.TEST.WEIGHT, device, logger)
    if cfg.PIXELFADE.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def item_key(record, root, flip=False):
    """How a batch record names one of its images: path relative to the data set root, and the flip."""
    return f"{os.path.relpath(record.path, root)}{'|flipped' if flip else ''}"


def train_split_plan(cfg, records, root):
    """The train split as the reference's loader yields it, or every image once (PIXELFADE.TRAIN_ORDER)."""
    if cfg.PIXELFADE.TRAIN_ORDER == "every_image":
        return SplitPlan(records, 0, [False] * len(records), [item_key(r, root) for r in records])
    generator = torch.Generator().manual_seed(cfg.PIXELFADE.SEED)
    num_instances = cfg.DATALOADER.NUM_INSTANCE
    batches = identity_balanced_batches(
        [r.pid for r in records], cfg.PIXELFADE.BATCH_SIZE // num_instances, num_instances, generator
    )
    ordered = [records[index] for batch in batches for index in batch]
    flips = flip_decisions(len(ordered), cfg.INPUT.PROB, generator).tolist()
    return SplitPlan(ordered, 0, flips, [item_key(r, root, f) for r, f in zip(ordered, flips)])


def plan_run(cfg, options):
    """Check the data set, every image and the checkpoint, and fix each split's items; writes nothing."""
    checkpoint_identity(cfg, options.random_init)
    name = cfg.DATASETS.NAMES
    dataset_options = {"labeled": cfg.DATASETS.CUHK03_LABELED} if name == "cuhk03" else {}
    dataset = build_dataset(name, cfg.DATASETS.ROOT_DIR, **dataset_options)
    splits = {}
    if name == "image_folder":
        records = list(dataset.gallery)
        check_output_names([os.path.relpath(r.path, dataset.root) for r in records], cfg.OUTPUT_DIR)
        splits["gallery"] = SplitPlan(records, 0, [False] * len(records), [item_key(r, dataset.root) for r in records])
    else:
        if cfg.PIXELFADE.SAVE_IMAGE_NPY:
            if not dataset.train:
                raise ConfigError(f"--save_image_npy needs a train split, and {dataset.root} has none")
            splits["train"] = train_split_plan(cfg, list(dataset.train), dataset.root)
        records, num_query = eval_records(dataset)
        splits["test"] = SplitPlan(records, num_query, [False] * len(records), [item_key(r, dataset.root) for r in records])
    paths = sorted({record.path for plan in splits.values() for record in plan.records})
    check_images_readable(paths, num_workers=max(1, min(8, os.cpu_count() or 1)))
    return RunPlan(dataset.root, dataset.summary(), splits, list(getattr(dataset, "skipped", [])))


def check_output_names(relative_paths, output_dir):
    """Refuse a folder whose images would overwrite each other's protected copies.

    Names that differ only in case are one file on a case-insensitive file system; the output
    folder's own file system decides (tested on its nearest existing parent, which is left as it was).
    """
    existing = os.path.abspath(output_dir)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    case_sensitive = os.access(existing, os.W_OK) and folder_is_case_sensitive(existing)
    collisions = find_name_collisions(relative_paths, case_sensitive=case_sensitive)
    if collisions:
        shown = "; ".join(f"{' and '.join(inputs)} -> {name}" for name, inputs in collisions[:10])
        raise DatasetError(
            f"{len(collisions)} protected name(s) would overwrite each other in {output_dir}: {shown}; "
            "rename one of each group"
        )


def png_names(split, plan, dataset_root, plain_folder):
    """Where each protected PNG goes: the input tree mirrored for a folder, index-prefixed otherwise."""
    names = {}
    for index, record in enumerate(plan.records):
        if plain_folder:
            names[index] = os.path.join("protected", protected_relative_name(os.path.relpath(record.path, dataset_root)))
        else:
            stem = os.path.splitext(os.path.basename(record.path))[0]
            names[index] = os.path.join("png", split, f"{index:06d}_{stem}.png")
    return names


def gather_split(store, split, shard, num_items, row_shapes):
    """All ranks' records of ``split`` for the keys of ``row_shapes``, gathered and ordered by image index.

    ``row_shapes`` gives each key's per-image shape, so a rank with an empty shard still
    contributes a correctly shaped (empty) tensor to the collective.
    """
    parts = [store.load_batch(split, batch_index) for batch_index in shard]
    indices = torch.cat([p["indices"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    gathered = {}
    for key, row_shape in row_shapes.items():
        rows = torch.cat([p[key].float() for p in parts]) if parts else torch.zeros((0, *row_shape))
        gathered[key] = gather_rows_by_index(indices, rows, num_items)
    return gathered


def summarise_statistics(gathered, epsilon):
    summary = {name: float(gathered[name].float().mean()) for name in STAT_NAMES}
    summary["share_above_epsilon"] = float((gathered["feature_mse"] > epsilon).float().mean())
    return summary


def write_statistics_csv(store, split, plan, root, gathered):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "path", "flipped", "pid", "camid", *STAT_NAMES])
    for index, (record, flip) in enumerate(zip(plan.records, plan.flips)):
        writer.writerow([index, os.path.relpath(record.path, root), int(flip), record.pid, record.camid,
                         *(f"{float(gathered[n][index]):.6g}" for n in STAT_NAMES)])
    store.write_text(f"protection_stats_{split}.csv", buffer.getvalue())


def score(cfg, gathered, plan, protected_key):
    pids = torch.tensor([r.pid for r in plan.records])
    camids = torch.tensor([r.camid for r in plan.records])
    return evaluate_protection_modes(
        gathered["original_features"],
        gathered[protected_key],
        pids,
        camids,
        plan.num_query,
        metric=cfg.TEST.DISTANCE,
        feat_norm=cfg.TEST.FEAT_NORM == "on",
        rerank=cfg.TEST.RE_RANKING == "on",
    )


def results_markdown(cfg, results):
    lines = [f"# Protection results ({cfg.PIXELFADE.METHOD}, {cfg.DATASETS.NAMES})", ""]
    if "reid" in results:
        lines += ["Re-ID, features of the final protected images (float, normalised space):", "", format_results_table(results["reid"]), ""]
    if "reid_stored_png" in results:
        lines += ["Re-ID, protected images stored as 8-bit PNG and read back:", "", format_results_table(results["reid_stored_png"]), ""]
    lines += ["| split | feature MSE | cosine to original | values equal to noise | values nearer noise than original | images above EPSILON |",
              "|---|---|---|---|---|---|"]
    for split, stats in results["protection"].items():
        lines.append(f"| {split} | {stats['feature_mse']:.4f} | {stats['cosine']:.4f} | {stats['noise_share']:.1%} "
                     f"| {stats['closer_to_noise']:.1%} | {stats['share_above_epsilon']:.1%} |")
    lines += ["", f"Feature MSE and cosine compare each protected image's feature with its original's (raw "
              f"features); 'images above EPSILON' is the share whose final feature MSE exceeds EPSILON = {cfg.PIXELFADE.EPSILON}."]
    return "\n".join(lines) + "\n"


def warn_above_epsilon(cfg, split, stats):
    share = stats["share_above_epsilon"]
    if cfg.PIXELFADE.METHOD == "pixelfade" and share > 0:
        logger.warning(
            "%s: %.1f%% of the images end with a feature MSE above EPSILON = %g (mean %.4g): the constraint "
            "was not met for them; lower --beta/--beta_temp or raise --max_iter", split, 100 * share,
            cfg.PIXELFADE.EPSILON, stats["feature_mse"],
        )


def run(cfg, options, nproc_per_node=None, backend=None):
    """Check everything, then protect in one process, under torchrun, or in ``nproc_per_node`` spawned ones."""
    setup_logger("pixelfade", reset=True)
    try:
        plan = plan_run(cfg, options)
    finally:
        close_log_handlers()
    under_launcher = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if backend is None and (under_launcher or (nproc_per_node or 1) > 1):
        backend = "nccl" if torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu" else "gloo"
    spawn = nproc_per_node if nproc_per_node and nproc_per_node > 1 and not under_launcher else None
    if spawn is not None:
        # A spawned process's error reaches this one as a traceback: check the weights fit here first.
        load_authorization_model(cfg, "cpu")
    if spawn is None and not under_launcher:
        return run_protection(0, cfg, options, plan)
    with idist.Parallel(backend=backend, nproc_per_node=spawn) as parallel:
        parallel.run(run_protection, cfg, options, plan)
    return None


def run_protection(local_rank, cfg, options, plan):
    """Protect every split of ``plan`` and, on rank 0, score and write the results."""
    rank = idist.get_rank()
    setup_logger("pixelfade", distributed_rank=rank, reset=True)
    device = idist.device() if idist.get_world_size() > 1 else resolve_device(cfg.MODEL.DEVICE)
    started = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    model = load_authorization_model(cfg, device)
    checkpoint_digest = checkpoint_identity(cfg, options.random_init)
    store = RunStore(cfg.OUTPUT_DIR)
    fingerprint = run_fingerprint(cfg, checkpoint_digest)
    lock = FolderLock(cfg.OUTPUT_DIR, "protect_image.py") if rank == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        if rank == 0:
            fresh = store.open_run(fingerprint)
            setup_logger("pixelfade", filepath=store.path("log.txt"), distributed_rank=rank, reset=True)
            save_config(cfg, cfg.OUTPUT_DIR)
            logger.info("%s run in %s on %s, %d process(es)\n%s", "new" if fresh else "resumed", cfg.OUTPUT_DIR,
                        device, idist.get_world_size(), plan.summary)
            if plan.skipped:
                logger.warning("%s", describe_skipped(plan.skipped))
        idist.barrier()
        if rank != 0:
            store.open_run(fingerprint)
        return _protect_and_score(cfg, options, plan, model, store, device, checkpoint_digest, started)
    finally:
        if lock is not None:
            lock.release()
        close_log_handlers()


def close_log_handlers():
    """Detach the run's log handlers, so the log file is closed and a later run starts clean."""
    log = logging.getLogger("pixelfade")
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)


def _protect_and_score(cfg, options, plan, model, store, device, checkpoint_digest, started):
    rank = idist.get_rank()
    protector = BatchProtector(model, cfg, device, rank=rank)
    schedule = BatchSchedule()
    batch_size = cfg.PIXELFADE.BATCH_SIZE
    shards = {split: schedule.add_split(split, len(sp.records), batch_size) for split, sp in plan.splits.items()}
    plain_folder = cfg.DATASETS.NAMES == "image_folder"
    # A plain folder is protected to be stored: its PNGs are the product.
    save_png = cfg.PIXELFADE.SAVE_PNG or plain_folder
    runner = SplitProtector(
        model=model, protector=protector, store=store, cfg=cfg, device=device, schedule=schedule,
        mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD), save_png=save_png,
        show_progress=options.show_progress,
    )
    transform = build_eval_transform(cfg)
    for split, split_plan in plan.splits.items():
        spans, shard = shards[split]
        runner.run(split, split_plan, transform, spans, shard, png_names(split, split_plan, plan.root, plain_folder))
    idist.barrier()
    if rank == 0:
        for split, (spans, _) in shards.items():
            store.remove_batches_from(split, len(spans))

    results = {"protection": {}}
    feature_dim = model.bottleneck.num_features
    for split, split_plan in plan.splits.items():
        feature_keys = ["original_features", "protected_features"] + (["stored_features"] if save_png else [])
        row_shapes = {key: (feature_dim,) for key in feature_keys}
        row_shapes.update({name: () for name in STAT_NAMES})
        gathered = gather_split(store, split, shards[split][1], len(split_plan.records), row_shapes)
        if rank != 0:
            continue
        stats = summarise_statistics(gathered, cfg.PIXELFADE.EPSILON)
        results["protection"][split] = stats
        warn_above_epsilon(cfg, split, stats)
        write_statistics_csv(store, split, split_plan, plan.root, gathered)
        if plain_folder:
            atomic_torch_save({"paths": [os.path.relpath(r.path, plan.root) for r in split_plan.records],
                               "original": gathered["original_features"], "protected": gathered["protected_features"],
                               "stored": gathered["stored_features"]}, store.path("features", "features.pt"))
        if split == "test":
            results["reid"] = score(cfg, gathered, split_plan, "protected_features")
            if save_png:
                results["reid_stored_png"] = score(cfg, gathered, split_plan, "stored_features")
    if rank == 0:
        results["run"] = {
            "method": cfg.PIXELFADE.METHOD, "mode": cfg.PIXELFADE.MODE, "dataset": cfg.DATASETS.NAMES,
            "checkpoint": checkpoint_digest, "device": str(device), "processes": idist.get_world_size(),
            "seconds_this_run": round(time.perf_counter() - started, 2),
            "features": "extracted from the final protected images (the reference scores the previous step's)",
        }
        markdown = results_markdown(cfg, results)
        store.write_text("results.json", json.dumps(to_jsonable(results), indent=2))
        store.write_text("results.md", markdown)
        logger.info("results in %s\n%s", store.path("results.md"), markdown)
    return results


def to_jsonable(value):
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
