"""The splits a protection run works through, fixed and checked before anything is written.

Each split is a list of items in protection order. Query + gallery form "test" (every image once,
in order); with pairs for the recovery attack, "train" comes first, either as the reference's
train loader yields it (identity-balanced P x K batches, an identity's remainder dropped, random
horizontal flips) or as every train image once. Each item has a key (its path relative to the
data set root, and whether it is flipped) that a finished batch's record keeps, so a resumed run
can tell which batches still hold the same images, wherever the data set now lies. Every image is
checked first: one that cannot be read stops the run before anything is written, or, with
DATASETS.SKIP_UNREADABLE, is left out before the splits are formed.

A visible-infrared data set (SYSU-MM01, RegDB) is planned by modality instead, because each image is
protected with the stem of its own sensor and a batch must not mix them: ``test_visible`` and
``test_infrared`` hold every query and gallery image of any trial once (``train_visible`` and
``train_infrared`` first, with pairs for the attack). With one checkpoint per trial (``{trial}`` in
TEST.WEIGHT) each trial's images form their own splits (``test_t<t>_visible``, ...), protected and
scored with that trial's model.

A text-to-image data set (CUHK-PEDES, ICFG-PEDES, RSTPReid) has captions as queries and no query images:
"test" holds every test image once (``plan_text_image``), and the run plan carries the captions.
"""
import os
from dataclasses import dataclass, field

import torch

from utils.cpus import available_cpus
from utils.errors import ConfigError, DatasetError

from .datasets import build_dataset
from .datasets.bases import ImageRecord
from .datasets.image_folder import find_name_collisions, folder_is_case_sensitive
from .datasets.text_person import LAYOUTS as TEXT_LAYOUTS
from .datasets.text_person import CaptionRecord
from .datasets.visible_infrared import MODALITIES, Trial, VisibleInfraredDataset, unique_records
from .image_check import check_images_readable
from .samplers import flip_decisions, identity_balanced_batches, ids_per_batch_for

# How RunPlan.skipped marks an image left out by DATASETS.SKIP_UNREADABLE (the check's reason follows).
UNREADABLE = "unreadable image"
# Data sets whose test split is protocols of trials over two modalities.
CROSS_MODALITY_DATASETS = ("sysu_mm01", "regdb")
# In TEST.WEIGHT: one checkpoint per trial, the trial number put in its place.
TRIAL_FIELD = "{trial}"
# Data sets whose queries are captions of the test images (the gallery).
TEXT_IMAGE_DATASETS = tuple(TEXT_LAYOUTS)
# Camera ids of the test images in the saved pairs: the attack's identity-leakage queries vs the rest.
LEAKAGE_QUERY_CAMERA, LEAKAGE_GALLERY_CAMERA = 0, 1


def per_trial(cfg):
    """Whether TEST.WEIGHT names one checkpoint per trial (``{trial}`` in the path)."""
    return TRIAL_FIELD in cfg.TEST.WEIGHT


@dataclass
class SplitPlan:
    """One split: its records in protection order, how many are queries, flips and item keys."""

    records: list
    num_query: int = 0
    flips: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    # Visible-infrared splits: the sensor of every image, the trial whose model protects it (None: the
    # one checkpoint), and (split, first batch index) its img_npy pairs are written as.
    modality: str = ""
    trial: int = None
    pairs_as: tuple = ()


@dataclass
class RunPlan:
    """The data set's root and summary, the splits in protection order, and files that were skipped."""

    root: str
    summary: str
    splits: dict
    skipped: list = field(default_factory=list)
    # Visible-infrared: {protocol: (Trial, ...)} without unreadable images, and the scoring rule.
    protocols: dict = field(default_factory=dict)
    metric: str = ""
    # How many of the test pairs in img_npy come first as queries (those of the first protocol's query modality).
    num_query: int = None
    # Text-to-image: the test captions (image_index = their image's row in the test split) and the test
    # split's rows in the data set's gallery order (the order retrieval ranks ties in).
    captions: list = field(default_factory=list)
    gallery_order: list = field(default_factory=list)


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


def unreadable_images(cfg, paths):
    """``[(path, reason), ...]`` of the images of ``paths`` that cannot be read, to leave out.

    With DATASETS.SKIP_UNREADABLE False (the default) any such image is a DatasetError naming them all,
    raised before anything is written.
    """
    return check_images_readable(paths, num_workers=min(8, available_cpus()),
                                 skip=cfg.DATASETS.SKIP_UNREADABLE,
                                 advice="replace or remove them, or leave them out with --skip_unreadable true "
                                        "(DATASETS.SKIP_UNREADABLE)")


