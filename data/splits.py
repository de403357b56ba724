"""The splits a protection run works through, fixed and checked before anything is written.

Each split is a list of items in protection order. Query + gallery form "test" (every image once,
in order); with pairs for the recovery attack, "train" comes first, either as the reference's
train loader yields it (identity-balanced P x K batches, an identity's remainder dropped, random
horizontal flips) or as every train image once. Each item has a key (its path relative to the
data set root, and whether it is flipped) that a finished batch's record keeps, so a resumed run
can tell which batches still hold the same images, wherever the data set now lies.
"""
import os
from dataclasses import dataclass, field

import torch

from utils.errors import ConfigError, DatasetError

from .datasets import build_dataset
from .datasets.image_folder import find_name_collisions, folder_is_case_sensitive
from .image_check import check_images_readable
from .loaders import eval_records
from .samplers import flip_decisions, identity_balanced_batches, ids_per_batch_for


@dataclass
class SplitPlan:
    """One split: its records in protection order, how many are queries, flips and item keys."""

    records: list
    num_query: int = 0
    flips: list = field(default_factory=list)
    keys: list = field(default_factory=list)


@dataclass
class RunPlan:
    """The data set's root and summary, the splits in protection order, and files that were skipped."""

    root: str
    summary: str
    splits: dict
    skipped: list = field(default_factory=list)


def item_key(record, root, flip=False):
    """How a batch record names one of its images: path relative to the data set root, and the flip."""
    return f"{os.path.relpath(record.path, root)}{'|flipped' if flip else ''}"


def in_order(records, root, num_query=0):
    return SplitPlan(records, num_query, [False] * len(records), [item_key(r, root) for r in records])


def train_split_plan(cfg, records, root):
    """The train split as the reference's loader yields it, or every image once (PIXELFADE.TRAIN_ORDER).

    The identity-balanced order draws from its own generator seeded with PIXELFADE.SEED: batches
    first, then one flip per item with probability INPUT.PROB.
    """
    if cfg.PIXELFADE.TRAIN_ORDER == "every_image":
        return in_order(records, root)
    generator = torch.Generator().manual_seed(cfg.PIXELFADE.SEED)
    num_instances = cfg.DATALOADER.NUM_INSTANCE
    ids_per_batch = ids_per_batch_for(cfg.PIXELFADE.BATCH_SIZE, num_instances)
    batches = identity_balanced_batches([r.pid for r in records], ids_per_batch, num_instances, generator)
    ordered = [records[index] for batch in batches for index in batch]
    flips = flip_decisions(len(ordered), cfg.INPUT.PROB, generator).tolist()
    return SplitPlan(ordered, 0, flips, [item_key(r, root, f) for r, f in zip(ordered, flips)])


def check_output_names(relative_paths, output_dir):
    """Refuse a folder whose images would overwrite each other's protected copies.

    Names that differ only in case are one file on a case-insensitive file system; the output
    folder's own file system decides (tested on its nearest existing parent, left as it was).
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


def plan_splits(cfg):
    """Build the data set named by the config, fix each split's items and check every image is readable."""
    name = cfg.DATASETS.NAMES
    options = {"labeled": cfg.DATASETS.CUHK03_LABELED} if name == "cuhk03" else {}
    dataset = build_dataset(name, cfg.DATASETS.ROOT_DIR, **options)
    splits = {}
    if name == "image_folder":
        records = list(dataset.gallery)
        check_output_names([os.path.relpath(r.path, dataset.root) for r in records], cfg.OUTPUT_DIR)
        splits["gallery"] = in_order(records, dataset.root)
    else:
        if cfg.PIXELFADE.SAVE_IMAGE_NPY:
            if not dataset.train:
                raise ConfigError(f"--save_image_npy needs a train split, and {dataset.root} has none")
            splits["train"] = train_split_plan(cfg, list(dataset.train), dataset.root)
        records, num_query = eval_records(dataset)
        splits["test"] = in_order(records, dataset.root, num_query)
    paths = sorted({record.path for plan in splits.values() for record in plan.records})
    check_images_readable(paths, num_workers=max(1, min(8, os.cpu_count() or 1)))
    return RunPlan(dataset.root, dataset.summary(), splits, list(getattr(dataset, "skipped", [])))
