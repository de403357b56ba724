"""The ``fastreid`` model format: JDAI-CV/fast-reid R50 checkpoints (BoT, AGW, SBS; -ibn, -se).

Files are ``{'model': state_dict, ...}`` (fast-reid's ``Checkpointer``) or plain state dicts with
``backbone.*`` (torchvision names) and ``heads.*`` keys. Accepted head keys: ``heads.pool_layer.p``
(learnable GeM), ``heads.bottleneck.0.*`` (BNNeck, since 2020-09-10) or ``heads.bnneck.*`` (the
same BatchNorm, v0.1.1 and the model-zoo files). Ignored: the classifier (``heads.weight``,
``heads.classifier.*``), the ``pixel_mean``/``pixel_std`` buffers when they hold ImageNet x 255
(fast-reid's ``(x - mean) / std`` on 0-255 RGB then equals this toolkit's normalised space; other
values are refused, the input contract would differ) and ``num_batches_tracked`` entries the model
lacks. Anything else missing, unexpected or of the wrong shape is a one-line ``CheckpointError``.

What the keys cannot tell comes from the config: the stem max-pool (``MODEL.FASTREID_MAXPOOL``) and
the architecture (``MODEL.NAME``). The head pooling is settled at load time from the keys unless
``MODEL.FASTREID_POOL`` (when the config has it) names one: a ``heads.pool_layer.p`` key means GeM
with that learnable p; without it, the ``_nl`` (AGW-style) architectures use GeM with fixed p = 3
and the others global average pooling (Base-bagtricks).
"""
from collections import OrderedDict
from collections.abc import Mapping

import torch

from utils.errors import CheckpointError, ConfigError

from ..checkpoint import compare_state_dicts, read_state, strip_wrapper_prefixes
from ..errors import check_architecture
from ..formats import MODEL_FORMATS, ModelFormat
from .model import POOLINGS, FastReIDModel
from .resnet import MAXPOOL_VARIANTS

# MODEL.NAME -> backbone options (fast-reid MODEL.BACKBONE.WITH_IBN / WITH_SE / WITH_NL, DEPTH 50x).
ARCHITECTURES = {
    "resnet50": {"with_ibn": False, "with_se": False, "with_nl": False},  # BoT(R50)
    "resnet50_nl": {"with_ibn": False, "with_se": False, "with_nl": True},  # AGW(R50), SBS(R50)
    "resnet50_ibn": {"with_ibn": True, "with_se": False, "with_nl": False},  # BoT(R50-ibn)
    "resnet50_ibn_nl": {"with_ibn": True, "with_se": False, "with_nl": True},  # AGW/SBS(R50-ibn)
    "resnet50_se": {"with_ibn": False, "with_se": True, "with_nl": False},  # BoT with WITH_SE
}
R50_BLOCKS = (3, 4, 6, 3)
POOL_OPTIONS = ("auto",) + POOLINGS
POOL_KEY = "heads.pool_layer.p"
OLD_BNNECK = "heads.bnneck."
BNNECK = "heads.bottleneck.0."
IGNORED_KEYS = ("pixel_mean", "pixel_std", "heads.weight")
IGNORED_PREFIXES = ("heads.classifier.",)
# fast-reid's MODEL.PIXEL_MEAN / PIXEL_STD defaults: ImageNet statistics x 255, on RGB 0-255 input.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
PIXEL_TOLERANCE = 0.01
FEATURE_NAMES = {"with_ibn": "IBN-a (bn1.IN/bn1.BN keys)", "with_se": "SE (se.fc keys)",
                 "with_nl": "non-local blocks (NL_* keys)"}
FEATURE_DOC = (
    "fast-reid Baseline at eval: ResNet-50 (stem ReLU, stem max-pool per MODEL.FASTREID_MAXPOOL; "
    "IBN-a / SE / non-local per MODEL.NAME) -> global average pooling (BoT), GeM p = 3 (AGW) or "
    "learnable-p GeM (heads.pool_layer.p: SBS) -> BNNeck BatchNorm; the feature is the BNNeck output "
    "(2048-d), what fast-reid's evaluation uses"
)


