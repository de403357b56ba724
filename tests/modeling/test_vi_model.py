"""The AGW cross-modality model: the reference's state-dict keys, the two stems, an independent forward."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from modeling.agw_vi import EmbedNet, VisibleInfraredAuthorization
from utils.errors import ConfigError

# Keys and shapes of the reference's embed_net(395) state dict (SPEC-3 section 3), a subset.
REFERENCE_KEYS = {
    "visible_module.visible.conv1.weight": (64, 3, 7, 7),
    "visible_module.visible.bn1.running_var": (64,),
    "visible_module.visible.layer4.2.conv3.weight": (2048, 512, 1, 1),  # present though unused
    "thermal_module.thermal.conv1.weight": (64, 3, 7, 7),
    "thermal_module.thermal.bn1.bias": (64,),
    "base_resnet.base.conv1.weight": (64, 3, 7, 7),  # present though unused
    "base_resnet.base.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "base_resnet.base.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "base_resnet.base.layer4.2.bn3.running_mean": (2048,),
    "NL_2.0.g.0.weight": (1, 512, 1, 1),
    "NL_2.0.g.0.bias": (1,),
    "NL_2.1.W.0.weight": (512, 1, 1, 1),
    "NL_2.1.W.1.weight": (512,),
    "NL_2.1.W.1.running_var": (512,),
    "NL_2.1.theta.weight": (1, 512, 1, 1),
    "NL_3.0.phi.weight": (1, 1024, 1, 1),
    "NL_3.2.W.0.weight": (1024, 1, 1, 1),
    "NL_3.2.W.1.bias": (1024,),
    "bottleneck.weight": (2048,),
    "bottleneck.bias": (2048,),
    "bottleneck.running_mean": (2048,),
    "classifier.weight": (395, 2048),
}


def test_reference_state_dict_keys():
    with torch.device("meta"):
        net = EmbedNet(395, "resnet50_nl")
    state = net.state_dict()
    for key, shape in REFERENCE_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"visible_module", "thermal_module", "base_resnet", "NL_2", "NL_3", "bottleneck", "classifier"}
    assert not any(".fc." in key for key in state)
    assert "NL_2.2.g.0.weight" not in state and "NL_3.3.g.0.weight" not in state
    assert net.nl_positions == [[], [2, 3], [3, 4, 5], []]
    assert net.base_resnet.base.layer4[0].conv2.stride == (1, 1)
    assert net.base_resnet.base.layer4[0].downsample[0].stride == (1, 1)
    assert not net.bottleneck.bias.requires_grad and net.classifier.bias is None


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    net = EmbedNet(7, "resnet18_nl")
    with torch.no_grad():  # move every BatchNorm and the NL output BN off their identity start
        for name, module in net.named_modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def reference_non_local(block, x):
    """The reference's Non_local, from the block's weights."""
    batch, _, height, width = x.shape
    g = F.conv2d(x, block.g[0].weight, block.g[0].bias).reshape(batch, 1, -1).transpose(1, 2)
    theta = F.conv2d(x, block.theta.weight, block.theta.bias).reshape(batch, 1, -1).transpose(1, 2)
    phi = F.conv2d(x, block.phi.weight, block.phi.bias).reshape(batch, 1, -1)
    attention = theta @ phi / (height * width)
    y = (attention @ g).transpose(1, 2).reshape(batch, 1, height, width)
    bn = block.W[1]
    w_y = F.batch_norm(F.conv2d(y, block.W[0].weight, block.W[0].bias), bn.running_mean, bn.running_var,
                       bn.weight, bn.bias, False, 0.0, bn.eps)
    return w_y + x


def reference_forward(net, x, stem_net):
    """Eval forward written from SPEC-3: stem, layer1..4 with NL after layer2[1] and layer3[1], GeM, BN, l2norm."""
    bn1 = stem_net.bn1
    x = F.conv2d(x, stem_net.conv1.weight, stride=2, padding=3)
    x = F.batch_norm(x, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, False, 0.0, bn1.eps)
    x = F.max_pool2d(F.relu(x), kernel_size=3, stride=2, padding=1)
    base = net.base_resnet.base
    x = base.layer1(x)
    x = reference_non_local(net.NL_2[0], base.layer2[1](base.layer2[0](x)))
    x = reference_non_local(net.NL_3[0], base.layer3[1](base.layer3[0](x)))
    x = base.layer4(x)
    pool = (x.reshape(x.shape[0], x.shape[1], -1).pow(3).mean(-1) + 1e-12).pow(1 / 3)
    bn = net.bottleneck
    feat = F.batch_norm(pool, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return pool / pool.norm(dim=1, keepdim=True), feat / feat.norm(dim=1, keepdim=True), pool, feat


def test_eval_output_equals_independent_forward(small_net):
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for modal, stem in ((1, small_net.visible_module.visible), (2, small_net.thermal_module.thermal)):
            pool_l2, feat_l2 = small_net(x, x, modal)
            expected = reference_forward(small_net, x, stem)
            torch.testing.assert_close(pool_l2, expected[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(feat_l2, expected[1], rtol=1e-5, atol=1e-6)
            modality = "visible" if modal == 1 else "infrared"
            for feature, index in (("pool_l2", 0), ("bn_l2", 1), ("pool", 2), ("bn", 3)):
                model = VisibleInfraredAuthorization(small_net, modality, feature)
                torch.testing.assert_close(model(x), expected[index], rtol=1e-5, atol=1e-6)
    # last stride 1: layer4 keeps layer3's 4 x 2 grid of a 64 x 32 input.
    assert small_net.base_resnet.base.layer4(torch.zeros(1, 256, 4, 2)).shape == (1, 512, 4, 2)


def test_modalities_use_their_own_stems(small_net):
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    infrared_model = VisibleInfraredAuthorization(small_net, "visible").for_modality("infrared")
    with torch.no_grad():
        visible, infrared = small_net(x, x, 1)[1], small_net(x, x, 2)[1]
        assert (visible - infrared).abs().max() > 1e-3
        both = small_net(x, x, 0)[1]
        torch.testing.assert_close(both, torch.cat((visible, infrared)))
        before = infrared_model(x)
        weight = small_net.thermal_module.thermal.conv1.weight
        saved = weight.clone()
        weight.add_(0.1)
        try:
            torch.testing.assert_close(small_net(x, x, 1)[1], visible)  # visible ignores the thermal stem
            assert (infrared_model(x) - before).abs().max() > 1e-4
        finally:
            weight.copy_(saved)
    with pytest.raises(ValueError, match="modal must be 0"):
        small_net(x, x, 3)


def test_training_output_and_feature_choice(small_net):
    small_net.train()
    try:
        pool, logits = small_net(torch.randn(2, 3, 32, 16), torch.randn(2, 3, 32, 16), 0)
    finally:
        small_net.eval()
    assert pool.shape == (4, 512) and logits.shape == (4, 7)
    assert not np.isclose(float(pool.detach().norm(dim=1)[0]), 1.0)
    with pytest.raises(ConfigError, match="MODEL.VI_FEATURE must be one of bn, bn_l2, pool, pool_l2"):
        VisibleInfraredAuthorization(small_net, "visible", "fc")
