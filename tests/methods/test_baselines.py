"""Baseline protections: blur, mosaic and additive noise, and the literature's 8-bit presets."""
import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD
from PIL import Image, ImageDraw, ImageFilter

from configs import ConfigError, load_config
from data.transforms import EvalTransform
from engine.methods import build_method
from engine.methods.baselines import additive_noise, exact_pixels, gaussian_blur, mosaic, mosaic_topleft, pixel_noise


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


# ------------------------------------------------- the literature's 8-bit variants (SPEC-2 15.1)

LITERATURE_SIZE = (50, 30)  # width, height: partial 24-pixel cells at the right and bottom


def pil_person(seed=0):
    """A random RGB image already at the model's size, so EvalTransform only converts and normalises."""
    array = np.random.default_rng(seed).integers(0, 256, (LITERATURE_SIZE[1], LITERATURE_SIZE[0], 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def normalised(image):
    width, height = image.size
    return EvalTransform((height, width), IMAGENET_MEAN, IMAGENET_STD)(image).unsqueeze(0)


def release_mosaic(frame, neighbor):
    """privacy-reid's do_mosaic: ImageDraw rectangles filled with each cell's top-left pixel."""
    frame = frame.copy()
    fw, fh = frame.size
    draw = ImageDraw.Draw(frame)
    for i in range(0, fh, neighbor):
        for j in range(0, fw, neighbor):
            right_down = (j + min(neighbor, fw - j) - 1, i + min(neighbor, fh - i) - 1)
            draw.rectangle(((j, i), right_down), fill=frame.getpixel((j, i)), outline=None)
    return frame


def literature_config(method, seed=0):
    return load_config("", ["INPUT.IMG_SIZE", f"[{LITERATURE_SIZE[1]}, {LITERATURE_SIZE[0]}]",
                            "PIXELFADE.METHOD", repr(method), "PIXELFADE.SEED", str(seed)])


def test_exact_pixels_recovers_the_8bit_image_and_refuses_other_inputs():
    image = pil_person(1)
    pixels = exact_pixels(normalised(image), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(pixels[0].permute(1, 2, 0), torch.from_numpy(np.array(image)))
    with pytest.raises(ConfigError, match=r"INPUT.PIXEL_MEAN / INPUT.PIXEL_STD: .* do not round-trip"):
        exact_pixels(normalised(image) + 1e-3, IMAGENET_MEAN, IMAGENET_STD)


def test_mosaic24_topleft_equals_privacy_reids_draw_loop():
    image = pil_person(2)
    method = build_method(literature_config("mosaic24_topleft"), None, "cpu")
    protected = method(normalised(image), torch.arange(1)).protected
    assert torch.equal(protected, normalised(release_mosaic(image, 24)))
    assert method.passes_per_image() == {"forward": 0, "backward": 0}


def test_blur12_pil_equals_blurring_the_pil_image_before_normalisation():
    image = pil_person(3)
    protected = build_method(literature_config("blur12_pil"), None, "cpu")(normalised(image), torch.arange(1)).protected
    assert torch.equal(protected, normalised(image.filter(ImageFilter.GaussianBlur(radius=12))))


def test_noise05_uint8_is_privacy_reids_numpy_formula_on_the_runs_stream():
    image = pil_person(4)
    method = build_method(literature_config("noise0.5_uint8", seed=9), None, "cpu")
    protected = method(normalised(image), torch.arange(1)).protected
    draw = torch.randn(1, 3, LITERATURE_SIZE[1], LITERATURE_SIZE[0], generator=torch.Generator().manual_seed(9),
                       dtype=torch.float64)[0].permute(1, 2, 0).numpy()
    expected = np.uint8(np.clip(np.array(image) / 255.0 + 0.5 * draw, 0, 1) * 255)
    assert torch.equal(protected, normalised(Image.fromarray(expected, "RGB")))
    assert not torch.equal(method(normalised(image), torch.arange(1)).protected, protected)
    method.set_rng_state(method.initial_state)
    assert torch.equal(method(normalised(image), torch.arange(1)).protected, protected)


def test_pixel_operations_refuse_float_input():
    with pytest.raises(ValueError, match=r"mosaic_topleft expects a uint8 tensor \[B, 3, H, W\]"):
        mosaic_topleft(torch.zeros(1, 3, 8, 8), 4)
    with pytest.raises(ConfigError, match=r"PIXELFADE.NOISE_STD\) must be a non-negative number"):
        pixel_noise(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), -1.0)