def default_pooling(architecture):
    """Head pooling when the file has no ``heads.pool_layer.p``: GeM p = 3 for AGW-style ``_nl``, else average."""
    return "gem" if ARCHITECTURES[architecture]["with_nl"] else "avg"


def build(cfg):
    """Eval-mode :class:`FastReIDModel` for ``cfg.MODEL.NAME`` (randomly initialised)."""
    name = cfg.MODEL.NAME
    check_architecture(name, tuple(sorted(ARCHITECTURES)), "a fast-reid", "fastreid")
    last_stride = cfg.MODEL.LAST_STRIDE
    if last_stride not in (1, 2):
        raise ConfigError(f"MODEL.LAST_STRIDE must be 1 or 2, got {last_stride!r}")
    maxpool = cfg.MODEL.FASTREID_MAXPOOL
    if maxpool not in MAXPOOL_VARIANTS:
        raise ConfigError(
            f"MODEL.FASTREID_MAXPOOL must be one of {', '.join(MAXPOOL_VARIANTS)} (ceil: fast-reid "
            f">= v1.0.0, pad: <= v0.1.1), got {maxpool!r}"
        )
    pool_option = getattr(cfg.MODEL, "FASTREID_POOL", "auto")
    if pool_option not in POOL_OPTIONS:
        raise ConfigError(f"MODEL.FASTREID_POOL must be one of {', '.join(POOL_OPTIONS)}, got {pool_option!r}")
    pooling = default_pooling(name) if pool_option == "auto" else pool_option
    model = FastReIDModel(name, last_stride, maxpool, pooling, **ARCHITECTURES[name])
    model.pool_option = pool_option
    return model.eval()


def detect(state):
    """True for fast-reid keys: some start with ``backbone.`` and some with ``heads.``."""
    if not isinstance(state, Mapping):
        return False
    inner = state.get("model")
    if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
        state = inner
    keys = [strip_wrapper_prefixes(key) for key in state if isinstance(key, str)]
    return any(key.startswith("backbone.") for key in keys) and any(key.startswith("heads.") for key in keys)


def load(model, state, source="state dict", logger=None):
    """Copy fast-reid weights (a mapping, ``{'model': ...}`` or a path) into ``model``; returns the LoadReport.

    Raises a one-line CheckpointError naming ``source``, the architecture and the grouped key
    counts when anything but the ignored keys is missing, unexpected or of the wrong shape.
    """
    if not isinstance(model, FastReIDModel):
        raise TypeError(f"expected a model built by the fastreid format, got {type(model).__name__}")
    state, source = read_state(state, source)
    check_pixel_statistics(state, source)
    state = rename_head_keys(state, source)
    pooling = choose_pooling(model, state)
    model.set_pooling(pooling)
    target_state = model.state_dict()
    report = compare_state_dicts(target_state, state, source, ignored_in(target_state))
    if not report.ok:
        problems = architecture_mismatch(model, state) + report.problem_lines()
        message = (
            f"{source}: fast-reid weights do not fit MODEL.NAME {model.architecture} "
            f"(head pooling {pooling}): {'; '.join(problems)}"
        )
        raise CheckpointError(" ".join(message.split("\n")))
    model.load_state_dict(OrderedDict((key, state[key]) for key in report.loaded), strict=False)
    if logger is not None:
        logger.info(report.summary())
        logger.info("%s: fast-reid %s, stem max-pool %s, head pooling %s", source, model.architecture,
                    model.backbone.maxpool_variant, describe_pooling(model))
    return report


def describe_pooling(model):
    if model.pooling == "gem_p":
        return f"GeM with learnable p = {model.heads.pool_layer.p.item():.4f}"
    return "GeM with fixed p = 3" if model.pooling == "gem" else "global average"


def check_pixel_statistics(state, source):
    """Refuse ``pixel_mean``/``pixel_std`` buffers other than ImageNet x 255 (another input contract)."""
    for key, expected in (("pixel_mean", IMAGENET_MEAN_255), ("pixel_std", IMAGENET_STD_255)):
        if key not in state:
            continue
        values = state[key].detach().double().flatten()
        reference = torch.tensor(expected, dtype=torch.float64)
        if values.numel() != 3 or not torch.allclose(values, reference, rtol=0.0, atol=PIXEL_TOLERANCE):
            found = ", ".join(f"{value:g}" for value in values.tolist()[:6])
            raise CheckpointError(
                f"{source}: {key} is [{found}], not fast-reid's ImageNet x 255 "
                f"[{', '.join(f'{value:g}' for value in expected)}]: the model's input contract differs from "
                "this toolkit's (ImageNet mean/std on RGB in [0, 1]); its features would be wrong here"
            )


