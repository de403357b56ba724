"""Protection methods: the registry, one interface, and each method's output against its function."""

import pytest
import torch
from torch import nn

from configs import load_config
from engine.methods import METHODS, build_method
from engine.methods.baselines import additive_noise, gaussian_blur, mosaic
from engine.methods.pixelfade import PixelFadeParams, make_reference_masks, protect_batch
from utils.errors import ConfigError


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def images(batch=2):
    return torch.randn(batch, 3, 16, 8, generator=torch.Generator().manual_seed(1))


def config(*opts):
    return load_config("", ["INPUT.IMG_SIZE", "[16, 8]", "PIXELFADE.BATCH_SIZE", "2", *opts])


def test_every_method_is_registered_once():
    assert sorted(METHODS.names()) == [
        "avih", "blur", "blur12_pil", "mosaic", "mosaic24_topleft", "noise", "noise0.5_uint8", "pixelfade"
    ]
    with pytest.raises(ConfigError, match="pixelate"):
        build_method(config("PIXELFADE.METHOD", "'pixelate'"), tiny_model(), "cpu")


def test_baseline_methods_equal_their_functions():
    data = images()
    blur = build_method(config("PIXELFADE.METHOD", "'blur'", "PIXELFADE.BLUR_SIGMA", "1.5"), tiny_model(), "cpu")
    assert torch.equal(blur(data, torch.arange(2)).protected, gaussian_blur(data, 1.5))
    block = build_method(config("PIXELFADE.METHOD", "'mosaic'", "PIXELFADE.MOSAIC_BLOCK", "4"), tiny_model(), "cpu")
    assert torch.equal(block(data, torch.arange(2)).protected, mosaic(data, 4))
    noise = build_method(
        config("PIXELFADE.METHOD", "'noise'", "PIXELFADE.NOISE_STD", "0.25", "PIXELFADE.SEED", "5"), tiny_model(), "cpu"
    )
    first = noise(data, torch.arange(2))
    assert torch.equal(first.protected, additive_noise(data, 0.25, generator=torch.Generator().manual_seed(5)))
    assert first.noise is None and first.features is None


def test_pixelfade_method_draws_masks_then_noise_from_the_seeded_stream():
    cfg = config("PIXELFADE.MAX_ITER", "3", "PIXELFADE.SEED", "4")
    model = tiny_model()
    method = build_method(cfg, model, "cpu")
    data = images()
    out = method(data, torch.arange(2))
    masks = make_reference_masks(4, 2, (3, 16, 8), 5)
    noise = torch.randn(data.shape)
    expected = protect_batch(model, data, masks, noise, PixelFadeParams.from_cfg(cfg))
    assert torch.equal(out.noise, noise)
    assert torch.equal(out.protected, expected.protected)
    assert torch.equal(out.features, expected.features)


def test_the_random_stream_restores_exactly():
    method = build_method(config("PIXELFADE.METHOD", "'noise'", "PIXELFADE.NOISE_STD", "1.0"), tiny_model(), "cpu")
    data = images()
    state = method.rng_state()
    first = method(data, torch.arange(2)).protected
    second = method(data, torch.arange(2)).protected
    assert not torch.equal(first, second)
    method.set_rng_state(state)
    assert torch.equal(method(data, torch.arange(2)).protected, first)
    method.set_rng_state(method.initial_state)
    assert torch.equal(method(data, torch.arange(2)).protected, first)


def count_passes(model):
    """Forward and backward calls of ``model``, counted by module hooks."""
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    model.register_full_backward_hook(lambda *_: counts.__setitem__("backward", counts["backward"] + 1))
    return counts


def test_each_method_reports_its_passes_per_image():
    model = tiny_model()
    counts = count_passes(model)
    pixelfade = build_method(config("PIXELFADE.MAX_ITER", "7"), model, "cpu")
    pixelfade(images(), torch.arange(2))
    assert pixelfade.passes_per_image() == counts == {"forward": 9, "backward": 7}
    for name in ("blur", "mosaic", "noise", "mosaic24_topleft", "blur12_pil", "noise0.5_uint8"):
        method = build_method(config("PIXELFADE.METHOD", repr(name)), model, "cpu")
        assert method.passes_per_image() == {"forward": 0, "backward": 0}


@pytest.mark.parametrize("mode", ["reference", "per_image"])
def test_constraint_share_counts_every_step_of_max_iter(mode):
    # A bound no loss reaches: the test passes in every step but the TAIL_ITERS last ones (3 of 8 held -> 3/8).
    cfg = config("PIXELFADE.MAX_ITER", "8", "PIXELFADE.TAIL_ITERS", "5", "PIXELFADE.EPSILON", "1e9",
                 "PIXELFADE.MODE", repr(mode))
    out = build_method(cfg, tiny_model(), "cpu")(images(), torch.arange(2))
    assert out.constraint_held.tolist() == [0.375, 0.375]
