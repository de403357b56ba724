"""The ``torchreid`` model format: torchreid's OSNet / OSNet-AIN / ResNet-50 rebuilt with its keys.

Everything runs on tiny random models and inputs (64x32); no weights are downloaded. A "zoo file"
here is written the way torchreid's zoo files are (a plain state dict with a 751-row classifier),
a "training checkpoint" the way ``torchreid.utils.save_checkpoint`` writes one
(``{'state_dict', 'epoch', 'rank1', 'optimizer'}`` with DataParallel ``module.`` prefixes).
"""

import logging
from collections import OrderedDict

import pytest
import torch
import torchvision
from helpers import model_cfg
from torch import nn
from torch.nn import functional as F

import modeling.torchreid  # noqa: F401  (registers the format)
from modeling.backbones import build_backbone
from modeling.baseline import Baseline
from modeling.checkpoint import read_checkpoint
from modeling.formats import MODEL_FORMATS
from utils.errors import CheckpointError, ConfigError

FMT = MODEL_FORMATS.get("torchreid")
ARCHS = (
    "osnet_ain_x0_25",
    "osnet_ain_x0_5",
    "osnet_ain_x0_75",
    "osnet_ain_x1_0",
    "osnet_ibn_x1_0",
    "osnet_x0_25",
    "osnet_x0_5",
    "osnet_x0_75",
    "osnet_x1_0",
    "resnet50",
    "resnet50_fc512",
)
FEATURE_DIMS = {name: 512 for name in ARCHS} | {"resnet50": 2048}
MARKET_IDS = 751
LOG = logging.getLogger("test.torchreid")


def build(name, seed=0):
    return FMT.build(model_cfg(NAME=name, INIT_SEED=seed))


def build_meta(name):
    """Shapes and keys only: the model on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return build(name)


def image_batch(seed=0, size=(64, 32)):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def features(model, x):
    with torch.no_grad():
        return model(x)


def trained_looking(model, seed=1):
    """Give every norm layer non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif key.endswith("running_mean") or (key.endswith("bias") and tensor.dim() == 1):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif tensor.dim() == 1 and tensor.is_floating_point():  # norm weights
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    return model


def zoo_state(model):
    """What a torchreid zoo file holds: the model's tensors followed by the training classifier."""
    state = OrderedDict((key, tensor.clone()) for key, tensor in model.state_dict().items())
    state["classifier.weight"] = torch.randn(MARKET_IDS, model.feature_dim) * 0.01
    state["classifier.bias"] = torch.zeros(MARKET_IDS)
    return state


def training_checkpoint(model):
    """What torchreid's save_checkpoint writes for a DataParallel model."""
    state = OrderedDict(("module." + key, tensor) for key, tensor in zoo_state(model).items())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0015, amsgrad=True)
    return {"state_dict": state, "epoch": 150, "rank1": 0.942, "optimizer": optimizer.state_dict()}


def zoo_file(tmp_path_factory, name, filename):
    """(path, model): a trained-looking ``name`` saved as a model-zoo file called ``filename``."""
    model = trained_looking(build(name))
    path = tmp_path_factory.mktemp("zoo") / filename
    torch.save(zoo_state(model), path)
    return path, model


@pytest.fixture(scope="module")
def osnet_x1_0_file(tmp_path_factory):
    return zoo_file(tmp_path_factory, "osnet_x1_0", "osnet_x1_0_market_256x128_amsgrad_ep150.pth")


@pytest.fixture(scope="module")
def osnet_x0_25_file(tmp_path_factory):
    return zoo_file(tmp_path_factory, "osnet_x0_25", "osnet_x0_25_market.pth")


# --- registration and building ---------------------------------------------------------------------


def test_format_is_registered_with_every_architecture():
    assert FMT.name == "torchreid"
    assert tuple(sorted(FMT.architectures)) == ARCHS
    assert "512" in FMT.feature_doc and "2048" in FMT.feature_doc


