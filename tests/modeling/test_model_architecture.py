"""Architecture of the AGW authorization model: keys, shapes, stem, non-local placement, heads."""
import pytest
import torch
import torchvision
from helpers import model_cfg
from torch import nn

from configs import ConfigError
from modeling import Baseline, build_model
from modeling.backbones import BACKBONES, build_backbone
from modeling.layers import GeneralizedMeanPooling, Non_local

INPUT = (2, 3, 64, 32)
NL_PER_BLOCK = ["g.weight", "g.bias", "theta.weight", "theta.bias", "phi.weight", "phi.bias",
                "W.0.weight", "W.0.bias", "W.1.weight", "W.1.bias", "W.1.running_mean",
                "W.1.running_var", "W.1.num_batches_tracked"]


@pytest.fixture(scope="module")
def agw():
    return build_model(model_cfg(), num_classes=7)


def test_registry_lists_backbones():
    assert {"resnet50", "resnet101", "resnet152", "resnet50_nl", "resnet50_ibn_a"} <= set(BACKBONES)
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*resnet50_nl"):
        build_backbone("vgg", 1)


def test_state_dict_keys_match_released_layout(agw):
    keys = agw.state_dict().keys()
    torchvision_keys = set(torchvision.models.resnet50().state_dict()) - {"fc.weight", "fc.bias"}
    nl_keys = {f"NL_2.{i}.{k}" for i in range(2) for k in NL_PER_BLOCK}
    nl_keys |= {f"NL_3.{i}.{k}" for i in range(3) for k in NL_PER_BLOCK}
    head = {"global_pool.p", "bottleneck.weight", "bottleneck.bias", "bottleneck.running_mean",
            "bottleneck.running_var", "bottleneck.num_batches_tracked", "classifier.weight"}
    expected = {f"base.{k}" for k in torchvision_keys | nl_keys} | head
    assert set(keys) == expected
    assert len(keys) == 318 + 65 + 7 == 390


def test_state_dict_shapes(agw):
    shapes = {k: tuple(v.shape) for k, v in agw.state_dict().items()}
    assert shapes["base.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["base.NL_2.1.g.weight"] == (1, 512, 1, 1)
    assert shapes["base.NL_2.0.W.0.weight"] == (512, 1, 1, 1)
    assert shapes["base.NL_3.2.theta.weight"] == (1, 1024, 1, 1)
    assert shapes["base.NL_3.0.W.1.weight"] == (1024,)
    assert shapes["base.layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["global_pool.p"] == (1,)
    assert shapes["bottleneck.weight"] == (2048,)
    assert shapes["classifier.weight"] == (7, 2048)
    assert agw.global_pool.p.item() == 3.0
    assert not agw.bottleneck.bias.requires_grad
    assert agw.classifier.bias is None


def _call_order(model, x, names):
    order, handles = [], []
    modules = dict(model.named_modules())
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda m, i, o, name=name: order.append(name)))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return order


def test_non_local_blocks_follow_last_blocks_of_layer2_and_layer3(agw):
    agw.eval()
    names = [f"base.layer2.{i}" for i in range(4)] + [f"base.layer3.{i}" for i in range(6)]
    names += [f"base.NL_2.{i}" for i in range(2)] + [f"base.NL_3.{i}" for i in range(3)]
    order = _call_order(agw, torch.randn(INPUT), names)
    assert order == [
        "base.layer2.0", "base.layer2.1", "base.layer2.2", "base.NL_2.0", "base.layer2.3", "base.NL_2.1",
        "base.layer3.0", "base.layer3.1", "base.layer3.2", "base.layer3.3", "base.NL_3.0",
        "base.layer3.4", "base.NL_3.1", "base.layer3.5", "base.NL_3.2",
    ]


def _maxpool_input(model, x):
    seen = []
    handle = model.base.maxpool.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_stem_has_no_relu(agw):
    agw.eval()
    x = torch.randn(INPUT)
    stem = ["base.conv1", "base.bn1", "base.maxpool"]
    assert _call_order(agw, x, stem) == stem
    with torch.no_grad():
        bn_out = agw.base.bn1(agw.base.conv1(x))
    pooled_input = _maxpool_input(agw, x)
    assert pooled_input.min() < 0
    assert torch.equal(pooled_input, bn_out)


def test_eval_returns_bnneck_feature_and_train_returns_logits(agw):
    x = torch.randn(INPUT)
    agw.eval()
    with torch.no_grad():
        feature = agw(x)
        pooled = agw.global_pool(agw.base(x)).flatten(1)
    assert feature.shape == (2, 2048)
    torch.testing.assert_close(feature, agw.bottleneck(pooled))
    agw.train()
    logits, train_pooled = agw(x)
    agw.eval()
    assert logits.shape == (2, 7) and train_pooled.shape == (2, 2048)


def test_feature_map_keeps_last_stride_one(agw):
    with torch.no_grad():
        assert agw.eval().base(torch.randn(INPUT)).shape == (2, 2048, 4, 2)
    stride2 = build_backbone("resnet50", 2).eval()
    with torch.no_grad():
        assert stride2(torch.randn(INPUT)).shape == (2, 2048, 2, 1)