def rename_head_keys(state, source):
    """``heads.bnneck.*`` (fast-reid <= v0.1.1, zoo files) -> ``heads.bottleneck.0.*``."""
    renamed = OrderedDict()
    for key, tensor in state.items():
        name = BNNECK + key[len(OLD_BNNECK):] if key.startswith(OLD_BNNECK) else key
        if name in renamed:
            raise CheckpointError(f"{source}: both {key} and {name} are present (old and new BNNeck names)")
        renamed[name] = tensor
    return renamed


def choose_pooling(model, state):
    """MODEL.FASTREID_POOL when set; else learnable GeM with a ``p`` key, else the architecture's default."""
    option = getattr(model, "pool_option", "auto")
    if option != "auto":
        return option
    return "gem_p" if POOL_KEY in state else default_pooling(model.architecture)


def is_ignored(key):
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def ignored_in(target_state):
    """Training heads, and batch counters of modules the model does not have (fast-reid's BN variants)."""
    return lambda key: is_ignored(key) or (key not in target_state and key.endswith("num_batches_tracked"))


def file_features(state):
    """Which of IBN / SE / NL the file's backbone keys show."""
    keys = [key for key in state if key.startswith("backbone.")]
    return {
        "with_ibn": any(".bn1.IN." in key or ".bn1.BN." in key for key in keys),
        "with_se": any(".se.fc." in key for key in keys),
        "with_nl": any(key.startswith("backbone.NL_") for key in keys),
    }


def stage_blocks(state):
    """Blocks per stage as the file's ``backbone.layerK.J.`` keys show them."""
    blocks = []
    for stage in range(1, 5):
        prefix = f"backbone.layer{stage}."
        indices = {key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)}
        blocks.append(len({index for index in indices if index.isdigit()}))
    return tuple(blocks)


def architecture_mismatch(model, state):
    """Plain-words reasons a file does not fit ``model`` (empty when none is recognised)."""
    reasons = []
    wanted = ARCHITECTURES[model.architecture]
    found = file_features(state)
    extra = [FEATURE_NAMES[name] for name in FEATURE_NAMES if found[name] and not wanted[name]]
    lacking = [FEATURE_NAMES[name] for name in FEATURE_NAMES if wanted[name] and not found[name]]
    if extra or lacking:
        parts = []
        if extra:
            parts.append(f"the file has {' and '.join(extra)} that MODEL.NAME {model.architecture} lacks")
        if lacking:
            parts.append(f"MODEL.NAME {model.architecture} has {' and '.join(lacking)} that the file lacks")
        fits = [name for name, options in ARCHITECTURES.items() if options == found]
        hint = f" (MODEL.NAME {fits[0]} fits its keys)" if fits else ""
        reasons.append(", ".join(parts) + hint)
    blocks = stage_blocks(state)
    if any(blocks) and blocks != R50_BLOCKS:
        reasons.append(
            f"the file's stages have {'-'.join(map(str, blocks))} blocks, this format builds ResNet-50 "
            f"({'-'.join(map(str, R50_BLOCKS))})"
        )
    if any(key.startswith("heads.bottleneck.1.") for key in state):
        reasons.append("the file's head has an embedding layer (EMBEDDING_DIM > 0), which this format does not build")
    option = getattr(model, "pool_option", "auto")
    if option != "auto" and (POOL_KEY in state) != (option == "gem_p"):
        has = "has" if POOL_KEY in state else "has no"
        reasons.append(f"the file {has} {POOL_KEY} but MODEL.FASTREID_POOL is {option}")
    return reasons


FASTREID_FORMAT = MODEL_FORMATS.register("fastreid")(
    ModelFormat(
        name="fastreid",
        architectures=tuple(ARCHITECTURES),
        build=build,
        load=load,
        detect=detect,
        feature_doc=FEATURE_DOC,
    )
)