def test_unknown_name_is_a_config_error_listing_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        build("resnet50_nl")
    message = str(err.value)
    assert "MODEL.NAME" in message and "resnet50_nl" in message
    assert "osnet_ain_x1_0" in message and "resnet50_fc512" in message


@pytest.mark.parametrize("name", ARCHS)
def test_built_model_is_eval_feature_extractor_without_classifier(name):
    model = build(name)
    assert not model.training
    assert isinstance(model.feature_dim, int) and model.feature_dim == FEATURE_DIMS[name]
    assert not any(key.startswith("classifier") for key in model.state_dict())
    out = features(trained_looking(model), image_batch())
    assert out.shape == (2, FEATURE_DIMS[name])
    if name.startswith("osnet"):  # the fc ends in a ReLU
        assert out.min() >= 0 and out.max() > 0


def test_init_follows_init_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, again, other = build("osnet_x0_25", 3), build("osnet_x0_25", 3), build("osnet_x0_25", 4)
    assert torch.equal(torch.rand(1), expected_next)
    key = "conv2.0.conv1.conv.weight"
    assert torch.equal(first.state_dict()[key], again.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])
    # torchreid's init: BN 1/0, Linear N(0, 0.01) with zero bias, He fan_out convs
    state = first.state_dict()
    assert torch.equal(state["fc.1.weight"], torch.ones(512)) and torch.equal(state["fc.0.bias"], torch.zeros(512))
    assert abs(state["fc.0.weight"].std().item() - 0.01) < 0.001
    conv = state["conv2.0.conv1.conv.weight"]  # 16 out channels, 1x1: fan_out 16
    assert abs(conv.std().item() - (2 / 16) ** 0.5) < 0.1


# --- exact structure ---------------------------------------------------------------------------------


def osnet_counts(channels, ibn=False):
    """(parameters, state-dict keys) of torchreid OSNet without classifier, from the architecture text."""
    c0, c1, c2, c3 = channels
    bn_params, bn_keys = 2, 5  # weight, bias (+ running_mean, running_var, num_batches_tracked)

    def block(cin, cout, with_in=False):
        mid = cout // 4
        hidden = mid // 16
        params = cin * mid + bn_params * mid  # conv1
        params += 10 * (mid * mid + 9 * mid + bn_params * mid)  # 1+2+3+4 LightConv3x3
        params += mid * hidden + hidden + hidden * mid + mid  # shared gate
        params += mid * cout + bn_params * cout  # conv3
        keys = (1 + bn_keys) + 10 * (2 + bn_keys) + 4 + (1 + bn_keys)
        if cin != cout:
            params += cin * cout + bn_params * cout
            keys += 1 + bn_keys
        if with_in:
            params += 2 * cout
            keys += 2
        return params, keys

    def add(*counts):
        return tuple(map(sum, zip(*counts)))

    stem = (3 * 49 * c0 + 2 * c0, 1 + (2 if ibn else bn_keys))
    trans = lambda c: (c * c + bn_params * c, 1 + bn_keys)  # noqa: E731
    head = (c3 * 512 + 512 + bn_params * 512, 2 + bn_keys)
    return add(
        stem,
        block(c0, c1, ibn),
        block(c1, c1, ibn),
        trans(c1),
        block(c1, c2),
        block(c2, c2),
        trans(c2),
        block(c2, c3),
        block(c3, c3),
        trans(c3),
        head,
    )


