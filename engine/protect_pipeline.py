"""A whole protection run: model and data in, protected images, features and Re-ID scores out.

``run_protection`` is what each process executes (directly, under torchrun, or spawned by
``ignite.distributed.Parallel``). Splits are protected in the reference's order (train first when
pairs are saved for the attack, then query + gallery as "test"); rank 0 gathers the test features
by image index and scores the four protected/original modes.
"""
import csv
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass

import ignite.distributed as idist
import torch
from ignite.utils import setup_logger

from configs import save_config
from data.datasets import build_dataset
from data.loaders import eval_records
from data.transforms import build_eval_transform
from evaluation.protection_stats import STAT_NAMES
from evaluation.reid import evaluate_protection_modes, format_results_table
from modeling import build_authorization_model, resolve_device

from .batch_protector import BatchProtector
from .distributed import gather_rows_by_index
from .protect_engine import BatchSchedule, SplitProtector
from .run_store import RunStore

logger = logging.getLogger("pixelfade.protect")



@dataclass
class ProtectOptions:
    """What a run needs beyond the config: whether an untrained model is allowed, and the bar."""

    random_init: bool = False
    show_progress: bool = True


def file_digest(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def records_digest(records):
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.path}|{record.pid}|{record.camid}\n".encode())
    return digest.hexdigest()[:16]


def run_fingerprint(cfg, checkpoint_digest, splits):
    """Everything that decides a run's results; a resumed run must match it exactly."""
    pf = {key: value for key, value in cfg.PIXELFADE.items() if key != "NUM_GRIDS"}
    fingerprint = {
        "pixelfade": json.dumps(pf, sort_keys=True, default=list),
        "model": f"{cfg.MODEL.NAME} last_stride={cfg.MODEL.LAST_STRIDE} gem={cfg.MODEL.GENERALIZED_MEAN_POOL}",
        "checkpoint": checkpoint_digest,
        "input": f"size={list(cfg.INPUT.IMG_SIZE)} mean={list(cfg.INPUT.PIXEL_MEAN)} std={list(cfg.INPUT.PIXEL_STD)}",
        "data": {name: f"{len(records)} images, {records_digest(records)}" for name, (records, _) in splits.items()},
    }
    if cfg.PIXELFADE.MODE == "reference":
        fingerprint["world_size"] = idist.get_world_size()
    return fingerprint


def load_authorization_model(cfg, device, random_init):
    """The frozen, eval-mode Re-ID model and a digest that identifies its weights."""
    if cfg.TEST.WEIGHT:
        if not os.path.isfile(cfg.TEST.WEIGHT):
            raise FileNotFoundError(
                f"Re-ID checkpoint not found: {cfg.TEST.WEIGHT} (--reid_ckpt_path / TEST.WEIGHT); "
                "see ckpt/README.md for the released AGW files"
            )
        model = build_authorization_model(cfg, cfg.TEST.WEIGHT, device, logger)
        digest = f"{os.path.basename(cfg.TEST.WEIGHT)} sha256={file_digest(cfg.TEST.WEIGHT)[:16]}"
    elif random_init:
        model = build_authorization_model(cfg, "", device, logger)
        digest = f"UNTRAINED {cfg.MODEL.NAME}, random weights from MODEL.INIT_SEED={cfg.MODEL.INIT_SEED}"
    else:
        raise ValueError("no Re-ID checkpoint given: pass --reid_ckpt_path (TEST.WEIGHT), or --random_init for an untrained model")
    if cfg.PIXELFADE.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model, digest


def collect_splits(cfg):
    """(records, num_query) per split, in protection order; builds (and caches) the data set once."""
    name = cfg.DATASETS.NAMES
    options = {"labeled": cfg.DATASETS.CUHK03_LABELED} if name == "cuhk03" else {}
    with idist.one_rank_first():
        dataset = build_dataset(name, cfg.DATASETS.ROOT_DIR, **options)
    if idist.get_rank() == 0:
        logger.info("data set %s from %s (layout %s)\n%s", dataset.name, dataset.root, dataset.layout, dataset.summary())
    splits = {}
    if name == "image_folder":
        splits["gallery"] = (list(dataset.gallery), 0)
        return dataset, splits
    if cfg.PIXELFADE.SAVE_IMAGE_NPY:
        if not dataset.train:
            raise ValueError(f"--save_image_npy needs a train split, and {dataset.root} has none")
        splits["train"] = (list(dataset.train), 0)
    splits["test"] = eval_records(dataset)
    return dataset, splits


