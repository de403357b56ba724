"""The ``fastreid`` model format: fast-reid R50 files (current and model-zoo key names) load into
a model whose features equal the source model's and an independent functional re-computation of
fast-reid's eval forward; stem max-pool variants, head pooling, one-line errors, detection."""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from helpers import model_cfg

from modeling.checkpoint import read_checkpoint
from modeling.fastreid import ARCHITECTURES, FASTREID_FORMAT, stem_maxpool
from modeling.formats import MODEL_FORMATS
from utils.errors import CheckpointError, ConfigError

FMT = MODEL_FORMATS.get("fastreid")
HEIGHT, WIDTH = 64, 32
MEAN_255 = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD_255 = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
LEARNED_P = 2.5
# Sources: the BoT-style ones without a p key (average pooling), AGW R50 without (GeM p = 3),
# AGW/SBS R50-ibn with a learnable p.
SOURCE_P = {"resnet50": None, "resnet50_nl": None, "resnet50_ibn": None, "resnet50_ibn_nl": LEARNED_P,
            "resnet50_se": None}


# ------------------------------------------------------------------------------------------------
# An independent re-computation of fast-reid's eval forward from a state dict with current keys.
# ------------------------------------------------------------------------------------------------
class UsedKeys(dict):
    """A state dict that remembers which keys were read."""

    def __init__(self, state):
        super().__init__(state)
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], False, 0.0, 1e-5)


def _norm1(x, sd, prefix):
    if prefix + "IN.weight" not in sd:
        return _bn(x, sd, prefix)
    half = x.shape[1] // 2
    first = F.instance_norm(x[:, :half].contiguous(), weight=sd[prefix + "IN.weight"], bias=sd[prefix + "IN.bias"],
                            eps=1e-5)
    return torch.cat([first, _bn(x[:, half:].contiguous(), sd, prefix + "BN.")], dim=1)


def _block(x, sd, prefix, stride):
    out = F.relu(_norm1(F.conv2d(x, sd[prefix + "conv1.weight"]), sd, prefix + "bn1."))
    out = F.relu(_bn(F.conv2d(out, sd[prefix + "conv2.weight"], stride=stride, padding=1), sd, prefix + "bn2."))
    out = _bn(F.conv2d(out, sd[prefix + "conv3.weight"]), sd, prefix + "bn3.")
    if prefix + "se.fc.0.weight" in sd:
        squeeze = out.mean(dim=(2, 3))
        excite = torch.sigmoid(F.linear(F.relu(F.linear(squeeze, sd[prefix + "se.fc.0.weight"])),
                                        sd[prefix + "se.fc.2.weight"]))
        out = out * excite.view(out.shape[0], out.shape[1], 1, 1)
    if prefix + "downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[prefix + "downsample.0.weight"], stride=stride), sd, prefix + "downsample.1.")
    return F.relu(out + x)


def _non_local(x, sd, prefix):
    batch, _, height, width = x.shape

    def embed(name):
        return F.conv2d(x, sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"]).view(batch, 1, -1)

    theta, phi, g = embed("theta").permute(0, 2, 1), embed("phi"), embed("g").permute(0, 2, 1)
    affinity = torch.matmul(theta, phi)
    y = torch.matmul(affinity / affinity.shape[-1], g).permute(0, 2, 1).reshape(batch, 1, height, width)
    w_y = _bn(F.conv2d(y, sd[prefix + "W.0.weight"], sd[prefix + "W.0.bias"]), sd, prefix + "W.1.")
    return w_y + x


def reference_features(state, x, maxpool="ceil", pooling="avg", p=3.0, last_stride=1):
    sd = UsedKeys(state)
    x = F.relu(_bn(F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3), sd, "backbone.bn1."))
    if maxpool == "ceil":
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
    else:
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, last_stride)), start=1):
        n_nl = len({k.split(".")[2] for k in sd if k.startswith(f"backbone.NL_{stage}.")})
        for j in range(blocks):
            x = _block(x, sd, f"backbone.layer{stage}.{j}.", stride if j == 0 else 1)
            if j >= blocks - n_nl:
                x = _non_local(x, sd, f"backbone.NL_{stage}.{j - (blocks - n_nl)}.")
    if pooling == "avg":
        pooled = x.mean(dim=(2, 3), keepdim=True)
    else:
        if pooling == "gem_p":
            p = sd["heads.pool_layer.p"]
        pooled = x.clamp(min=1e-6).pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p)
    feature = _bn(pooled, sd, "heads.bottleneck.0.")[:, :, 0, 0]
    unused = {k for k in sd if not k.endswith("num_batches_tracked")} - sd.used
    assert not unused, f"reference left keys unused: {sorted(unused)[:5]}"
    return feature


