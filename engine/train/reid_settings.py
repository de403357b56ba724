"""The settings of an AGW training run: checked once into ``ReidTrainSettings``, its data set, its identity.

A run that starts writing and then trips over a bad value leaves a folder that refuses the
corrected rerun; so ``validate_train_config`` checks every setting first, in the one message style
``KEY (--flag) must be EXPECTED, got VALUE``, and returns the settings ``run`` takes without checking again.
"""
import os
from dataclasses import dataclass

from configs import get_default_config
from configs.checks import ConfigChecker, is_int, is_number
from configs.keys import flat_items
from data.datasets import build_dataset
from modeling.backbones import BACKBONES
from utils.errors import DatasetError

OPTIMIZERS = ("Adam", "SGD")
SWITCHES = ("on", "off")
AMP_MODES = ("off", "fp16", "bf16")
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


@dataclass(frozen=True)
class ReidTrainSettings:
    """A training config that passed ``validate_train_config``: P identities x K images per global batch."""

    cfg: object

    @property
    def num_instances(self):
        return self.cfg.DATALOADER.NUM_INSTANCE

    @property
    def ids_per_batch(self):
        return self.cfg.SOLVER.IMS_PER_BATCH // self.cfg.DATALOADER.NUM_INSTANCE


def train_settings(cfg_or_settings):
    """``ReidTrainSettings`` as given, or a plain config checked once now (the Python API's entry)."""
    if isinstance(cfg_or_settings, ReidTrainSettings):
        return cfg_or_settings
    return validate_train_config(cfg_or_settings)


def validate_train_config(cfg, flag_of_key=None):
    """``ReidTrainSettings`` of ``cfg``; ConfigError for the first bad training setting, naming its key (and flag)."""
    check = ConfigChecker(cfg, flag_of_key)
    check.choice("SOLVER.OPTIMIZER_NAME", OPTIMIZERS)
    for key in ("SOLVER.BASE_LR", "SOLVER.GAMMA", "SOLVER.WARMUP_FACTOR", "SOLVER.CENTER_LR"):
        check.positive(key)
    check.non_negative("SOLVER.WEIGHT_DECAY")
    check.non_negative("SOLVER.MARGIN")
    momentum = check.value("SOLVER.MOMENTUM")
    if not is_number(momentum) or not 0 <= momentum < 1:
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
        if not is_number(value) or not 0.0 <= value <= 1.0:
            check.fail(key, "a probability in [0, 1]")
    if len(cfg.INPUT.PIXEL_STD) != 3 or not all(v > 0 for v in cfg.INPUT.PIXEL_STD) or len(cfg.INPUT.PIXEL_MEAN) != 3:
        check.fail("INPUT.PIXEL_STD", "three positive numbers (and INPUT.PIXEL_MEAN three numbers)")
    if cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        check.fail("SOLVER.IMS_PER_BATCH",
                   f"a multiple of DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE}): P identities x K images")
    if not isinstance(cfg.OUTPUT_DIR, str) or not cfg.OUTPUT_DIR:
        check.fail("OUTPUT_DIR", "a folder path")
    if cfg.DATASETS.NAMES == "image_folder":
        check.fail("DATASETS.NAMES", "a labelled data set (market1501, cuhk03, msmt17)")
    return ReidTrainSettings(cfg)


def ids_per_rank(settings, world_size):
    """P / W identities per process; ConfigError unless W divides P."""
    if settings.ids_per_batch % world_size:
        ConfigChecker(settings.cfg).fail(
            "SOLVER.IMS_PER_BATCH",
            f"DATALOADER.NUM_INSTANCE x a multiple of the {world_size} processes (P = IMS_PER_BATCH / "
            f"NUM_INSTANCE = {settings.ids_per_batch} identities, an equal share for each process)")
    return settings.ids_per_batch // world_size


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


def identity_defaults():
    """{key: default} of every config key: how a run written before a key existed compares on it."""
    return dict(flat_items(get_default_config()))


def run_identity(cfg, dataset, world_size):
    """What must not change between an interrupted run and its resumption (every setting but FREE_KEYS;
    compared with ``identity_defaults`` filling what an older run's identity lacks)."""
    flat = {name: value for name, value in flat_items(cfg)
            if not any(name == free or name.startswith(free + ".") for free in FREE_KEYS)}
    flat["train_images"] = len(dataset.train)
    flat["train_ids"] = dataset.num_train_pids
    flat["processes"] = world_size
    return flat