@pytest.mark.parametrize(
    "name, params, keys",
    [
        ("osnet_x1_0", 2_169_508, 565),  # torchreid's "2.2M" (the paper's count, classifier excluded)
        ("osnet_x0_25", 201_864, 565),  # "0.2M"
        ("osnet_ibn_x1_0", 2_170_532, 566),
        ("resnet50", 23_508_032, 318),  # torchvision resnet50 minus fc (25,557,032 - 2,049,000; 320 - 2 keys)
    ],
)
def test_parameter_and_key_counts(name, params, keys):
    model = build_meta(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys
    if name.startswith("osnet"):
        width = name.rsplit("_", 2)[-2] + "_" + name.rsplit("_", 1)[-1]
        channels = {"x1_0": (64, 256, 384, 512), "x0_25": (16, 64, 96, 128)}[width]
        assert osnet_counts(channels, ibn="ibn" in name) == (params, keys)


def test_osnet_keys_are_torchreids():
    keys = set(build("osnet_x1_0").state_dict())
    for key in (
        "conv1.conv.weight",
        "conv1.bn.running_mean",
        "conv2.0.conv1.conv.weight",
        "conv2.0.conv2a.conv1.weight",
        "conv2.0.conv2a.conv2.weight",
        "conv2.0.conv2a.bn.weight",
        "conv2.0.conv2b.1.bn.running_var",
        "conv2.0.conv2c.2.conv1.weight",
        "conv2.0.conv2d.3.conv2.weight",
        "conv2.0.gate.fc1.weight",
        "conv2.0.gate.fc2.bias",
        "conv2.0.conv3.bn.weight",
        "conv2.0.downsample.conv.weight",
        "conv2.2.0.conv.weight",
        "conv2.2.0.bn.num_batches_tracked",
        "conv3.2.0.bn.weight",
        "conv4.1.conv3.conv.weight",
        "conv5.conv.weight",
        "conv5.bn.bias",
        "fc.0.weight",
        "fc.1.running_var",
    ):
        assert key in keys, key
    absent = (
        "conv2.1.downsample.conv.weight",
        "conv4.2.0.conv.weight",
        "conv2.0.IN.weight",
        "conv2.0.conv2a.0.conv1.weight",
    )
    for key in absent:
        assert key not in keys, key
    ibn = set(build("osnet_ibn_x1_0").state_dict())
    assert {"conv1.bn.weight", "conv2.0.IN.weight", "conv2.1.IN.bias"} <= ibn
    assert not {"conv1.bn.running_mean", "conv3.0.IN.weight", "conv2.2.0.IN.weight"} & ibn


def test_osnet_ain_keys_are_torchreids():
    state = build("osnet_ain_x1_0").state_dict()
    for key in (
        "conv1.bn.weight",
        "conv2.0.conv2.0.layers.0.conv1.weight",
        "conv2.0.conv2.3.layers.3.bn.running_mean",
        "conv2.0.conv3.conv.weight",
        "conv2.0.IN.weight",
        "conv2.1.IN.bias",
        "pool2.0.conv.weight",
        "pool3.0.bn.weight",
        "conv3.0.conv3.bn.weight",
        "conv3.1.IN.weight",
        "conv4.0.IN.weight",
        "conv4.1.conv3.bn.weight",
        "conv5.conv.weight",
        "fc.1.weight",
    ):
        assert key in state, key
    for key in (
        "conv1.bn.running_mean",
        "conv2.0.conv3.bn.weight",
        "conv3.0.IN.weight",
        "conv4.1.IN.weight",
        "conv2.2.0.conv.weight",
        "conv2.0.conv2a.conv1.weight",
        "conv2.0.conv2.4.layers.0.conv1.weight",
    ):
        assert key not in state, key
    assert state["conv2.0.gate.fc1.weight"].shape == (4, 64, 1, 1)  # mid 256/4, reduction 16
    assert state["conv2.0.conv2.1.layers.1.conv2.weight"].shape == (64, 1, 3, 3)  # depthwise


def test_resnet_keys_and_fc():
    plain = build_meta("resnet50").state_dict()
    fc512 = build_meta("resnet50_fc512").state_dict()
    assert {"conv1.weight", "bn1.running_mean", "layer4.0.downsample.0.weight", "layer4.2.bn3.bias"} <= set(plain)
    assert not any(key.startswith("fc") for key in plain)
    assert set(fc512) - set(plain) == {f"fc.0.{s}" for s in ("weight", "bias")} | {
        f"fc.1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert fc512["fc.0.weight"].shape == (512, 2048)


@pytest.mark.parametrize(
    "name, grid",
    [("resnet50", (8, 4)), ("resnet50_fc512", (16, 8)), ("osnet_x1_0", (16, 8)), ("osnet_ain_x0_25", (16, 8))],
)
def test_feature_map_grid_at_256x128(name, grid):
    model = build_meta(name)
    fmap = model.featuremaps(torch.empty(1, 3, 256, 128, device="meta"))
    channels = 2048 if name.startswith("resnet") else (512 if "x1_0" in name else 128)
    assert tuple(fmap.shape) == (1, channels, *grid)


# --- eval behaviour against independent definitions --------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "resnet50_fc512"])
def test_resnet_features_equal_torchvision_with_torchreid_head(name):
    """torchreid's ResNet = torchvision's (stem ReLU, stride on conv2) with its own last stride and head."""
    ours = trained_looking(build(name))
    reference = torchvision.models.resnet50()
    if name == "resnet50_fc512":
        reference.layer4[0].conv2.stride = (1, 1)
        reference.layer4[0].downsample[0].stride = (1, 1)
        reference.fc = nn.Sequential(nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.ReLU())
    else:
        reference.fc = nn.Identity()
    reference.load_state_dict(ours.state_dict(), strict=True)
    reference.eval()
    x = image_batch()
    assert torch.allclose(features(ours, x), features(reference, x), atol=1e-5, rtol=1e-4)


def _norm(sd, x, prefix):
    if prefix + ".running_mean" in sd:
        stats = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
        return F.batch_norm(x, *stats, sd[prefix + ".weight"], sd[prefix + ".bias"], False, 0.0, 1e-5)
    return F.instance_norm(x, weight=sd[prefix + ".weight"], bias=sd[prefix + ".bias"], eps=1e-5)


def reference_osnet(sd, x, ain):
    """Functional eval forward of torchreid OSNet / OSNet-AIN written from the structure torchreid documents."""

    def conv_bn_relu(x, p, stride=1, padding=0):
        return F.relu(_norm(sd, F.conv2d(x, sd[p + ".conv.weight"], stride=stride, padding=padding), p + ".bn"))

    def light(x, p):
        x = F.conv2d(x, sd[p + ".conv1.weight"])
        x = F.conv2d(x, sd[p + ".conv2.weight"], padding=1, groups=x.shape[1])
        return F.relu(_norm(sd, x, p + ".bn"))

    def gate(x, p):
        g = F.relu(F.conv2d(F.adaptive_avg_pool2d(x, 1), sd[p + ".fc1.weight"], sd[p + ".fc1.bias"]))
        return x * torch.sigmoid(F.conv2d(g, sd[p + ".fc2.weight"], sd[p + ".fc2.bias"]))

    def stream(x, p, t):
        names = (
            [f"{p}.conv2.{t}.layers.{k}" for k in range(t + 1)]
            if ain
            else ([f"{p}.conv2a"] if t == 0 else [f"{p}.conv2{'abcd'[t]}.{k}" for k in range(t + 1)])
        )
        for name in names:
            x = light(x, name)
        return x

    def block(x, p):
        x1 = conv_bn_relu(x, p + ".conv1")
        x2 = sum(gate(stream(x1, p, t), p + ".gate") for t in range(4))
        x3 = F.conv2d(x2, sd[p + ".conv3.conv.weight"])
        if p + ".conv3.bn.weight" in sd:
            x3 = _norm(sd, x3, p + ".conv3.bn")
        has_in = p + ".IN.weight" in sd
        if ain and has_in:  # OSBlockINin: IN inside the residual
            x3 = _norm(sd, x3, p + ".IN")
        identity = x
        if p + ".downsample.conv.weight" in sd:
            identity = _norm(sd, F.conv2d(x, sd[p + ".downsample.conv.weight"]), p + ".downsample.bn")
        out = x3 + identity
        if not ain and has_in:  # IBN: IN after the sum
            out = _norm(sd, out, p + ".IN")
        return F.relu(out)

    def pool(x, p):
        return F.avg_pool2d(conv_bn_relu(x, p), 2, 2)

    x = F.max_pool2d(conv_bn_relu(x, "conv1", stride=2, padding=3), 3, 2, 1)
    x = block(block(x, "conv2.0"), "conv2.1")
    x = pool(x, "pool2.0" if ain else "conv2.2.0")
    x = block(block(x, "conv3.0"), "conv3.1")
    x = pool(x, "pool3.0" if ain else "conv3.2.0")
    x = conv_bn_relu(block(block(x, "conv4.0"), "conv4.1"), "conv5")
    v = F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd["fc.0.weight"], sd["fc.0.bias"])
    return F.relu(_norm(sd, v, "fc.1"))


@pytest.mark.parametrize("name", ["osnet_x0_25", "osnet_ibn_x1_0", "osnet_ain_x0_25"])
def test_osnet_eval_forward_matches_the_architecture_description(name):
    model = trained_looking(build(name))
    x = image_batch()
    expected = reference_osnet(model.state_dict(), x, ain="ain" in name)
    assert torch.allclose(features(model, x), expected, atol=1e-5, rtol=1e-4)


# --- loading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        ("osnet_x0_25", "zoo"),
        ("osnet_x0_25", "training"),
        ("osnet_ain_x0_25", "zoo"),
        ("osnet_ain_x0_25", "training"),
        ("osnet_ibn_x1_0", "zoo"),
        ("resnet50", "state_dict_entry"),  # how resnet50_market_xent.pth.tar is stored
        ("resnet50_fc512", "zoo"),
    ],
)
def test_file_loads_exactly(tmp_path, name, kind):
    source = trained_looking(build(name, seed=1))
    path = tmp_path / f"{name}.pth"
    content = {
        "zoo": zoo_state,
        "training": training_checkpoint,
        "state_dict_entry": lambda m: {"state_dict": zoo_state(m)},
    }[kind](source)
    torch.save(content, path)
    fresh = build(name, seed=2)
    x = image_batch()
    assert not torch.allclose(features(fresh, x), features(source, x))
    state = read_checkpoint(path)
    assert FMT.detect(state)
    report = FMT.load(fresh, state, str(path), LOG)
    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]
    assert report.ok and len(report.loaded) == len(source.state_dict())
    assert torch.equal(features(fresh, x), features(source, x))


