"""Baseline protections: blur, mosaic and additive noise, and their registry."""
import pytest
import torch

from configs import get_default_config
from engine.baselines import BASELINES, additive_noise, build_baseline, gaussian_blur, mosaic


def batch(seed=0, shape=(2, 3, 16, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_blur_of_a_constant_image_is_constant():
    constant = torch.full((2, 3, 16, 8), -0.7)
    for sigma in (0.5, 2.0, 8.0):
        assert torch.allclose(gaussian_blur(constant, sigma), constant, atol=1e-6)


def test_blur_smooths_and_keeps_the_mean():
    images = batch(1)
    blurred = gaussian_blur(images, 1.5)
    assert blurred.shape == images.shape
    assert float(blurred.std()) < 0.5 * float(images.std())
    assert torch.allclose(blurred.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.15)


def test_blur_kernel_follows_sigma_until_the_image_limits_it():
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    response = gaussian_blur(impulse, 1.0)[0, 0]
    # kernel 2*ceil(3)+1 = 7: support reaches 3 pixels from the centre, not 4
    assert float(response[15, 12]) > 0 and float(response[15, 11]) == 0.0
    assert torch.allclose(response.sum(), torch.tensor(1.0), atol=1e-5)


def test_mosaic_makes_block_constant_cells_of_the_cell_mean():
    images = batch(2, shape=(2, 3, 16, 10))
    out = mosaic(images, 4)
    assert out.shape == images.shape
    for top in range(0, 16, 4):
        for left in range(0, 10, 4):
            cell = out[:, :, top : top + 4, left : left + 4]
            mean = images[:, :, top : top + 4, left : left + 4].mean(dim=(2, 3), keepdim=True)
            assert torch.allclose(cell, mean.expand_as(cell), atol=1e-6)
    assert torch.equal(mosaic(images, 1), images)


def test_additive_noise_std_and_reproducible_generator():
    images = torch.zeros(4, 3, 32, 32)
    noisy = additive_noise(images, 0.5, generator=torch.Generator().manual_seed(3))
    assert abs(float(noisy.std()) - 0.5) < 0.02
    again = additive_noise(images, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    assert torch.equal(additive_noise(images, 0.0), images)


def test_registry_builds_from_config():
    cfg = get_default_config()
    assert set(BASELINES) == {"blur", "mosaic", "noise"}
    images = batch(4, shape=(2, 3, 32, 16))
    assert torch.allclose(build_baseline("mosaic", cfg)(images), mosaic(images, cfg.PIXELFADE.MOSAIC_BLOCK))
    assert torch.allclose(build_baseline("blur", cfg)(images), gaussian_blur(images, cfg.PIXELFADE.BLUR_SIGMA))
    cfg.PIXELFADE.NOISE_STD = 0.25
    noisy = build_baseline("noise", cfg)(images, generator=torch.Generator().manual_seed(5))
    assert torch.equal(noisy, additive_noise(images, 0.25, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(build_baseline("blur", cfg)(images, generator=torch.Generator()), build_baseline("blur", cfg)(images))


def test_errors_name_the_option():
    cfg = get_default_config()
    with pytest.raises(ValueError, match="unknown baseline 'pixelate'.*blur, mosaic, noise"):
        build_baseline("pixelate", cfg)
    cfg.PIXELFADE.MOSAIC_BLOCK = 0
    with pytest.raises(ValueError, match=r"PIXELFADE.MOSAIC_BLOCK\) must be a positive integer"):
        build_baseline("mosaic", cfg)
    with pytest.raises(ValueError, match=r"PIXELFADE.BLUR_SIGMA\) must be a positive number"):
        gaussian_blur(batch(), -1.0)
    with pytest.raises(ValueError, match=r"PIXELFADE.NOISE_STD\) must be a non-negative number"):
        additive_noise(batch(), float("nan"))
    with pytest.raises(ValueError, match=r"mosaic expects a float tensor \[B, C, H, W\]"):
        mosaic(torch.zeros(3, 16, 8), 4)