def png_names(split, records, dataset_root, plain_folder):
    """Where each protected PNG goes: the input tree mirrored for a folder, index-prefixed otherwise."""
    names = {}
    for index, record in enumerate(records):
        stem = os.path.splitext(os.path.relpath(record.path, dataset_root) if plain_folder else os.path.basename(record.path))[0]
        names[index] = os.path.join("protected", stem + ".png") if plain_folder else os.path.join("png", split, f"{index:06d}_{stem}.png")
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


def summarise_statistics(gathered):
    return {name: float(gathered[name].float().mean()) for name in STAT_NAMES}


def write_statistics_csv(store, split, records, gathered):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "path", "pid", "camid", *STAT_NAMES])
    for index, record in enumerate(records):
        writer.writerow([index, record.path, record.pid, record.camid, *(f"{float(gathered[n][index]):.6g}" for n in STAT_NAMES)])
    store.write_text(f"protection_stats_{split}.csv", buffer.getvalue())


def score(cfg, gathered, records, num_query, protected_key):
    pids = torch.tensor([r.pid for r in records])
    camids = torch.tensor([r.camid for r in records])
    return evaluate_protection_modes(
        gathered["original_features"],
        gathered[protected_key],
        pids,
        camids,
        num_query,
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
    lines += ["| split | feature MSE | cosine to original | values equal to noise | values nearer noise than original |",
              "|---|---|---|---|---|"]
    for split, stats in results["protection"].items():
        lines.append(f"| {split} | {stats['feature_mse']:.4f} | {stats['cosine']:.4f} | {stats['noise_share']:.1%} | {stats['closer_to_noise']:.1%} |")
    return "\n".join(lines) + "\n"


def run_protection(local_rank, cfg, options):
    """Protect every split of the configured data set and, on rank 0, score and write the results."""
    rank = idist.get_rank()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger("pixelfade", filepath=os.path.join(cfg.OUTPUT_DIR, "log.txt"), distributed_rank=rank, reset=True)
    device = idist.device() if idist.get_world_size() > 1 else resolve_device(cfg.MODEL.DEVICE)
    started = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    dataset, splits = collect_splits(cfg)
    model, checkpoint_digest = load_authorization_model(cfg, device, options.random_init)
    store = RunStore(cfg.OUTPUT_DIR)
    fingerprint = run_fingerprint(cfg, checkpoint_digest, splits)
    if rank == 0:
        fresh = store.open_run(fingerprint)
        save_config(cfg, cfg.OUTPUT_DIR)
        logger.info("%s run in %s on %s, %d process(es)", "new" if fresh else "resumed", cfg.OUTPUT_DIR, device, idist.get_world_size())
    idist.barrier()
    if rank != 0:
        store.open_run(fingerprint)

    protector = BatchProtector(model, cfg, device, rank=rank)
    schedule = BatchSchedule()
    batch_size = cfg.PIXELFADE.BATCH_SIZE
    shards = {split: schedule.add_split(split, len(records), batch_size) for split, (records, _) in splits.items()}
    mean, std = list(cfg.INPUT.PIXEL_MEAN), list(cfg.INPUT.PIXEL_STD)
    plain_folder = cfg.DATASETS.NAMES == "image_folder"
    # A plain folder is protected to be stored: its PNGs are the product.
    save_png = cfg.PIXELFADE.SAVE_PNG or plain_folder
    runner = SplitProtector(
        model=model, protector=protector, store=store, cfg=cfg, device=device, schedule=schedule,
        mean=mean, std=std, save_png=save_png, show_progress=options.show_progress,
    )
    transform = build_eval_transform(cfg)
    for split, (records, _) in splits.items():
        spans, shard = shards[split]
        runner.run(split, records, transform, spans, shard, png_names(split, records, dataset.root, plain_folder))
    idist.barrier()

    results = {"protection": {}}
    feature_dim = model.bottleneck.num_features
    for split, (records, num_query) in splits.items():
        feature_keys = ["original_features", "protected_features"] + (["stored_features"] if save_png else [])
        row_shapes = {key: (feature_dim,) for key in feature_keys}
        row_shapes.update({name: () for name in STAT_NAMES})
        gathered = gather_split(store, split, shards[split][1], len(records), row_shapes)
        if rank != 0:
            continue
        results["protection"][split] = summarise_statistics(gathered)
        write_statistics_csv(store, split, records, gathered)
        if plain_folder:
            os.makedirs(store.path("features"), exist_ok=True)
            torch.save({"paths": [r.path for r in records], "original": gathered["original_features"],
                        "protected": gathered["protected_features"], "stored": gathered["stored_features"]},
                       store.path("features", "features.pt"))
        if split == "test":
            results["reid"] = score(cfg, gathered, records, num_query, "protected_features")
            if save_png:
                results["reid_stored_png"] = score(cfg, gathered, records, num_query, "stored_features")
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