def test_load_accepts_a_path_and_the_raw_training_dict(tmp_path, osnet_x0_25_file):
    path, source = osnet_x0_25_file
    x = image_batch()
    from_path = build("osnet_x0_25", seed=5)
    FMT.load(from_path, path)
    from_dict = build("osnet_x0_25", seed=6)
    FMT.load(from_dict, training_checkpoint(source), "ckpt")
    assert torch.equal(features(from_path, x), features(source, x))
    assert torch.equal(features(from_dict, x), features(source, x))


def _load_error(name, state, source):
    model = build(name)
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        FMT.load(model, state, source)
    assert all(torch.equal(before[key], tensor) for key, tensor in model.state_dict().items())  # nothing copied
    message = str(err.value)
    assert "\n" not in message and source in message and f"'{name}'" in message and "MODEL.NAME" in message
    return message


def test_other_width_is_one_line_error_naming_file_architecture_and_the_fit(osnet_x1_0_file):
    path, _ = osnet_x1_0_file
    message = _load_error("osnet_x0_25", read_checkpoint(path), str(path))
    assert "conv1: 5 wrong shape" in message and "conv2: " in message and "fc: 1 wrong shape" in message
    assert "conv1.conv.weight: checkpoint (64, 3, 7, 7) vs model (16, 3, 7, 7)" in message
    assert message.endswith("the file fits osnet_x1_0")


