"""8-bit PNG storage of protected images: what quantisation does and that files round-trip."""
import torch

from engine.storage import dequantize, quantize_to_uint8, read_png, write_png

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _normalised_batch(seed=0):
    pixels = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(seed))
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_quantisation_error_is_at_most_half_a_grey_level():
    images = _normalised_batch()
    restored = dequantize(quantize_to_uint8(images, MEAN, STD), MEAN, STD)
    error_in_pixels = (restored - images) * torch.tensor(STD).view(1, 3, 1, 1)
    assert error_in_pixels.abs().max() <= 0.5 / 255 + 1e-6
    assert error_in_pixels.abs().max() > 0


def test_values_outside_the_pixel_range_are_clamped():
    images = torch.full((1, 3, 2, 2), 100.0)
    assert quantize_to_uint8(images, MEAN, STD).unique().tolist() == [255]


def test_png_files_are_lossless_and_written_atomically(tmp_path):
    pixels = quantize_to_uint8(_normalised_batch(1), MEAN, STD)[0]
    path = tmp_path / "sub" / "img.png"
    write_png(pixels, str(path))
    assert torch.equal(read_png(str(path)), pixels)
    assert [p.name for p in path.parent.iterdir()] == ["img.png"]
