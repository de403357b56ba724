"""8-bit PNG storage of protected images: what quantisation does and that files round-trip."""
import torch
from helpers import IMAGENET_MEAN as MEAN
from helpers import IMAGENET_STD as STD

from engine.methods.codec import dequantize, quantize_to_uint8
from utils.file_io import read_png, write_png


def _normalized_batch(seed=0):
    pixels = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(seed))
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_quantization_is_rounding_of_the_pixel_value():
    # Channel 0: normalised values whose pixel * 255 are the levels below; channels 1, 2 hold
    # normalised 0, i.e. the mean pixel value.
    mean, std = MEAN[0], STD[0]
    levels = torch.tensor([0.0, 0.4, 0.6, 127.49, 127.51, 254.6, 255.0])
    images = torch.zeros(1, 3, 1, len(levels))
    images[0, 0, 0] = (levels / 255.0 - mean) / std
    pixels = quantize_to_uint8(images, MEAN, STD)
    assert pixels.dtype == torch.uint8
    assert pixels[0, 0, 0].tolist() == [0, 0, 1, 127, 128, 255, 255]
    assert pixels[0, 1, 0].tolist() == [116] * len(levels)  # 0.456 * 255 = 116.28
    assert pixels[0, 2, 0].tolist() == [104] * len(levels)  # 0.406 * 255 = 103.53


def test_quantization_error_is_at_most_half_a_gray_level():
    images = _normalized_batch()
    restored = dequantize(quantize_to_uint8(images, MEAN, STD), MEAN, STD)
    pixel_values = images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    expected = torch.round(pixel_values * 255) / 255
    restored_pixels = restored * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(restored_pixels, expected, rtol=0, atol=1e-6)
    error_in_pixels = (restored - images) * torch.tensor(STD).view(1, 3, 1, 1)
    assert error_in_pixels.abs().max() <= 0.5 / 255 + 1e-6


def test_values_outside_the_pixel_range_are_clamped():
    images = torch.full((1, 3, 2, 2), 100.0)
    assert quantize_to_uint8(images, MEAN, STD).unique().tolist() == [255]


def test_png_files_are_lossless_and_written_atomically(tmp_path):
    pixels = quantize_to_uint8(_normalized_batch(1), MEAN, STD)[0]
    path = tmp_path / "sub" / "img.png"
    write_png(pixels, str(path))
    assert torch.equal(read_png(str(path)), pixels)
    assert [p.name for p in path.parent.iterdir()] == ["img.png"]
