"""The paper's other AGW backbones: SE family (Cadene layout) and torchvision MobileNetV2.

Expected keys, shapes and parameter counts are written from the architecture description
(the paper's code and Cadene ``pretrainedmodels`` senet.py), not read back from the code under
test. Big models are built on the meta device wherever no numbers are needed; only the
checkpoint round trip and the functional block/stem checks build real weights.
"""
import math
import urllib.request

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import model_cfg
from torch import nn

from modeling import Baseline, CheckpointError, build_model, load_reid_weights
from modeling.backbones import BACKBONES, build_backbone

SE_NAMES = ["se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50", "se_resnext101", "senet154"]
ALL_NAMES = SE_NAMES + ["mobilenet"]

# kind, blocks per stage, groups
SE_ARCH = {
    "se_resnet50": ("resnet", (3, 4, 6, 3), 1),
    "se_resnet101": ("resnet", (3, 4, 23, 3), 1),
    "se_resnet152": ("resnet", (3, 8, 36, 3), 1),
    "se_resnext50": ("resnext", (3, 4, 6, 3), 32),
    "se_resnext101": ("resnext", (3, 4, 23, 3), 32),
    "senet154": ("senet154", (3, 8, 36, 3), 64),
}

# Trunk parameters = the well-known ImageNet totals minus last_linear (2048 * 1000 + 1000).
LAST_LINEAR = 2048 * 1000 + 1000
TRUNK_PARAMS = {
    "se_resnet50": 28_088_024 - LAST_LINEAR,  # 26,039,024
    "se_resnet101": 49_326_872 - LAST_LINEAR,  # 47,277,872
    "se_resnet152": 66_821_848 - LAST_LINEAR,  # 64,772,848
    "se_resnext50": 27_559_896 - LAST_LINEAR,  # 25,510,896
    "se_resnext101": 48_955_416 - LAST_LINEAR,  # 46,906,416
    "senet154": 115_088_984 - LAST_LINEAR,  # 113,039,984
    "mobilenet": 3_504_872 - (1280 * 1000 + 1000),  # 2,223,872
}
IN_PLANES = {**{name: 2048 for name in SE_NAMES}, "mobilenet": 1280}
HEAD_KEYS = {"global_pool.p", "bottleneck.weight", "bottleneck.bias", "bottleneck.running_mean",
             "bottleneck.running_var", "bottleneck.num_batches_tracked"}


