"""The white-box inversion's learning-rate schedule and the gradient of its total-variation term."""
import pytest
import torch

from engine.attack import inversion
from engine.attack.inversion import invert_features, lr_multiplier

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("steps", [8, 200])
def test_lr_is_x1_then_x01_from_a_quarter_then_x001_from_three_quarters(steps):
    quarter, three_quarters = steps // 4, 3 * steps // 4
    expected = [1.0] * quarter + [0.1] * (three_quarters - quarter) + [0.01] * (steps - three_quarters)
    assert [lr_multiplier(step, steps) for step in range(steps)] == expected


class RecordingAdam(torch.optim.Adam):
    """Adam that keeps the learning rate and a copy of the gradient of every step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen = []

    def step(self, closure=None):
        group = self.param_groups[0]
        self.seen.append((group["lr"], group["params"][0].grad.clone()))
        return super().step(closure)


def blind(images):
    """Features that ignore the image."""
    return torch.ones(images.shape[0], 4)


def test_each_step_uses_the_scheduled_lr_and_the_tv_gradient_of_0_1_pixels(monkeypatch):
    optimizers = []

    def recording(params, lr):
        optimizers.append(RecordingAdam(params, lr))
        return optimizers[-1]

    monkeypatch.setattr(inversion.torch.optim, "Adam", recording)
    start = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    # Features that ignore the image: the feature term is 0 with no gradient, only TV moves the pixels.
    invert_features(blind, torch.ones(2, 4), start, MEAN, STD, steps=8, lr=0.2, tv_weight=0.5)
    seen = optimizers[0].seen
    assert [lr for lr, _ in seen] == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.02, 0.02, 0.002, 0.002])
    # TV by hand on [0, 1] pixels: mean over the (H-1) x (W-1) pixels with a right and a down neighbour.
    pixels = start.clone().requires_grad_(True)
    right = torch.diff(pixels, dim=3)[:, :, :-1, :]
    down = torch.diff(pixels, dim=2)[:, :, :, :-1]
    tv = (right.pow(2) + down.pow(2)).sum(dim=(1, 2, 3)) / (3 * 5 * 4)
    (expected,) = torch.autograd.grad(0.5 * tv.sum(), pixels)
    assert torch.allclose(seen[0][1], expected, rtol=1e-5, atol=1e-7)