def readable(records, bad_paths, split):
    """``records`` without the unreadable ones; a DatasetError when none is left."""
    kept = [record for record in records if record.path not in bad_paths]
    if records and not kept:
        raise DatasetError(f"no readable image is left in the {split} ({len(records)} unreadable, skipped)")
    return kept


def plan_splits(cfg):
    """Build the data set named by the config, check every image is readable and fix each split's items.

    Unreadable images stop the run, or with DATASETS.SKIP_UNREADABLE are left out before the splits
    are formed (the train order is drawn over the readable images) and listed in ``RunPlan.skipped``
    with the reason; a rerun checks again and so leaves out the same files.
    """
    name = cfg.DATASETS.NAMES
    options = {"labeled": cfg.DATASETS.CUHK03_LABELED} if name == "cuhk03" else {}
    if name in CROSS_MODALITY_DATASETS:
        options = {"trials": list(cfg.DATASETS.TRIALS)}
    dataset = build_dataset(name, cfg.DATASETS.ROOT_DIR, **options)
    if isinstance(dataset, VisibleInfraredDataset):
        return plan_cross_modality(cfg, dataset)
    if hasattr(dataset, "query_captions"):
        return plan_text_image(cfg, dataset)
    if name == "image_folder":
        parts = {"gallery": list(dataset.gallery)}
    else:
        if cfg.PIXELFADE.SAVE_IMAGE_NPY and not dataset.train:
            raise ConfigError(f"--save_image_npy needs a train split, and {dataset.root} has none")
        parts = {"train": list(dataset.train)} if cfg.PIXELFADE.SAVE_IMAGE_NPY else {}
        parts.update({"query": list(dataset.query), "gallery": list(dataset.gallery)})
    paths = sorted({record.path for records in parts.values() for record in records})
    bad = unreadable_images(cfg, paths)
    bad_paths = {path for path, _ in bad}
    parts = {part: readable(records, bad_paths, part) for part, records in parts.items()}
    splits = {}
    if name == "image_folder":
        check_output_names([os.path.relpath(r.path, dataset.root) for r in parts["gallery"]], cfg.OUTPUT_DIR)
        splits["gallery"] = in_order(parts["gallery"], dataset.root)
    else:
        if "train" in parts:
            splits["train"] = train_split_plan(cfg, parts["train"], dataset.root)
        splits["test"] = in_order(parts["query"] + parts["gallery"], dataset.root, len(parts["query"]))
    skipped = list(getattr(dataset, "skipped", []))
    skipped += [(os.path.relpath(path, dataset.root), f"{UNREADABLE}: {reason}") for path, reason in bad]
    return RunPlan(dataset.root, dataset.summary(), splits, skipped)


def _by_modality(prefix, records, modalities, trial=None):
    """``{prefix_<modality>: records of that modality}`` in their order, empty modalities left out."""
    groups = {}
    for modality in modalities:
        chosen = [record for record in records if record.modality == modality]
        if chosen:
            groups[f"{prefix}_{modality}"] = (modality, trial, chosen)
    return groups


def _trial_images(dataset, trial_number):
    """Every query and gallery image of one trial number over all protocols, each once."""
    trials = [t for trials in dataset.protocols.values() for t in trials if t.trial == trial_number]
    return unique_records([group for t in trials for group in (t.query, t.gallery)])


