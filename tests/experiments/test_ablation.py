"""Ablation switches of the paper's two operations: replacement schedule, momentum, constraint granularity."""

import pytest
import torch
from torch import nn

from configs import load_config
from engine.methods import build_method
from engine.methods.pixelfade import (
    PixelFadeParams,
    build_fade_masks,
    constraint_update,
    input_gradient,
    one_shot_masks,
    protect_batch,
    replacement_mask,
)
from engine.protect.settings import validate_protect_config
from utils.errors import ConfigError

SHAPE = (2, 3, 16, 8)
STAGES = 5


class FeatureFree(nn.Module):
    """Constant features (weight times zero): the gradient is zero, so only replacement moves pixels."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, images):
        return (images.flatten(1)[:, :4] * 0.0) * self.weight


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def batch_and_noise():
    generator = torch.Generator().manual_seed(2)
    original = torch.randn(SHAPE, generator=generator)
    low, high = float(original.min()), float(original.max())
    noise = low + (high - low) * torch.rand(SHAPE, generator=generator)  # inside the clamp range
    masks = build_fade_masks(original.numel(), STAGES, generator=generator)
    return original, noise, masks


def replaced_where(original, noise, masks, stages):
    """``noise`` wherever one of the given stage masks is set, else ``original``."""
    chosen = masks[list(stages)].any(dim=0).view(SHAPE)
    return torch.where(chosen, noise, original)


def test_replacement_mask_schedules():
    stages = [torch.full((2,), float(i)) for i in range(STAGES)]
    assert [int(replacement_mask(stages, step, "progressive")[0]) for step in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    union = one_shot_masks([torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])])
    assert len(union) == 1 and torch.equal(union[0], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(replacement_mask(union, 0, "one_shot"), union[0])
    assert all(replacement_mask(union, step, "one_shot") is None for step in range(1, 5))
    assert all(replacement_mask(stages, step, "none") is None for step in range(5))


@pytest.mark.parametrize(
    "replacement, steps, stages_expected",
    [("progressive", 3, (0, 1, 2)), ("one_shot", 3, range(STAGES)), ("one_shot", 1, range(STAGES)), ("none", 3, ())],
)
def test_each_schedule_copies_exactly_its_stages(replacement, steps, stages_expected):
    original, noise, masks = batch_and_noise()
    params = PixelFadeParams(max_iter=steps, tail_iters=0, replacement=replacement)
    out = protect_batch(FeatureFree().eval(), original, masks, noise, params)
    assert torch.equal(out.protected, replaced_where(original, noise, masks, stages_expected))


def test_one_shot_replaces_everything_at_step_0_then_only_follows_the_constraint():
    model = tiny_model()
    original, noise, masks = batch_and_noise()
    params = PixelFadeParams(max_iter=4, tail_iters=1, replacement="one_shot")
    out = protect_batch(model, original, masks, noise, params)
    protected, momentum_buf = replaced_where(original, noise, masks, range(STAGES)), torch.zeros(SHAPE)
    target = model(original).detach()
    for step in range(params.max_iter):
        loss, grad = input_gradient(model, protected, target, per_sample=False)
        protected, momentum_buf, _ = constraint_update(
            protected, momentum_buf, grad, loss, step, params, original.min(), original.max()
        )
    torch.testing.assert_close(out.protected, protected, rtol=0, atol=1e-6)


def test_constraint_only_never_replaces_and_keeps_the_original():
    model = tiny_model()
    original, _, masks = batch_and_noise()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    paper = protect_batch(model, original, masks, noise, PixelFadeParams(max_iter=12))
    alone = protect_batch(model, original, masks, noise, PixelFadeParams(max_iter=12, replacement="none"))
    assert float((alone.protected - original).abs().max()) < 1e-6
    assert int((alone.protected == noise).sum()) == 0
    assert float((paper.protected - original).abs().mean()) > 0.3  # the paper's loop moves far from it


def test_momentum_zero_is_plain_normalised_gradient_descent():
    params = PixelFadeParams(momentum=0.0, epsilon=1.0)
    protected = torch.zeros(1, 1, 2, 2)
    grad = torch.tensor([[[[1.0, -2.0], [3.0, -2.0]]]])  # mean |g| = 2
    stale = torch.full_like(protected, 100.0)
    updated, buffer, held = constraint_update(
        protected, stale, grad, torch.tensor(0.5), 0, params, torch.tensor(-9.0), torch.tensor(9.0)
    )
    assert bool(held) and torch.equal(buffer, grad / 2)
    assert torch.equal(updated, -params.beta * grad / 2)


def config(*opts):
    return load_config("", ["INPUT.IMG_SIZE", "[16, 8]", "PIXELFADE.BATCH_SIZE", "2", "OUTPUT_DIR", "x", *opts])


def test_switches_are_config_keys_with_validation():
    for replacement in ("progressive", "one_shot", "none"):
        cfg = config("PIXELFADE.REPLACEMENT", repr(replacement))
        validate_protect_config(cfg)
        assert build_method(cfg, tiny_model(), "cpu").params.replacement == replacement
    assert config().PIXELFADE.REPLACEMENT == "progressive"
    per_image = build_method(config("PIXELFADE.MODE", "'per_image'", "PIXELFADE.MOMENTUM", "0.0"), tiny_model(), "cpu")
    assert per_image.per_image and per_image.params.momentum == 0.0
    assert per_image.passes_per_image() == {"forward": 102, "backward": 100}
    with pytest.raises(ConfigError, match=r"PIXELFADE.REPLACEMENT must be one of progressive, one_shot, none, got 'half'"):
        validate_protect_config(config("PIXELFADE.REPLACEMENT", "'half'"))
    with pytest.raises(ConfigError, match=r"replacement \(PIXELFADE.REPLACEMENT\) must be one of"):
        PixelFadeParams(replacement="twice")