def _bn(prefix, channels):
    shapes = {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")}
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def expected_se_shapes(name):
    """{state-dict key: shape} of Cadene's SENet trunk (no last_linear), built from the description."""
    kind, layers, groups = SE_ARCH[name]
    shapes = {}
    if kind == "senet154":
        stem = [("conv1", 3, 64), ("conv2", 64, 64), ("conv3", 64, 128)]
        for conv, cin, cout in stem:
            shapes[f"layer0.{conv}.weight"] = (cout, cin, 3, 3)
            shapes.update(_bn(f"layer0.bn{conv[-1]}", cout))
        inplanes = 128
    else:
        shapes["layer0.conv1.weight"] = (64, 3, 7, 7)
        shapes.update(_bn("layer0.bn1", 64))
        inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        out = planes * 4
        if kind == "resnet":
            w1 = w2 = planes
        elif kind == "resnext":
            w1 = w2 = math.floor(planes * 4 / 64) * 32
        else:
            w1, w2 = planes * 2, planes * 4
        for j in range(blocks):
            cin = inplanes if j == 0 else out
            p = f"layer{stage}.{j}"
            shapes[f"{p}.conv1.weight"] = (w1, cin, 1, 1)
            shapes[f"{p}.conv2.weight"] = (w2, w1 // groups, 3, 3)
            shapes[f"{p}.conv3.weight"] = (out, w2, 1, 1)
            for bn, ch in (("bn1", w1), ("bn2", w2), ("bn3", out)):
                shapes.update(_bn(f"{p}.{bn}", ch))
            shapes[f"{p}.se_module.fc1.weight"] = (out // 16, out, 1, 1)
            shapes[f"{p}.se_module.fc1.bias"] = (out // 16,)
            shapes[f"{p}.se_module.fc2.weight"] = (out, out // 16, 1, 1)
            shapes[f"{p}.se_module.fc2.bias"] = (out,)
            if j == 0:  # every stage starts with a projection (channels or stride change)
                k = 3 if (kind == "senet154" and stage > 1) else 1
                shapes[f"{p}.downsample.0.weight"] = (out, cin, k, k)
                shapes.update(_bn(f"{p}.downsample.1", out))
        inplanes = out
    return shapes


def meta_model(name, last_stride=1, num_classes=0):
    with torch.device("meta"):
        return build_model(model_cfg(NAME=name, LAST_STRIDE=last_stride), num_classes=num_classes)


def trunk_params(model):
    return sum(p.numel() for p in model.base.parameters())


def test_registered_under_the_papers_model_names():
    assert set(ALL_NAMES) <= set(BACKBONES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parameter_count_in_planes_and_feature_dim(name):
    model = meta_model(name)
    assert trunk_params(model) == TRUNK_PARAMS[name]
    assert model.base.out_channels == model.in_planes == model.feature_dim == IN_PLANES[name]
    assert model.bottleneck.num_features == IN_PLANES[name]


def test_parameter_count_literals_follow_from_the_architecture():
    # ties the literal table to the independent key/shape description
    for name in SE_NAMES:
        shapes = expected_se_shapes(name)
        count = sum(math.prod(s) for k, s in shapes.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        assert count == TRUNK_PARAMS[name], name


@pytest.mark.parametrize("name", SE_NAMES)
def test_se_state_dict_is_cadene_layout(name):
    model = meta_model(name, num_classes=5)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {f"base.{k}": v for k, v in expected_se_shapes(name).items()}
    expected.update({k: (1,) if k == "global_pool.p" else (() if k.endswith("tracked") else (2048,))
                     for k in HEAD_KEYS})
    expected["classifier.weight"] = (5, 2048)
    assert got == expected
    assert not [k for k in got if "last_linear" in k or k.startswith(("base.fc", "base.classifier"))]


def test_se_literal_keys_and_shapes():
    r50 = meta_model("se_resnet50").state_dict()
    assert r50["base.layer0.conv1.weight"].shape == (64, 3, 7, 7)
    assert "base.layer0.bn1.running_var" in r50
    assert r50["base.layer1.0.se_module.fc1.weight"].shape == (16, 256, 1, 1)
    assert r50["base.layer1.0.se_module.fc2.bias"].shape == (256,)
    assert r50["base.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert r50["base.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert "base.layer1.1.downsample.0.weight" not in r50 and "base.layer4.3.conv1.weight" not in r50
    assert {"global_pool.p", "bottleneck.running_mean"} <= set(r50)
    assert "base.layer3.22.conv3.weight" in meta_model("se_resnet101").state_dict()
    assert "base.layer3.35.se_module.fc2.weight" in meta_model("se_resnet152").state_dict()

    x50 = meta_model("se_resnext50")
    assert x50.base.layer1[0].conv2.groups == 32
    assert x50.base.layer4[0].conv2.weight.shape == (1024, 32, 3, 3)
    s154 = meta_model("senet154").state_dict()
    assert s154["base.layer0.conv3.weight"].shape == (128, 64, 3, 3)
    assert s154["base.layer0.bn3.weight"].shape == (128,)
    assert s154["base.layer1.0.conv2.weight"].shape == (256, 2, 3, 3)  # 64 groups
    assert s154["base.layer1.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    assert s154["base.layer2.0.downsample.0.weight"].shape == (512, 256, 3, 3)
    assert s154["base.layer4.0.downsample.0.weight"].shape == (2048, 1024, 3, 3)


def test_stride_placement_and_stem_pool():
    r50, x50, s154 = (meta_model(n).base for n in ("se_resnet50", "se_resnext50", "senet154"))
    assert (r50.layer2[0].conv1.stride, r50.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    for trunk in (x50, s154):
        assert (trunk.layer2[0].conv1.stride, trunk.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    for trunk in (r50, s154):
        assert trunk.layer2[0].downsample[0].stride == (2, 2)
        assert trunk.layer4[0].downsample[0].stride == (1, 1)  # last stride 1
        pool = trunk.layer0.pool
        assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)
    assert s154.layer2[0].downsample[0].padding == (1, 1)


def test_mobilenet_keys_are_torchvision_features_only():
    model = meta_model("mobilenet", num_classes=5)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        reference = torchvision.models.mobilenet_v2(weights=None).state_dict()
    expected = {f"base.{k}": tuple(v.shape) for k, v in reference.items() if not k.startswith("classifier.")}
    assert {k: v for k, v in got.items() if k.startswith("base.")} == expected
    assert set(got) - set(expected) == HEAD_KEYS | {"classifier.weight"}
    assert got["base.features.18.0.weight"] == (1280, 320, 1, 1)
    assert got["base.features.0.0.weight"] == (32, 3, 3, 3)
    assert "base.features.18.1.running_mean" in got and "global_pool.p" in got
    assert got["bottleneck.running_mean"] == (1280,) and got["classifier.weight"] == (5, 1280)


# One per distinct stem/block design (the deeper variants only repeat blocks; their keys and
# counts are checked above, their last stride below at 256x128).
DISTINCT = ["se_resnet50", "se_resnext50", "senet154", "mobilenet"]


@pytest.mark.parametrize("name", SE_NAMES)
def test_last_stride_1_gives_16x8_at_256x128(name):
    x = torch.empty(1, 3, 256, 128, device="meta")
    assert meta_model(name, 1).base(x).shape == (1, 2048, 16, 8)


@pytest.mark.parametrize("name", ["se_resnet50", "se_resnext50", "senet154"])
def test_last_stride_2_gives_8x4_at_256x128(name):
    x = torch.empty(1, 3, 256, 128, device="meta")
    assert meta_model(name, 2).base(x).shape == (1, 2048, 8, 4)


def test_nothing_is_downloaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backbone tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert build_backbone("mobilenet", 1).classifier.__class__ is nn.Identity
    with torch.device("meta"):
        build_backbone("senet154", 1)


# ---- numbers: functional references written with torch.nn.functional -------------------------

def _randomize_norms(module, gen):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def _bn_eval(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _reference_block(block, x, conv1_stride, conv2_stride, groups, shortcut_padding):
    out = F.relu(_bn_eval(F.conv2d(x, block.conv1.weight, stride=conv1_stride), block.bn1))
    out = F.conv2d(out, block.conv2.weight, stride=conv2_stride, padding=1, groups=groups)
    out = F.relu(_bn_eval(out, block.bn2))
    out = _bn_eval(F.conv2d(out, block.conv3.weight), block.bn3)
    se = block.se_module
    gate = F.relu(F.conv2d(out.mean((2, 3), keepdim=True), se.fc1.weight, se.fc1.bias))
    gate = torch.sigmoid(F.conv2d(gate, se.fc2.weight, se.fc2.bias))
    conv, bn = block.downsample
    shortcut = _bn_eval(F.conv2d(x, conv.weight, stride=conv1_stride * conv2_stride,
                                 padding=shortcut_padding), bn)
    return F.relu(out * gate + shortcut)


def _reference_stem(layer0, x, three_convs):
    if three_convs:
        x = F.relu(_bn_eval(F.conv2d(x, layer0.conv1.weight, stride=2, padding=1), layer0.bn1))
        x = F.relu(_bn_eval(F.conv2d(x, layer0.conv2.weight, padding=1), layer0.bn2))
        x = F.relu(_bn_eval(F.conv2d(x, layer0.conv3.weight, padding=1), layer0.bn3))
    else:
        x = F.relu(_bn_eval(F.conv2d(x, layer0.conv1.weight, stride=2, padding=3), layer0.bn1))
    return F.max_pool2d(x, 3, 2, ceil_mode=True)


# name: (conv1 stride, conv2 stride, groups, shortcut padding, in channels) of layer2.0
BLOCK_FACTS = {
    "se_resnet50": (2, 1, 1, 0, 256),
    "se_resnext50": (1, 2, 32, 0, 256),
    "senet154": (1, 2, 64, 1, 256),
}


@pytest.mark.parametrize("name", list(BLOCK_FACTS))
def test_blocks_and_stem_compute_the_cadene_function(name):
    trunk = build_backbone(name, 1).eval()
    gen = torch.Generator().manual_seed(0)
    _randomize_norms(trunk, gen)
    s1, s2, groups, pad, cin = BLOCK_FACTS[name]
    x = torch.randn(2, cin, 9, 7, generator=gen)  # odd sizes: padding/stride slips show up
    with torch.no_grad():
        torch.testing.assert_close(trunk.layer2[0](x), _reference_block(trunk.layer2[0], x, s1, s2, groups, pad))
        image = torch.randn(1, 3, 37, 23, generator=gen)  # odd: ceil_mode differs from padding=1
        torch.testing.assert_close(trunk.layer0(image), _reference_stem(trunk.layer0, image, name == "senet154"))


def _set_random_state(model, gen):
    """Random running statistics, norms and GeM p, so a missed or mixed-up key changes features."""
    _randomize_norms(model, gen)
    model.bottleneck.running_mean.copy_(torch.randn(model.feature_dim, generator=gen) * 0.1)
    model.bottleneck.running_var.copy_(torch.rand(model.feature_dim, generator=gen) + 0.5)
    model.global_pool.p.data.fill_(2.5)


@pytest.mark.parametrize("name", DISTINCT)
def test_checkpoint_round_trip_gives_identical_features(name, tmp_path):
    rng_before = torch.get_rng_state()
    source = build_model(model_cfg(NAME=name, INIT_SEED=3), num_classes=4)
    assert torch.equal(torch.get_rng_state(), rng_before)
    _set_random_state(source, torch.Generator().manual_seed(1))
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)

    fresh = meta_model(name).to_empty(device="cpu")  # no classifier, as for the protection model
    with torch.no_grad():
        for tensor in fresh.state_dict().values():
            tensor.fill_(float("nan") if tensor.is_floating_point() else 0)
    report = load_reid_weights(fresh, path)
    assert report.ignored == ["classifier.weight"] and not report.missing

    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    source.eval()
    fresh.eval()
    with torch.no_grad():
        trunk_out = source.base(x)
        expected, got = source(x), fresh(x)
    want_trunk = (2, 1280) if name == "mobilenet" else (2, 2048, 4, 2)  # 64x32 / 16, last stride 1
    assert trunk_out.shape == want_trunk
    assert expected.shape == (2, IN_PLANES[name]) and torch.isfinite(expected).all()
    assert torch.equal(got, expected)


@pytest.mark.parametrize("source_name,target_name", [
    ("se_resnet50", "se_resnext50"),
    ("se_resnext50", "se_resnet50"),
    ("se_resnet50", "resnet50"),
    ("resnet50", "se_resnet50"),
    ("mobilenet", "se_resnet50"),
    ("se_resnet152", "senet154"),
])
def test_checkpoint_of_another_architecture_is_refused(source_name, target_name):
    state = meta_model(source_name, num_classes=3).state_dict()
    with pytest.raises(CheckpointError, match="do not fit"):
        load_reid_weights(meta_model(target_name), state)


# ---- Baseline head: 2-D trunks skip pooling, 4-D trunks unchanged ---------------------------

def test_four_d_backbone_is_pooled_exactly_as_before():
    torch.manual_seed(0)
    backbone = nn.Conv2d(3, 8, 3, padding=1)
    model = Baseline(backbone, num_classes=3, in_planes=8)
    model.global_pool.p.data.fill_(2.0)
    x = torch.randn(4, 3, 6, 5)
    with torch.no_grad():
        pooled = model.global_pool(backbone(x)).flatten(1)
        logits, train_pooled = model.train()(x)
        model.eval()
        assert torch.equal(model(x), model.bottleneck(pooled))
    assert torch.equal(train_pooled, pooled)
    assert logits.shape == (4, 3) and model.feature_dim == 8


def test_two_d_backbone_skips_pooling_but_keeps_gem_p():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = Baseline(backbone, num_classes=3, in_planes=6)
    assert "global_pool.p" in model.state_dict()
    x = torch.randn(4, 3, 2, 2)
    with torch.no_grad():
        logits, pooled = model.train()(x)
        assert torch.equal(pooled, backbone(x))
        model.eval()
        assert torch.equal(model(x), model.bottleneck(backbone(x)))
    assert logits.shape == (4, 3) and model.feature_dim == 6
