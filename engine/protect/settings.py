"""Every setting of a protection run checked at once, before anything is written.

A run that starts writing and then trips over a bad value leaves a folder that refuses the
corrected rerun; so the whole config is checked first and a bad value is reported with its config
key and, where one exists, the command-line flag that sets it.
"""

from configs.checks import ConfigChecker, is_int, is_number
from engine.methods import METHODS
from engine.methods.avih import AvihParams, load_key_model
from engine.methods.pixelfade import EPSILON_MODES, REPLACEMENTS
from engine.protect import cross_modality as cross_modality_protect
from engine.protect import text_image as text_image_protect
from modeling.agw_vi import FEATURES as VI_FEATURES
from modeling.authorization import MODEL_INPUTS, STATE_DICT_FORMATS, parse_eval_model
from modeling.fastreid.format import POOL_OPTIONS
from modeling.fastreid.resnet import MAXPOOL_VARIANTS
from utils.errors import ConfigError

MODES = ("reference", "per_image")
PRECISIONS = ("none", "bf16", "fp16")
TRAIN_ORDERS = ("identity_balanced", "every_image")
MODEL_FORMATS = ("auto",) + STATE_DICT_FORMATS + ("torchscript", "module")
SWITCHES = ("on", "off")
DISTANCES = ("euclidean", "cosine")


def validate_protect_config(cfg, flag_of_key=None):
    """Raise ConfigError for the first bad setting of a protection run, naming its key and flag."""
    check = ConfigChecker(cfg, flag_of_key)
    check.choice("PIXELFADE.METHOD", tuple(METHODS.names()))
    check.choice("PIXELFADE.MODE", MODES)
    check.choice("PIXELFADE.PRECISION", PRECISIONS)
    check.choice("PIXELFADE.TRAIN_ORDER", TRAIN_ORDERS)
    check.choice("PIXELFADE.EPSILON_MODE", EPSILON_MODES)
    check.choice("PIXELFADE.REPLACEMENT", REPLACEMENTS)
    check.choice("MODEL.FORMAT", MODEL_FORMATS)
    check.choice("MODEL.FASTREID_MAXPOOL", tuple(MAXPOOL_VARIANTS))
    check.choice("MODEL.FASTREID_POOL", POOL_OPTIONS)
    check.choice("INPUT.MODEL_INPUT", MODEL_INPUTS)
    check.choice("MODEL.VI_FEATURE", VI_FEATURES)
    cross_modality_protect.validate(cfg, check)
    text_image_protect.validate(cfg, check)
    check.positive("INPUT.PIXEL_RANGE")
    if cfg.MODEL.FORMAT == "module" and ":" not in str(cfg.MODEL.FACTORY):
        check.fail("MODEL.FACTORY", "'package.module:function' with MODEL.FORMAT module")
    for entry in cfg.TEST.EVAL_MODELS:
        parse_eval_model(entry)
    check.integer("PIXELFADE.BATCH_SIZE", 1)
    check.integer("PIXELFADE.MAX_ITER", 1)
    check.integer("PIXELFADE.FADE_NUM_ITER", 1)
    check.integer("PIXELFADE.WARMUP_ITER", 0)
    check.integer("PIXELFADE.TAIL_ITERS", 0)
    check.integer("PIXELFADE.SEED", 0)
    check.integer("PIXELFADE.NUM_GRIDS", 0)
    momentum = check.value("PIXELFADE.MOMENTUM")
    if not is_number(momentum) or not 0.0 <= momentum < 1.0:
        check.fail("PIXELFADE.MOMENTUM", "a number in [0, 1)")
    for key in ("PIXELFADE.BETA", "PIXELFADE.BETA_TEMP", "PIXELFADE.EPSILON", "PIXELFADE.BLUR_SIGMA"):
        check.positive(key)
    check.integer("PIXELFADE.MOSAIC_BLOCK", 1)
    check.non_negative("PIXELFADE.NOISE_STD")
    switches = ("PIXELFADE.CHANNELS_LAST", "PIXELFADE.SAVE_IMAGE_NPY", "PIXELFADE.SAVE_PNG", "DATASETS.SKIP_UNREADABLE")
    for key in switches:
        check.boolean(key)
    size = check.value("INPUT.IMG_SIZE")
    if len(size) != 2 or not all(is_int(v) and v >= 1 for v in size):
        check.fail("INPUT.IMG_SIZE", "[height, width] of two positive integers")
    if len(check.value("INPUT.PIXEL_MEAN")) != 3 or not all(is_number(v) for v in check.value("INPUT.PIXEL_MEAN")):
        check.fail("INPUT.PIXEL_MEAN", "three numbers")
    if len(check.value("INPUT.PIXEL_STD")) != 3 or not all(
        is_number(v) and v > 0 for v in check.value("INPUT.PIXEL_STD")
    ):
        check.fail("INPUT.PIXEL_STD", "three positive numbers")
    probability = check.value("INPUT.PROB")
    if not is_number(probability) or not 0.0 <= probability <= 1.0:
        check.fail("INPUT.PROB", "a probability in [0, 1]")
    check.integer("DATALOADER.NUM_WORKERS", 0)
    check.integer("SYSTEM.THREADS", 0)
    check.integer("DATALOADER.NUM_INSTANCE", 1)
    check.integer("TEST.IMS_PER_BATCH", 1)
    check.choice("TEST.FEAT_NORM", SWITCHES)
    check.choice("TEST.RE_RANKING", SWITCHES)
    check.choice("TEST.DISTANCE", DISTANCES)
    if not isinstance(check.value("OUTPUT_DIR"), str) or not check.value("OUTPUT_DIR"):
        check.fail("OUTPUT_DIR", "a folder path")
    pf = cfg.PIXELFADE
    uses_pk_batches = pf.SAVE_IMAGE_NPY and pf.TRAIN_ORDER == "identity_balanced"
    if uses_pk_batches and pf.BATCH_SIZE % cfg.DATALOADER.NUM_INSTANCE:
        raise ConfigError(
            f"PIXELFADE.BATCH_SIZE ({check.flag_of_key.get('PIXELFADE.BATCH_SIZE', 'config')}) = {pf.BATCH_SIZE} "
            f"must be a multiple of DATALOADER.NUM_INSTANCE = {cfg.DATALOADER.NUM_INSTANCE} for the "
            "identity-balanced train batches (PIXELFADE.TRAIN_ORDER identity_balanced)"
        )
    AvihParams.from_cfg(cfg)
    check.integer("AVIH.KEY_NGF", 1)
    if pf.METHOD == "avih":
        load_key_model(cfg.AVIH.KEY_MODEL, cfg.AVIH.KEY_NGF, "cpu")
    if cfg.DATASETS.NAMES == "image_folder" and pf.SAVE_IMAGE_NPY:
        raise ConfigError("--save_image_npy needs a labelled data set with a train split, not --image_folder")
