"""AGW for visible-infrared Re-ID (``embed_net`` of mangye16/Cross-Modal-Re-ID-baseline) and the ``agw_vi`` format.

Three ResNets with the reference's module names, so its state dicts load key for key:
``visible_module.visible`` and ``thermal_module.thermal`` give the modality-specific stems (only
``conv1``, ``bn1``, ``relu``, ``maxpool`` run; the rest of each is unused weight that the files hold),
``base_resnet.base`` the shared ``layer1``..``layer4`` (last stride 1; its own stem is unused). Non-local
blocks ``NL_2``/``NL_3`` follow the listed blocks of layer2/layer3, with the reference's quirks: one inner
channel and the plain dot product divided by the number of positions (no softmax). Then GeM (p = 3,
``(mean(x ** 3) + 1e-12) ** (1/3)``), ``bottleneck`` BatchNorm1d with frozen bias and ``classifier``.

The ResNets are torchvision's (same names: conv1, bn1, layer1..4; no weights, nothing downloaded)
with the fc removed and the stride of layer4 set to 1. Architectures (``MODEL.NAME``):

* ``resnet50_nl``: the reference (Bottleneck 3-4-6-3, NL after layer2 blocks 2, 3 and layer3 blocks
  3, 4, 5; 2048-d);
* ``resnet18_nl``: a small model of the same two-stem design for CPU tests and demos, not in the
  reference: BasicBlock 2-2-2-2, one NL block after the last block of layer2 and of layer3, 512-d.

PixelFade sees one modality at a time through :class:`VisibleInfraredAuthorization`, whose
``forward(x)`` runs the chosen stem and returns the feature of ``MODEL.VI_FEATURE``. The input contract
of the reference's files is ``data.transforms.build_vi_eval_transform``: 288 x 144 (H x W, ``INPUT.IMG_SIZE
[288, 144]``), ImageNet mean/std, Lanczos resize. ``MODEL.LAST_STRIDE`` is not read: the reference's is 1.
"""
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from utils.errors import CheckpointError, ConfigError

from .checkpoint import compare_state_dicts, read_state, strip_wrapper_prefixes
from .errors import check_architecture
from .formats import MODEL_FORMATS, ModelFormat

# name -> (torchvision constructor, NL blocks after layer1..layer4, blocks per layer)
ARCHITECTURES = {
    "resnet50_nl": (resnet50, (0, 2, 3, 0), (3, 4, 6, 3)),
    "resnet18_nl": (resnet18, (0, 1, 1, 0), (2, 2, 2, 2)),
}
FEATURES = ("bn", "bn_l2", "pool", "pool_l2")
MODALITIES = {"visible": 1, "infrared": 2}
GEM_P = 3.0
GEM_EPS = 1e-12
IGNORED_PREFIXES = ("classifier.",)
FORMAT_NAME = "agw_vi"
FEATURE_DOC = (
    "AGW cross-modality embed_net at eval, one modality per model (visible or infrared stem -> shared "
    "ResNet-50 with non-local blocks -> GeM p = 3 -> BNNeck); MODEL.VI_FEATURE bn (default: BNNeck output "
    "before L2 normalisation), bn_l2 (the reference's retrieval feature), pool, pool_l2"
)


def l2norm(x):
    """The reference's ``Normalize(2)``: x / ||x||_2 over dim 1, without an epsilon."""
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


def build_resnet(name):
    """A torchvision ResNet without fc and with last stride 1 (no dilation), as the reference's ``resnet50``."""
    constructor = ARCHITECTURES[name][0]
    net = constructor(weights=None)
    del net.fc
    first = net.layer4[0]
    conv = first.conv2 if hasattr(first, "conv3") else first.conv1  # where torchvision puts the stride
    conv.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    return net


