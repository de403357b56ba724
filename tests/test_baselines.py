"""Baseline protections: blur, mosaic and additive noise, and their registry."""
import pytest
import torch

from configs import ConfigError
from engine.baselines import additive_noise, gaussian_blur, mosaic


def batch(seed=0, shape=(2, 3, 16, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_blur_of_a_constant_image_is_constant():
    constant = torch.full((2, 3, 16, 8), -0.7)
    for sigma in (0.5, 2.0, 8.0):
        assert torch.allclose(gaussian_blur(constant, sigma), constant, atol=1e-6)


def gaussian_kernel(sigma, radius):
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def reference_blur(images, sigma, radius_y, radius_x):
    """Separable Gaussian blur with reflect padding, written out: rows then columns."""
    flat = images.double().reshape(-1, 1, *images.shape[-2:])
    padded = torch.nn.functional.pad(flat, (radius_x, radius_x, radius_y, radius_y), mode="reflect")
    rows = torch.nn.functional.conv2d(padded, gaussian_kernel(sigma, radius_x).view(1, 1, 1, -1))
    both = torch.nn.functional.conv2d(rows, gaussian_kernel(sigma, radius_y).view(1, 1, -1, 1))
    return both.reshape(images.shape).float()


def test_blur_equals_the_written_out_gaussian():
    images = batch(1)  # 16 x 8: sigma 1.5 gives a radius of 5 (kernel 11) on both axes
    torch.testing.assert_close(gaussian_blur(images, 1.5), reference_blur(images, 1.5, 5, 5), rtol=0, atol=1e-5)
    # sigma 2 wants radius 6, but reflect padding of an 8-wide image allows 7 at most: not capped
    torch.testing.assert_close(gaussian_blur(images, 2.0), reference_blur(images, 2.0, 6, 6), rtol=0, atol=1e-5)
    # sigma 3 wants radius 9: capped at 7 across the 8-pixel width, kept at 9 along the 16 rows
    torch.testing.assert_close(gaussian_blur(images, 3.0), reference_blur(images, 3.0, 9, 7), rtol=0, atol=1e-5)


def test_blur_kernel_follows_sigma_until_the_image_limits_it():
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    response = gaussian_blur(impulse, 1.0)[0, 0]
    # kernel 2*ceil(3)+1 = 7: support reaches 3 pixels from the centre, not 4
    kernel = gaussian_kernel(1.0, 3)
    expected = torch.zeros(31, 31, dtype=torch.float64)
    expected[12:19, 12:19] = kernel[:, None] * kernel[None, :]
    torch.testing.assert_close(response.double(), expected, rtol=0, atol=1e-7)
    assert float(response[15, 11]) == 0.0
    assert float(response[15, 12]) == pytest.approx(float(kernel[3] * kernel[0]), rel=1e-5)


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


def test_additive_noise_is_std_times_the_generators_normal_draw():
    images = batch(6, shape=(4, 3, 8, 4))
    noisy = additive_noise(images, 0.5, generator=torch.Generator().manual_seed(3))
    draw = torch.randn(4, 3, 8, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, images + 0.5 * draw)
    again = additive_noise(images, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    assert torch.equal(additive_noise(images, 0.0), images)


def test_errors_name_the_option():
    with pytest.raises(ConfigError, match=r"PIXELFADE.MOSAIC_BLOCK\) must be a positive integer, got 0"):
        mosaic(batch(), 0)
    with pytest.raises(ConfigError, match=r"PIXELFADE.BLUR_SIGMA\) must be a positive number, got -1.0"):
        gaussian_blur(batch(), -1.0)
    with pytest.raises(ConfigError, match=r"PIXELFADE.NOISE_STD\) must be a non-negative number, got nan"):
        additive_noise(batch(), float("nan"))
    with pytest.raises(ValueError, match=r"mosaic expects a float tensor \[B, C, H, W\]"):
        mosaic(torch.zeros(3, 16, 8), 4)