def test_channels_last_gives_the_same_feature(agw):
    x = torch.randn(INPUT)
    agw.eval()
    with torch.no_grad():
        plain = agw(x)
        channels_last = agw.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    agw.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(channels_last, plain, rtol=1e-4, atol=1e-4)


def test_training_without_classifier_is_a_clear_error():
    model = Baseline(build_backbone("resnet50", 1), num_classes=0)
    assert "classifier.weight" not in model.state_dict()
    with pytest.raises(RuntimeError, match="num_classes=0 has no classifier"):
        model.train()(torch.randn(INPUT))


def test_gem_equals_its_formula():
    pool = GeneralizedMeanPooling()
    with torch.no_grad():
        pool.p.fill_(2.5)
    x = torch.randn(3, 4, 5, 6)
    expected = x.clamp(min=1e-6).pow(2.5).mean(dim=(2, 3)).pow(1 / 2.5)
    torch.testing.assert_close(pool(x).flatten(1), expected)
    with torch.no_grad():
        pool.p.fill_(1.0)
    torch.testing.assert_close(pool(x).flatten(1), x.clamp(min=1e-6).mean(dim=(2, 3)))


def test_non_local_is_identity_at_init_and_follows_its_formula():
    torch.manual_seed(0)
    block = Non_local(8).eval()
    x = torch.randn(2, 8, 3, 2)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.W[1].weight.normal_()
        block.W[1].bias.normal_()
    theta, phi, g = (conv(x).flatten(1) for conv in (block.theta, block.phi, block.g))  # (B, N)
    positions = theta.shape[1]
    y = theta * (phi * g).sum(dim=1, keepdim=True) / positions  # sum_j theta_i phi_j g_j / N
    expected = block.W(y.reshape(2, 1, 3, 2)) + x
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    first = build_model(model_cfg(NAME="resnet50", INIT_SEED=3)).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    second = build_model(model_cfg(NAME="resnet50", INIT_SEED=3)).state_dict()
    other = build_model(model_cfg(NAME="resnet50", INIT_SEED=4)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["base.conv1.weight"], other["base.conv1.weight"])


def test_average_pooling_when_gem_is_off():
    model = build_model(model_cfg(NAME="resnet50", GENERALIZED_MEAN_POOL="off"))
    assert isinstance(model.global_pool, nn.AdaptiveAvgPool2d)
    assert "global_pool.p" not in model.state_dict()


@pytest.mark.parametrize("option, value, message", [
    ("NAME", "vgg16", "MODEL.NAME: unknown backbone 'vgg16'"),
    ("LAST_STRIDE", 3, "MODEL.LAST_STRIDE must be 1 or 2"),
    ("GENERALIZED_MEAN_POOL", "maybe", "MODEL.GENERALIZED_MEAN_POOL must be 'on' or 'off'"),
    ("PRETRAIN_CHOICE", "web", "MODEL.PRETRAIN_CHOICE must be one of"),
    ("PRETRAIN_PATH", "/nonexistent/resnet50.pth", "MODEL.PRETRAIN_PATH: ImageNet weights file not found"),
])
def test_bad_model_options_name_the_option(option, value, message):
    with pytest.raises(ConfigError, match=message):
        build_model(model_cfg(**{option: value}))


def test_resnet101_keys_match_torchvision():
    ours = set(build_backbone("resnet101", 1).state_dict())
    assert ours == set(torchvision.models.resnet101().state_dict()) - {"fc.weight", "fc.bias"}


def test_resnet50_ibn_a_layout():
    backbone = build_backbone("resnet50_ibn_a", 1).eval()
    keys = backbone.state_dict()
    assert keys["layer1.0.bn1.IN.weight"].shape == (32,)
    assert keys["layer3.5.bn1.BN.running_mean"].shape == (128,)
    assert "layer4.0.bn1.weight" in keys and "layer4.0.bn1.IN.weight" not in keys
    model = Baseline(backbone).eval()
    x = torch.randn(INPUT)
    with torch.no_grad():
        stem = backbone.bn1(backbone.conv1(x))
    assert torch.equal(_maxpool_input(model, x), torch.relu(stem))  # IBN-a keeps its stem ReLU
    assert (stem < 0).any()  # so the ReLU changed something
    with torch.no_grad():
        assert model(torch.randn(INPUT)).shape == (2, 2048)


def test_imagenet_backbone_from_local_torchvision_file(tmp_path):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(imagenet, path)
    model = build_model(model_cfg(PRETRAIN_PATH=str(path)))
    state = model.state_dict()
    assert torch.equal(state["base.layer3.2.conv2.weight"], imagenet["layer3.2.conv2.weight"])
    assert torch.equal(state["base.bn1.running_var"], imagenet["bn1.running_var"])
    assert torch.count_nonzero(state["base.NL_3.1.W.1.weight"]) == 0
    # 'self' never reads the ImageNet file: the model is the seeded random one.
    self_choice = build_model(model_cfg(PRETRAIN_PATH=str(path), PRETRAIN_CHOICE="self")).state_dict()
    random_init = build_model(model_cfg(PRETRAIN_CHOICE="self")).state_dict()
    assert list(self_choice) == list(random_init)
    assert all(torch.equal(self_choice[k], random_init[k]) for k in random_init)