class NonLocal(nn.Module):
    """The reference's ``Non_local``: inner channel 1, attention = theta^T phi / N, no softmax."""

    def __init__(self, channels):
        super().__init__()
        self.inter_channels = 1
        self.g = nn.Sequential(nn.Conv2d(channels, 1, kernel_size=1))
        self.W = nn.Sequential(nn.Conv2d(1, channels, kernel_size=1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)
        self.theta = nn.Conv2d(channels, 1, kernel_size=1)
        self.phi = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x):
        batch = x.size(0)
        g_x = self.g(x).view(batch, 1, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(batch, 1, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(batch, 1, -1)
        attention = torch.matmul(theta_x, phi_x)
        y = torch.matmul(attention / attention.size(-1), g_x)
        y = y.permute(0, 2, 1).contiguous().view(batch, 1, *x.shape[2:])
        return self.W(y) + x


class ModalityStem(nn.Module):
    """One modality's own first block (conv1, bn1, relu, maxpool) of a ResNet.

    The reference keeps a whole ResNet under ``visible`` or ``thermal`` and uses only its stem; the
    attribute's name is part of its state dict's keys (``visible_module.visible.conv1.weight``).
    """

    def __init__(self, name, attribute):
        super().__init__()
        self.attribute = attribute
        setattr(self, attribute, build_resnet(name))

    def forward(self, x):
        net = getattr(self, self.attribute)
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))


