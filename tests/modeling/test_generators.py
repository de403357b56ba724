import math

import pytest
import torch
from torch import nn

from modeling.generators import GENERATORS, ResnetGenerator, UnetGenerator, build_generator
from modeling.generators.padding import crop_padding, pad_to_multiple, padding_for
from utils.errors import ConfigError
from utils.registry import Registry


@pytest.mark.parametrize("name, network, levels", [
    ("unet_128", UnetGenerator, 128), ("unet_256", UnetGenerator, 256),
    ("resnet_6blocks", ResnetGenerator, 4), ("resnet_9blocks", ResnetGenerator, 4)])
def test_generators_are_registered_by_name(name, network, levels):
    assert isinstance(GENERATORS, Registry) and GENERATORS.config_key == "ATTACK.GENERATOR"
    assert GENERATORS.names() == ("resnet_6blocks", "resnet_9blocks", "unet_128", "unet_256")
    factory = GENERATORS.get(name)
    generator = factory(ngf=4)
    assert type(generator) is network and generator.size_factor == levels


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_output_has_input_shape(name):
    torch.manual_seed(0)
    generator = build_generator(name, ngf=4)
    images = torch.randn(2, 3, 64, 32)
    assert generator(images).shape == images.shape


def test_unet_128_pads_128x64_and_crops_back():
    generator = build_generator("unet_128", ngf=4).eval()
    images = torch.randn(2, 3, 128, 64)
    assert generator.size_factor == 128
    out = generator(images)
    assert out.shape == (2, 3, 128, 64)
    padded, padding = pad_to_multiple(images, 128)
    assert padded.shape == (2, 3, 128, 128) and padding == (0, 0, 32, 32)
    # The centred replicate padding repeats the border columns.
    assert torch.equal(padded[..., :32], images[..., :1].expand(-1, -1, -1, 32))
    assert torch.equal(crop_padding(generator.model(padded), padding), out)


def test_resnet_generator_pads_to_multiple_of_4():
    generator = build_generator("resnet_6blocks", ngf=4)
    assert generator.size_factor == 4
    assert generator(torch.randn(2, 3, 62, 30)).shape == (2, 3, 62, 30)


def test_sizes_already_divisible_are_not_padded():
    images = torch.randn(1, 3, 256, 128)
    padded, padding = pad_to_multiple(images, 128)
    assert padded is images and padding == (0, 0, 0, 0)
    assert padding_for(100, 8) == (2, 2) and padding_for(101, 8) == (1, 2)


def test_output_activation():
    tanh_generator = build_generator("resnet_6blocks", ngf=4)
    free_generator = build_generator("resnet_6blocks", ngf=4, output_activation="none")
    assert isinstance(tanh_generator.model[-1], nn.Tanh)
    assert not any(isinstance(layer, nn.Tanh) for layer in free_generator.modules())
    images = torch.randn(2, 3, 32, 16)
    # A last conv that outputs its bias (5) everywhere: tanh(5) with Tanh, 5 itself without.
    for generator in (tanh_generator, free_generator):
        last_conv = [m for m in generator.modules() if isinstance(m, nn.Conv2d)][-1]
        with torch.no_grad():
            last_conv.weight.zero_()
            last_conv.bias.fill_(5.0)
    assert torch.equal(free_generator(images), torch.full((2, 3, 32, 16), 5.0))
    assert torch.allclose(tanh_generator(images), torch.full((2, 3, 32, 16), math.tanh(5.0)))


def test_unet_levels_and_channels():
    unet_128 = build_generator("unet_128", ngf=4)
    unet_256 = build_generator("unet_256", ngf=4)
    downconvs_128 = [m for m in unet_128.modules() if isinstance(m, nn.Conv2d)]
    downconvs_256 = [m for m in unet_256.modules() if isinstance(m, nn.Conv2d)]
    assert len(downconvs_128) == 7 and len(downconvs_256) == 8
    assert all(conv.stride == (2, 2) for conv in downconvs_128)
    assert [conv.out_channels for conv in downconvs_128] == [4, 8, 16, 32, 32, 32, 32]
    assert not any(isinstance(m, nn.Dropout) for m in unet_256.modules())


def test_state_dict_layout_matches_pix2pix():
    unet_keys = set(build_generator("unet_128", ngf=4).state_dict())
    assert {"model.model.0.weight", "model.model.3.weight", "model.model.3.bias",
            "model.model.1.model.1.weight", "model.model.1.model.2.running_mean",
            "model.model.1.model.3.model.3.model.3.model.3.model.3.model.1.weight"} <= unet_keys
    resnet = build_generator("resnet_9blocks", ngf=4)
    resnet_keys = set(resnet.state_dict())
    assert {"model.1.weight", "model.2.running_var", "model.10.conv_block.1.weight",
            "model.18.conv_block.6.bias", "model.19.weight", "model.26.weight",
            "model.26.bias"} <= resnet_keys
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in resnet.modules()) == 2 + 9 * 2


def test_pix2pix_normal_init_statistics():
    torch.manual_seed(0)
    generator = build_generator("unet_256", ngf=8)
    conv_weights = torch.cat([m.weight.flatten() for m in generator.modules()
                              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    conv_biases = [m.bias for m in generator.modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None]
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    norm_weights = torch.cat([m.weight.flatten() for m in norms])
    assert conv_weights.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert norm_weights.mean().item() == pytest.approx(1.0, abs=0.005)
    assert norm_weights.std().item() == pytest.approx(0.02, rel=0.15)
    assert len(conv_biases) == 1 and torch.equal(conv_biases[0], torch.zeros(3))
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"^unknown generator 'unet_64' \(ATTACK.GENERATOR\); "
                                          r"known: resnet_6blocks, resnet_9blocks, unet_128, "
                                          r"unet_256$"):
        build_generator("unet_64")
    with pytest.raises(ConfigError, match=r"unknown output_activation 'sigmoid'; expected one of "
                                          r"\['none', 'tanh'\]"):
        build_generator("unet_128", output_activation="sigmoid")
    with pytest.raises(ConfigError, match="generator option ATTACK.NGF must be a positive "
                                          "integer, got 0"):
        build_generator("unet_128", ngf=0)
    with pytest.raises(ConfigError, match="generator option input_nc must be a positive integer, "
                                          "got True"):
        build_generator("unet_128", input_nc=True)