def test_osnet_file_as_resnet50_and_ain_are_clear_errors(osnet_x0_25_file):
    path, _ = osnet_x0_25_file
    state = read_checkpoint(path)
    message = _load_error("resnet50", state, str(path))
    assert "layer1: " in message and " missing" in message and "conv2: " in message and " unexpected" in message
    assert message.endswith("the file fits osnet_x0_25")
    message = _load_error("osnet_ain_x0_25", state, str(path))
    assert "pool2: 5 missing" in message and "the file fits osnet_x0_25" in message


def test_resnet50_file_as_fc512_and_a_truncated_file(tmp_path):
    state = OrderedDict((key, torch.zeros(t.shape)) for key, t in build_meta("resnet50").state_dict().items())
    state["classifier.weight"], state["classifier.bias"] = torch.zeros(MARKET_IDS, 2048), torch.zeros(MARKET_IDS)
    message = _load_error("resnet50_fc512", state, "resnet50_market_xent.pth.tar")
    assert "fc: 6 missing" in message and message.endswith("the file fits resnet50")
    del state["layer4.2.bn3.running_var"]
    message = _load_error("resnet50", state, "cut.pth")
    assert "layer4: 1 missing" in message and message.endswith("fits no torchreid architecture")


# --- detect ------------------------------------------------------------------------------------------