# ------------------------------------------------------------------------------------------------
# Source models and fast-reid-style files
# ------------------------------------------------------------------------------------------------
def fastreid_cfg(name, maxpool="ceil"):
    return model_cfg(NAME=name, FASTREID_MAXPOOL=maxpool)


_BUILT = {}


def built(name, maxpool="ceil"):
    """A fresh ``FMT.build`` model (a copy of one built per name and max-pool: building costs more)."""
    if (name, maxpool) not in _BUILT:
        _BUILT[name, maxpool] = FMT.build(fastreid_cfg(name, maxpool))
    return copy.deepcopy(_BUILT[name, maxpool])


def make_source(name, p=None, seed=0):
    """A fast-reid-keyed model with random, non-trivial weights and calibrated BN statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FMT.build(fastreid_cfg(name))
        if p is not None:
            model.set_pooling("gem_p")
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) and module.affine:
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)  # also the NL blocks' zero-initialised W.1
                torch.nn.init.normal_(module.bias, 0.0, 0.1)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running stats := the calibration batch's statistics
        if p is not None:
            model.heads.pool_layer.p.data.fill_(p)
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, HEIGHT, WIDTH))
        model.eval()
    return model


def current_file(state, num_classes=7):
    """fast-reid >= 2021-03: BNNeck ``heads.bottleneck.0``, classifier ``heads.weight``, no pixel buffers."""
    model = dict(state)
    model["heads.weight"] = torch.randn(num_classes, 2048)
    return {"model": model, "optimizer": {}, "scheduler": {}, "iteration": 1200}


def zoo_file(state, num_classes=7):
    """v0.1.1 / model-zoo names: ``pixel_mean``/``pixel_std`` buffers, ``heads.bnneck``, ``heads.classifier``."""
    model = {"pixel_mean": MEAN_255.clone(), "pixel_std": STD_255.clone()}
    for key, tensor in state.items():
        model[key.replace("heads.bottleneck.0.", "heads.bnneck.")] = tensor
    model["heads.classifier.weight"] = torch.randn(num_classes, 2048)
    return {"model": model, "iteration": 1200}


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def sources(inputs):
    cache = {}

    def get(name):
        if name not in cache:
            model = make_source(name, SOURCE_P[name])
            with torch.no_grad():
                features = model(inputs)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            cache[name] = (state, features)
        return cache[name]

    return get


def load_file(tmp_path, content, name, maxpool="ceil", filename="model_final.pth"):
    path = tmp_path / filename
    torch.save(content, path)
    model = built(name, maxpool)
    report = FMT.load(model, read_checkpoint(path), str(path), logging.getLogger("test"))
    return model, report


def features(model, x):
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("naming", ["current", "zoo"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_fastreid_file_gives_source_and_reference_features(tmp_path, sources, inputs, name, naming):
    state, source_features = sources(name)
    content = current_file(state) if naming == "current" else zoo_file(state)
    model, report = load_file(tmp_path, content, name)
    assert not model.training and model.feature_dim == 2048
    loaded = features(model, inputs)
    assert loaded.shape == (2, 2048)
    assert torch.equal(loaded, source_features)
    p = SOURCE_P[name]
    pooling = "gem_p" if p is not None else ("gem" if name.endswith("_nl") else "avg")
    assert model.pooling == pooling
    expected = reference_features(state, inputs, "ceil", pooling)
    assert (loaded - expected).abs().max() <= 1e-6 * expected.abs().max()
    ignored = {"heads.weight"} if naming == "current" else {"heads.classifier.weight", "pixel_mean", "pixel_std"}
    assert set(report.ignored) == ignored
    assert len(report.loaded) == len(state)


def test_backbone_keys_are_torchvision_resnet50_keys():
    torchvision = pytest.importorskip("torchvision")
    tv_keys = set(torchvision.models.resnet50(weights=None).state_dict()) - {"fc.weight", "fc.bias"}
    keys = built("resnet50").state_dict()
    assert {k[len("backbone."):] for k in keys if k.startswith("backbone.")} == tv_keys
    assert {k for k in keys if not k.startswith("backbone.")} == {
        f"heads.bottleneck.0.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_ibn_se_and_non_local_keys_sit_where_fast_reid_puts_them(sources, name):
    keys = sources(name)[0]
    blocks = [f"layer{stage}.{j}" for stage, count in enumerate((3, 4, 6, 3), start=1) for j in range(count)]
    ibn = {b for b in blocks if f"backbone.{b}.bn1.IN.weight" in keys and f"backbone.{b}.bn1.BN.running_var" in keys}
    plain_bn1 = {b for b in blocks if f"backbone.{b}.bn1.weight" in keys}
    se = {b for b in blocks if {f"backbone.{b}.se.fc.0.weight", f"backbone.{b}.se.fc.2.weight"} <= set(keys)}
    non_local = {k.rsplit(".", 2)[0] for k in keys if k.startswith("backbone.NL_") and k.endswith(".g.weight")}
    assert not any(k.endswith("bn1.IN.running_mean") for k in keys)  # affine InstanceNorm, no running stats
    if "_ibn" in name:  # IBN-a in every block of stages 1-3, never in stage 4
        assert ibn == set(blocks[:13]) and plain_bn1 == set(blocks[13:])
    else:
        assert not ibn and plain_bn1 == set(blocks)
    if name.endswith("_se"):  # SE in every block; C -> C/16 -> C
        assert se == set(blocks)
        assert keys["backbone.layer1.0.se.fc.0.weight"].shape == (16, 256)
        assert keys["backbone.layer4.2.se.fc.2.weight"].shape == (2048, 128)
    else:
        assert not se
    if name.endswith("_nl"):  # R50: (0, 2, 3, 0), one inter channel
        assert non_local == {"backbone.NL_2.0", "backbone.NL_2.1", "backbone.NL_3.0", "backbone.NL_3.1",
                             "backbone.NL_3.2"}
        assert keys["backbone.NL_3.2.W.0.weight"].shape == (1024, 1, 1, 1)
    else:
        assert not non_local


def test_stem_maxpool_variants_match_hand_computed_windows():
    grid = torch.arange(16.0).view(1, 1, 4, 4)
    ceil, pad = stem_maxpool("ceil"), stem_maxpool("pad")  # what FastReIDResNet installs
    # ceil_mode, no padding: windows rows/cols {0,1,2} and {2,3}; padding 1: {-1,0,1} and {1,2,3}.
    assert torch.equal(ceil(grid), torch.tensor([[[[10.0, 11.0], [14.0, 15.0]]]]))
    assert torch.equal(pad(grid), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))
    # At a 256x128 input (a 128x64 map after conv1) both give 64x32, with different values.
    stem_map = torch.randn(1, 2, 128, 64, generator=torch.Generator().manual_seed(0))
    assert ceil(stem_map).shape == pad(stem_map).shape == (1, 2, 64, 32)
    assert torch.equal(ceil(stem_map), F.max_pool2d(stem_map, 3, 2, 0, ceil_mode=True))
    assert torch.equal(pad(stem_map), F.max_pool2d(stem_map, 3, 2, 1))
    assert not torch.equal(ceil(stem_map), pad(stem_map))


def test_maxpool_option_changes_features_of_the_same_weights(tmp_path, sources, inputs):
    state, source_features = sources("resnet50")
    ceil_model, _ = load_file(tmp_path, current_file(state), "resnet50", "ceil")
    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    pad_model, _ = load_file(tmp_path, current_file(no_counters), "resnet50", "pad")
    ceil_features, pad_features = features(ceil_model, inputs), features(pad_model, inputs)
    assert torch.equal(ceil_features, source_features)  # the sources use the default, ceil
    assert (ceil_features - pad_features).abs().max() > 1e-3
    expected = reference_features(state, inputs, "pad", "avg")
    assert (pad_features - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_head_pooling_follows_the_p_key(tmp_path, sources, inputs):
    state, learned = sources("resnet50_ibn_nl")  # saved with heads.pool_layer.p = 2.5
    model, report = load_file(tmp_path, zoo_file(state), "resnet50_ibn_nl")
    assert model.pooling == "gem_p" and "heads.pool_layer.p" in report.loaded
    assert model.heads.pool_layer.p.item() == LEARNED_P
    without_p = {k: v for k, v in state.items() if k != "heads.pool_layer.p"}
    fixed_model, _ = load_file(tmp_path, zoo_file(without_p), "resnet50_ibn_nl")
    assert fixed_model.pooling == "gem" and not any("pool_layer" in k for k in fixed_model.state_dict())
    fixed = features(fixed_model, inputs)
    expected = reference_features(without_p, inputs, "ceil", "gem", p=3.0)
    assert (fixed - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert (fixed - learned).abs().max() > 1e-3


def test_pooling_option_must_agree_with_the_file(tmp_path, sources):
    state, _ = sources("resnet50_ibn_nl")
    cfg = fastreid_cfg("resnet50_ibn_nl")
    cfg.MODEL.FASTREID_POOL = "gem"  # yacs accepts new keys on an unfrozen tree
    model = FMT.build(cfg)
    with pytest.raises(CheckpointError, match="has heads.pool_layer.p but MODEL.FASTREID_POOL is gem"):
        FMT.load(model, current_file(state), "agw.pth")


@pytest.mark.parametrize("file_name, model_name, words", [
    ("resnet50_ibn", "resnet50", "the file has IBN-a"),
    ("resnet50_nl", "resnet50", "the file has non-local"),
    ("resnet50", "resnet50_ibn_nl", "MODEL.NAME resnet50_ibn_nl has IBN-a (bn1.IN/bn1.BN keys) and non-local"),
    ("resnet50_se", "resnet50_ibn", "the file has SE"),
])
def test_wrong_architecture_is_a_one_line_error_naming_both(tmp_path, sources, file_name, model_name, words):
    state, _ = sources(file_name)
    path = tmp_path / "market_agw_R50-ibn.pth"
    model = built(model_name)
    with pytest.raises(CheckpointError) as caught:
        FMT.load(model, zoo_file(state), str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and f"MODEL.NAME {model_name}" in message and words in message
    assert f"MODEL.NAME {file_name} fits its keys" in message
    assert "unexpected" in message or "missing" in message


def test_missing_and_wrong_shape_keys_are_one_line_errors(sources):
    state, _ = sources("resnet50")
    broken = dict(state)
    del broken["backbone.layer2.1.conv2.weight"]
    broken["heads.bottleneck.0.weight"] = torch.ones(512)
    broken["heads.extra.weight"] = torch.ones(1)
    model = built("resnet50")
    with pytest.raises(CheckpointError) as caught:
        FMT.load(model, {"model": broken}, "bot.pth")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("bot.pth: ") and "MODEL.NAME resnet50" in message
    assert "backbone.layer2: 1 missing" in message
    assert "heads.bottleneck.0.weight: checkpoint (512,) vs model (2048,)" in message
    assert "heads: 1 unexpected" in message


def test_batch_counters_of_absent_modules_are_ignored_not_unexpected(tmp_path, sources, inputs):
    state, source_features = sources("resnet50")
    content = current_file(state)
    content["model"]["backbone.layer1.0.extra_bn.num_batches_tracked"] = torch.tensor(7)
    content["model"]["heads.extra.weight"] = torch.ones(1)
    with pytest.raises(CheckpointError, match="heads: 1 unexpected") as caught:
        load_file(tmp_path, content, "resnet50")
    assert "backbone" not in str(caught.value)
    del content["model"]["heads.extra.weight"]
    model, report = load_file(tmp_path, content, "resnet50")
    assert "backbone.layer1.0.extra_bn.num_batches_tracked" in report.ignored
    assert torch.equal(features(model, inputs), source_features)


def test_other_pixel_statistics_are_refused(sources):
    state, _ = sources("resnet50")
    content = zoo_file(state)
    content["model"]["pixel_mean"] = torch.full((1, 3, 1, 1), 127.5)
    model = built("resnet50")
    with pytest.raises(CheckpointError) as caught:
        FMT.load(model, content, "bot.pth")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("bot.pth: pixel_mean is [127.5, 127.5, 127.5]")
    assert "input contract differs" in message


def test_auto_format_detects_and_loads_a_fastreid_file(tmp_path, sources, inputs):
    from modeling.authorization import build_authorization_model

    state, source_features = sources("resnet50_nl")
    path = tmp_path / "market_agw_R50.pth"
    torch.save(zoo_file(state), path)
    cfg = fastreid_cfg("resnet50_nl")
    cfg.MODEL.FORMAT = "auto"
    model = build_authorization_model(cfg, str(path), "cpu")
    assert torch.equal(features(model, inputs), source_features)


def test_detect():
    tensor = torch.zeros(1)
    assert FMT.detect({"backbone.conv1.weight": tensor, "heads.bottleneck.0.weight": tensor})
    assert FMT.detect({"pixel_mean": tensor, "backbone.conv1.weight": tensor, "heads.bnneck.weight": tensor})
    assert FMT.detect({"model": {"backbone.conv1.weight": tensor, "heads.weight": tensor}})
    assert not FMT.detect({"backbone.conv1.weight": tensor})  # a bare backbone
    assert not FMT.detect({"base.conv1.weight": tensor, "bottleneck.weight": tensor,
                           "classifier.weight": tensor})  # AGW
    assert not FMT.detect({"conv1.weight": tensor, "layer1.0.conv1.weight": tensor,
                           "classifier.weight": tensor, "fc.0.weight": tensor})  # torchreid
    assert not FMT.detect({"global_pool.p": tensor, "base.layer1.0.bn1.IN.weight": tensor})


def test_registration_and_config_errors():
    assert FMT is FASTREID_FORMAT and set(FMT.architectures) == set(ARCHITECTURES)
    assert FMT.feature_doc
    with pytest.raises(ConfigError, match="known: resnet50, resnet50_ibn, resnet50_ibn_nl, resnet50_nl, resnet50_se"):
        FMT.build(fastreid_cfg("osnet_x1_0"))
    with pytest.raises(ConfigError, match="MODEL.FASTREID_MAXPOOL"):
        FMT.build(fastreid_cfg("resnet50", "floor"))
