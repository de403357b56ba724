"""The ``torchreid`` model format: KaiyangZhou/deep-person-reid zoo files and training checkpoints.

Zoo files are plain state dicts (OSNet) or ``{'state_dict': ...}`` (``resnet50_market_xent.pth.tar``);
torchreid's training checkpoints are ``{'state_dict', 'epoch', 'rank1', 'optimizer'}``, with
``module.`` prefixes when trained under DataParallel. The keys carry no prefix (``conv1.conv.weight``,
``layer1.0.conv1.weight``). ``classifier.*`` (the training identities) is ignored; any other
missing, unexpected or wrong-shape key is a one-line ``CheckpointError``.
"""
import functools
from collections import OrderedDict
from collections.abc import Mapping

import torch

from utils.errors import CheckpointError
from utils.registry import Registry

from ..checkpoint import compare_state_dicts, read_state, strip_wrapper_prefixes
from ..formats import MODEL_FORMATS, ModelFormat
from .osnet import osnet
from .osnet_ain import osnet_ain
from .resnet import resnet50, resnet50_fc512

FORMAT_NAME = "torchreid"
IGNORED_PREFIXES = ("classifier.",)
# Prefixes of the other ecosystems' state dicts (AGW/PixelFade ``base.``, fast-reid ``backbone.``/``heads.``).
FOREIGN_PREFIXES = ("base.", "backbone.", "heads.")

ARCHITECTURES = Registry("torchreid architecture", config_key="MODEL.NAME")
for _width in ("x1_0", "x0_75", "x0_5", "x0_25"):
    ARCHITECTURES.register(f"osnet_{_width}")(functools.partial(osnet, _width))
    ARCHITECTURES.register(f"osnet_ain_{_width}")(functools.partial(osnet_ain, _width))
ARCHITECTURES.register("osnet_ibn_x1_0")(functools.partial(osnet, "x1_0", ibn=True))
ARCHITECTURES.register("resnet50")(resnet50)
ARCHITECTURES.register("resnet50_fc512")(resnet50_fc512)

FEATURE_DOC = (
    "torchreid eval output, no L2 normalisation: OSNet / OSNet-IBN / OSNet-AIN (every width) = global "
    "average pool of conv5 -> fc [Linear(c->512), BatchNorm1d, ReLU], 512-d and non-negative; resnet50 = "
    "global average pool of layer4 (last stride 2, stem ReLU), 2048-d, no BN; resnet50_fc512 = last stride 1, "
    "global average pool -> fc [Linear(2048->512), BatchNorm1d, ReLU], 512-d"
)


def build(cfg):
    """The torchreid model ``cfg.MODEL.NAME`` without classifier, eval mode, random from MODEL.INIT_SEED.

    Initialisation follows torchreid (nothing is downloaded); the global RNG is left untouched.
    Unknown names raise ConfigError listing the valid ones.
    """
    name = cfg.MODEL.NAME
    factory = ARCHITECTURES.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(getattr(cfg.MODEL, "INIT_SEED", 0))
        model = factory()
    model.arch = name
    return model.eval()


def build_architecture(name):
    """``build`` for a name instead of a config (default seed); for scripts and tests."""
    factory = ARCHITECTURES.get(name)
    model = factory()
    model.arch = name
    return model.eval()


def load(model, state, source="state dict", logger=None):
    """Copy torchreid weights into ``model`` (built by :func:`build`); returns the LoadReport.

    ``state`` is a checkpoint path, a flat state dict or what a torchreid file holds (a
    ``'state_dict'`` entry and ``module.`` prefixes are handled). ``classifier.*`` is ignored;
    anything else that does not fit raises a one-line CheckpointError naming ``source``, the
    architecture (MODEL.NAME), the grouped key counts and which architectures the file would fit.
    """
    state, source = read_state(state, source)
    arch = getattr(model, "arch", type(model).__name__)
    report = compare_state_dicts(model.state_dict(), state, source, IGNORED_PREFIXES)
    if not report.ok:
        fits = fitting_architectures(state)
        hint = f"the file fits {', '.join(fits)}" if fits else "the file fits no torchreid architecture"
        problems = "; ".join(report.problem_lines())
        raise CheckpointError(
            f"{source}: weights do not fit torchreid architecture '{arch}' (MODEL.NAME): {problems}; {hint}"
        )
    model.load_state_dict(OrderedDict((key, state[key]) for key in report.loaded), strict=False)
    if logger is not None:
        logger.info(report.summary())
    return report


@functools.lru_cache(maxsize=None)
def _architecture_shapes(name):
    """Key -> shape of architecture ``name`` (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        model = ARCHITECTURES.get(name)()
    return {key: tuple(t.shape) for key, t in model.state_dict().items() if not key.endswith("num_batches_tracked")}


def fitting_architectures(state):
    """Names of the torchreid architectures whose keys and shapes ``state`` matches (classifier aside)."""
    given = {
        key: tuple(t.shape)
        for key, t in state.items()
        if not key.startswith(IGNORED_PREFIXES) and not key.endswith("num_batches_tracked")
    }
    return [name for name in _candidates(given) if _architecture_shapes(name) == given]


def _candidates(keys):
    """The architecture names worth comparing with (building each costs a fraction of a second)."""
    if "conv1.weight" in keys:
        family = ("resnet",)
    elif "pool2.0.conv.weight" in keys:
        family = ("osnet_ain_",)
    elif "conv1.conv.weight" in keys:
        family = ("osnet_x", "osnet_ibn_")
    else:
        return ()
    return tuple(name for name in ARCHITECTURES.names() if name.startswith(family))


def _keys(state):
    if isinstance(state, Mapping):
        inner = state.get("state_dict")
        if isinstance(inner, Mapping):
            return _keys(inner)
        return {strip_wrapper_prefixes(key) for key in state if isinstance(key, str)}
    return set()


def detect(state):
    """True for a torchreid OSNet / OSNet-AIN / ResNet state dict (no ``base.``/``backbone.``/``heads.``)."""
    keys = _keys(state)
    if not keys or any(key.startswith(FOREIGN_PREFIXES) for key in keys):
        return False
    osnet_like = (
        "conv1.conv.weight" in keys
        and "conv5.conv.weight" in keys
        and any(key.startswith("conv2.0.conv1.conv.") for key in keys)
    )
    # torchreid ResNet: torchvision names but no ImageNet ``fc.weight`` (its fc is absent or fc.0/fc.1).
    resnet_like = (
        "conv1.weight" in keys
        and "layer1.0.conv1.weight" in keys
        and "layer4.0.conv1.weight" in keys
        and "fc.weight" not in keys
    )
    return osnet_like or resnet_like


TORCHREID_FORMAT = MODEL_FORMATS.register(FORMAT_NAME)(
    ModelFormat(
        name=FORMAT_NAME,
        architectures=ARCHITECTURES.names(),
        build=build,
        load=load,
        detect=detect,
        feature_doc=FEATURE_DOC,
    )
)