class BaseResNet(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.base = build_resnet(name)


def _reference_bn_init(bottleneck):
    nn.init.normal_(bottleneck.weight, 1.0, 0.01)
    nn.init.zeros_(bottleneck.bias)


class EmbedNet(nn.Module):
    """The reference's ``embed_net`` (non-local 'on', GeM 'on'); see the module docstring."""

    def __init__(self, num_classes, name="resnet50_nl"):
        super().__init__()
        if name not in ARCHITECTURES:
            raise ConfigError(f"MODEL.NAME {name!r} is not an agw_vi architecture; known: {', '.join(ARCHITECTURES)}")
        _, non_layers, blocks = ARCHITECTURES[name]
        self.architecture = name
        self.thermal_module = ModalityStem(name, "thermal")
        self.visible_module = ModalityStem(name, "visible")
        self.base_resnet = BaseResNet(name)
        base = self.base_resnet.base
        last_bns = [getattr(layer[-1], "bn3", None) or layer[-1].bn2
                    for layer in (base.layer1, base.layer2, base.layer3, base.layer4)]
        widths = [bn.num_features for bn in last_bns]
        self.nl_positions = []
        for index, (count, width, depth) in enumerate(zip(non_layers, widths, blocks), start=1):
            setattr(self, f"NL_{index}", nn.ModuleList(NonLocal(width) for _ in range(count)))
            self.nl_positions.append(sorted(depth - (i + 1) for i in range(count)))
        self.pool_dim = widths[-1]
        self.bottleneck = nn.BatchNorm1d(self.pool_dim)
        self.bottleneck.bias.requires_grad_(False)
        _reference_bn_init(self.bottleneck)
        self.classifier = None  # num_classes 0: a model for inference only
        if num_classes:
            self.classifier = nn.Linear(self.pool_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, 0.0, 0.001)

    def stem(self, x1, x2, modal):
        if modal == 0:
            return torch.cat((self.visible_module(x1), self.thermal_module(x2)), 0)
        if modal == 1:
            return self.visible_module(x1)
        if modal == 2:
            return self.thermal_module(x2)
        raise ValueError(f"modal must be 0 (both), 1 (visible) or 2 (thermal), got {modal!r}")

    def shared(self, x):
        """layer1..layer4 of the shared ResNet with the non-local blocks after their listed blocks."""
        base = self.base_resnet.base
        for index, layer in enumerate((base.layer1, base.layer2, base.layer3, base.layer4), start=1):
            blocks = getattr(self, f"NL_{index}")
            positions = self.nl_positions[index - 1]
            for i, block in enumerate(layer):
                x = block(x)
                if i in positions:
                    x = blocks[positions.index(i)](x)
        return x

    def features(self, x1, x2, modal):
        """``(x_pool, bottleneck(x_pool))`` before any L2 normalisation."""
        x = self.shared(self.stem(x1, x2, modal))
        x_pool = (torch.mean(x.flatten(2) ** GEM_P, dim=-1) + GEM_EPS) ** (1 / GEM_P)
        return x_pool, self.bottleneck(x_pool)

    def forward(self, x1, x2, modal=0):
        x_pool, feat = self.features(x1, x2, modal)
        if self.training:
            if self.classifier is None:
                raise RuntimeError("embed_net built with num_classes 0 has no classifier to train")
            return x_pool, self.classifier(feat)
        return l2norm(x_pool), l2norm(feat)


class VisibleInfraredAuthorization(nn.Module):
    """One modality of an :class:`EmbedNet` as an ordinary authorization model: ``forward(x)`` -> feature.

    ``modality`` 'visible' runs the visible stem (modal 1), 'infrared' the thermal one (modal 2);
    ``feature`` is one of FEATURES (MODEL.VI_FEATURE). :meth:`for_modality` gives the other modality's
    model on the same network.
    """

    def __init__(self, net, modality="visible", feature="bn"):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if feature not in FEATURES:
            raise ConfigError(f"MODEL.VI_FEATURE must be one of {', '.join(FEATURES)}, got {feature!r}")
        self.net = net
        self.modality = modality
        self.feature = feature
        self.feature_dim = net.pool_dim
        self.training = net.training  # wrapping must not switch the shared network's mode

    def for_modality(self, modality):
        """The other modality's model on the same network (same feature, same mode)."""
        return VisibleInfraredAuthorization(self.net, modality, self.feature)

    def forward(self, x):
        x_pool, feat = self.net.features(x, x, MODALITIES[self.modality])
        chosen = feat if self.feature.startswith("bn") else x_pool
        return l2norm(chosen) if self.feature.endswith("_l2") else chosen


def build(cfg):
    """Eval-mode visible-modality :class:`VisibleInfraredAuthorization` of ``MODEL.NAME``, random from INIT_SEED."""
    name = cfg.MODEL.NAME
    check_architecture(name, tuple(ARCHITECTURES), "an agw_vi", "agw_vi")
    feature = cfg.MODEL.VI_FEATURE
    if feature not in FEATURES:
        raise ConfigError(f"MODEL.VI_FEATURE must be one of {', '.join(FEATURES)}, got {feature!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.MODEL.INIT_SEED)
        net = EmbedNet(0, name)
    return VisibleInfraredAuthorization(net, "visible", feature).eval()


def fitting_architecture(state):
    """The architecture whose shared ResNet the keys show (bottleneck blocks have conv3), or None."""
    if "base_resnet.base.layer1.0.conv3.weight" in state:
        return "resnet50_nl"
    if "base_resnet.base.layer1.0.conv2.weight" in state:
        return "resnet18_nl"
    return None


def load(model, state, source="state dict", logger=None):
    """Copy an agw_vi checkpoint (path, ``{'net': ...}`` or plain state dict) into ``model``; returns the LoadReport.

    ``classifier.*`` is ignored; anything else missing, unexpected or of the wrong shape raises a
    one-line CheckpointError naming ``source``, MODEL.NAME and the architecture the keys fit.
    """
    net = model.net if isinstance(model, VisibleInfraredAuthorization) else model
    if not isinstance(net, EmbedNet):
        raise TypeError(f"expected a model built by the agw_vi format, got {type(model).__name__}")
    state, source = read_state(state, source)
    report = compare_state_dicts(net.state_dict(), state, source, IGNORED_PREFIXES)
    if not report.ok:
        fits = fitting_architecture(state)
        hint = f"; its keys fit MODEL.NAME {fits}" if fits and fits != net.architecture else ""
        raise CheckpointError(
            f"{source}: weights do not fit agw_vi architecture {net.architecture} (MODEL.NAME): "
            f"{'; '.join(report.problem_lines())}{hint}"
        )
    net.load_state_dict(OrderedDict((key, state[key]) for key in report.loaded), strict=False)
    if logger is not None:
        logger.info(report.summary())
    return report


def detect(state):
    """True for keys of the reference's embed_net: some under ``visible_module.`` and some under ``thermal_module.``."""
    if not isinstance(state, Mapping):
        return False
    if isinstance(state.get("net"), Mapping):
        state = state["net"]
    keys = [strip_wrapper_prefixes(key) for key in state if isinstance(key, str)]
    return any(k.startswith("visible_module.") for k in keys) and any(k.startswith("thermal_module.") for k in keys)


AGW_VI_FORMAT = MODEL_FORMATS.register(FORMAT_NAME)(
    ModelFormat(
        name=FORMAT_NAME,
        architectures=tuple(ARCHITECTURES),
        build=build,
        load=load,
        detect=detect,
        feature_doc=FEATURE_DOC,
    )
)