def _keys(*names):
    return OrderedDict((name, torch.zeros(1)) for name in names)


def test_detect_accepts_torchreid_and_refuses_other_ecosystems():
    osnet_state = zoo_state(build("osnet_x0_25"))
    resnet_keys = list(build_meta("resnet50").state_dict())
    assert FMT.detect(osnet_state)
    assert FMT.detect(build("osnet_ain_x0_25").state_dict())
    assert FMT.detect(_keys(*resnet_keys, "classifier.weight", "classifier.bias"))
    assert FMT.detect({"state_dict": OrderedDict(("module." + k, v) for k, v in osnet_state.items()), "epoch": 3})
    # AGW / PixelFade (base.), fast-reid (backbone./heads.), torchvision ImageNet (fc.weight), nonsense
    assert not FMT.detect(OrderedDict(("base." + k, v) for k, v in osnet_state.items()))
    assert not FMT.detect(_keys(*("base." + k for k in resnet_keys), "bottleneck.weight", "global_pool.p"))
    assert not FMT.detect(_keys(*("backbone." + k for k in resnet_keys), "heads.bottleneck.0.weight"))
    assert not FMT.detect(_keys(*resnet_keys, "fc.weight", "fc.bias"))
    # a fast-reid model whose backbone prefix was stripped still has its heads: not torchreid
    assert not FMT.detect(_keys(*resnet_keys, "heads.bottleneck.0.weight", "heads.weight"))
    assert not FMT.detect(_keys("conv1.weight", "weight"))
    assert not FMT.detect({})


# --- the AGW-family osnet_x1_0 backbone (PixelFade's `osnet`) ----------------------------------------


def test_agw_osnet_backbone_is_torchreid_osnet_cut_at_conv5():
    backbone = build_backbone("osnet_x1_0", 1)
    model = Baseline(backbone, num_classes=0, generalized_mean_pool=True, in_planes=backbone.out_channels).eval()
    keys = set(model.state_dict())
    for key in (
        "base.conv1.conv.weight",
        "base.conv1.bn.running_var",
        "base.conv2.0.conv2a.conv1.weight",
        "base.conv2.1.conv2d.3.bn.weight",
        "base.conv2.0.gate.fc2.bias",
        "base.conv2.0.downsample.conv.weight",
        "base.conv2.2.0.conv.weight",
        "base.conv3.2.0.bn.weight",
        "base.conv4.1.conv3.bn.weight",
        "base.conv5.conv.weight",
        "global_pool.p",
        "bottleneck.weight",
    ):
        assert key in keys, key
    assert not any(key.startswith(("base.fc", "base.classifier", "classifier")) for key in keys)
    torchreid_trunk = {key for key in build("osnet_x1_0").state_dict() if not key.startswith("fc.")}
    assert {key[len("base.") :] for key in keys if key.startswith("base.")} == torchreid_trunk
    assert model.in_planes == 512
    x = image_batch()
    with torch.no_grad():
        assert backbone(x).shape == (2, 512, 4, 2)
        assert model(x).shape == (2, 512)