def plan_cross_modality(cfg, dataset):
    """The splits of a visible-infrared run, one per modality (and per trial with per-trial checkpoints).

    Every test image of any trial and protocol is in exactly one test split (per trial: once per
    trial); the train split (first selected trial's for RegDB) is ordered per modality as for
    single-modality sets, and its img_npy pairs continue one ``train`` numbering across modalities. The
    first protocol's query modality comes first, so the ``test`` pairs are queries, then gallery images.
    """
    trial_models = per_trial(cfg)
    query_modality = next(iter(dataset.protocols.values()))[0].query[0].modality
    order = (query_modality,) + tuple(m for m in MODALITIES if m != query_modality)
    groups = {}
    if cfg.PIXELFADE.SAVE_IMAGE_NPY:
        groups.update(_by_modality("train", list(dataset.train), order, dataset.trials[0] if trial_models else None))
    if trial_models:
        for modality in order:
            for number in dataset.trials:
                groups.update(_by_modality(f"test_t{number}", _trial_images(dataset, number), (modality,), number))
    else:
        groups.update(_by_modality("test", dataset.test_images(), order))
    paths = sorted({record.path for _, _, records in groups.values() for record in records})
    bad = unreadable_images(cfg, paths)
    bad_paths = {path for path, _ in bad}
    splits, next_batch = {}, {"train": 0, "test": 0}
    batch_size = cfg.PIXELFADE.BATCH_SIZE
    for split, (modality, trial, records) in groups.items():
        records = readable(records, bad_paths, split)
        role = split.split("_")[0]
        plan = train_split_plan(cfg, records, dataset.root) if role == "train" else in_order(records, dataset.root)
        plan.modality, plan.trial, plan.pairs_as = modality, trial, (role, next_batch[role])
        next_batch[role] += -(-len(plan.records) // batch_size)
        splits[split] = plan
    protocols = {
        protocol: tuple(Trial(t.trial, tuple(r for r in t.query if r.path not in bad_paths),
                              tuple(r for r in t.gallery if r.path not in bad_paths), t.train) for t in trials)
        for protocol, trials in dataset.protocols.items()
    }
    skipped = [(os.path.relpath(path, dataset.root), f"{UNREADABLE}: {reason}") for path, reason in bad]
    num_query = sum(len(p.records) for name, p in splits.items() if name.startswith("test") and p.modality == order[0])
    return RunPlan(dataset.root, dataset.summary(), splits, skipped, protocols, dataset.metric, num_query)


def leakage_partition(gallery):
    """(query rows, gallery rows) of the test images for the attack's identity-leakage scoring.

    The first image (data set order) of every identity with two or more test images is a query, every
    other image is in the gallery; queries get camera 0 and the gallery camera 1, so the privacy
    scorer's same-camera filter removes nothing and each query has its person's other images to find.
    """
    counts = {}
    for record in gallery:
        counts[record.pid] = counts.get(record.pid, 0) + 1
    queries, seen = [], set()
    for index, record in enumerate(gallery):
        if counts[record.pid] > 1 and record.pid not in seen:
            seen.add(record.pid)
            queries.append(index)
    chosen = set(queries)
    return queries, [index for index in range(len(gallery)) if index not in chosen]


def plan_text_image(cfg, dataset):
    """The splits of a text-to-image run: the train images (with pairs for the attack), then every test image once.

    The test split is ordered as ``leakage_partition`` says (queries with camera 0, then the rest with
    camera 1), so the saved pairs serve the attack's identity-leakage table unchanged; text-to-image
    retrieval ranks the rows in the data set's order (``RunPlan.gallery_order``) and the captions point at
    their image's row (``RunPlan.captions``). Captions of an image left out as unreadable are left out too.
    """
    if cfg.PIXELFADE.SAVE_IMAGE_NPY and not dataset.train:
        raise ConfigError(f"--save_image_npy needs a train split, and {dataset.annotation} has none")
    train = list(dataset.train) if cfg.PIXELFADE.SAVE_IMAGE_NPY else []
    bad = unreadable_images(cfg, sorted({record.path for record in train + list(dataset.gallery)}))
    bad_paths = {path for path, _ in bad}
    gallery = readable(list(dataset.gallery), bad_paths, "test images")
    query_rows, gallery_rows = leakage_partition(gallery)
    records = [ImageRecord(gallery[i].path, gallery[i].pid, LEAKAGE_QUERY_CAMERA) for i in query_rows]
    records += [ImageRecord(gallery[i].path, gallery[i].pid, LEAKAGE_GALLERY_CAMERA) for i in gallery_rows]
    row_of_path = {record.path: row for row, record in enumerate(records)}
    splits = {}
    if train:
        splits["train"] = train_split_plan(cfg, readable(train, bad_paths, "train"), dataset.root)
    splits["test"] = in_order(records, dataset.root, len(query_rows))
    captions = [CaptionRecord(c.text, c.pid, row_of_path[dataset.gallery[c.image_index].path])
                for c in dataset.query_captions if dataset.gallery[c.image_index].path not in bad_paths]
    skipped = [(os.path.relpath(path, dataset.root), f"{UNREADABLE}: {reason}") for path, reason in bad]
    return RunPlan(dataset.root, dataset.summary(), splits, skipped, captions=captions,
                   gallery_order=[row_of_path[record.path] for record in gallery])
