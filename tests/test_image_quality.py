import math

import piq
import pytest
import torch

from data.transforms import normalize
from evaluation.image_quality import (PSNR_CAP_DB, QualityAccumulator, min_max_scale, pixel_space_metrics,
                                      reference_batch_metrics, to_pixels)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _fixed_pair():
    generator = torch.Generator().manual_seed(3)
    original = torch.randn(3, 3, 32, 24, generator=generator) * 1.5
    candidate = original + 0.7 * torch.randn(3, 3, 32, 24, generator=generator)
    return candidate, original


def test_reference_metrics_equal_hand_computation():
    candidate, original = _fixed_pair()
    scaled_candidate = (candidate - candidate.min()) / (candidate.max() - candidate.min())
    scaled_original = (original - original.min()) / (original.max() - original.min())
    expected_psnr = piq.psnr(scaled_candidate, scaled_original, data_range=1.0).item()
    expected_ssim = piq.ssim(scaled_candidate, scaled_original, data_range=1.0).item()
    expected_mse = ((scaled_candidate - scaled_original) ** 2).mean().item()
    metrics = reference_batch_metrics(candidate, original)
    assert metrics["psnr"] == pytest.approx(expected_psnr, abs=1e-5)
    assert metrics["ssim"] == pytest.approx(expected_ssim, abs=1e-6)
    assert metrics["mse"] == pytest.approx(expected_mse, rel=1e-6)
    # The batch is scaled as a whole: a global affine change of the candidate changes nothing.
    shifted = reference_batch_metrics(candidate * 3.0 - 2.0, original)
    assert shifted == pytest.approx(metrics, rel=1e-5)


def test_min_max_scale_of_constant_tensor_is_zero():
    assert torch.equal(min_max_scale(torch.full((1, 3, 4, 4), 2.5)), torch.zeros(1, 3, 4, 4))
    scaled = min_max_scale(torch.tensor([[-3.0, 1.0], [5.0, 0.0]]))
    assert scaled.min().item() == 0.0 and scaled.max().item() == 1.0


def test_pixel_space_identical_images_hit_the_psnr_cap():
    pixels = torch.rand(2, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    images = normalize(pixels, MEAN, STD)
    metrics = pixel_space_metrics(images, images.clone(), MEAN, STD)
    assert PSNR_CAP_DB == pytest.approx(80.0)
    assert torch.allclose(metrics["psnr"], torch.full((2,), 80.0))
    assert torch.allclose(metrics["ssim"], torch.ones(2))
    assert torch.equal(metrics["mse"], torch.zeros(2))


def test_pixel_space_metrics_of_known_noise():
    generator = torch.Generator().manual_seed(1)
    pixels = 0.2 + 0.6 * torch.rand(3, 3, 32, 16, generator=generator)
    signs = torch.where(torch.rand(3, 3, 32, 16, generator=generator) < 0.5, -1.0, 1.0)
    offsets = torch.tensor([0.01, 0.05, 0.1]).view(3, 1, 1, 1)
    noisy = pixels + signs * offsets
    metrics = pixel_space_metrics(normalize(noisy, MEAN, STD), normalize(pixels, MEAN, STD),
                                  MEAN, STD)
    expected_mse = offsets.flatten() ** 2
    assert torch.allclose(metrics["mse"], expected_mse, rtol=1e-4)
    expected_psnr = torch.tensor([-10 * math.log10(m + 1e-8) for m in expected_mse.tolist()])
    assert torch.allclose(metrics["psnr"], expected_psnr, atol=1e-3)
    assert metrics["ssim"].shape == (3,)
    assert metrics["ssim"][0] > metrics["ssim"][1] > metrics["ssim"][2]


def test_pixel_space_clamps_to_the_image_range():
    original = normalize(torch.ones(1, 3, 16, 16), MEAN, STD)
    brighter = original + 10.0
    metrics = pixel_space_metrics(brighter, original, MEAN, STD)
    assert metrics["mse"].item() == 0.0
    assert torch.equal(to_pixels(brighter, MEAN, STD), torch.ones(1, 3, 16, 16))


def test_accumulator_weights_by_images():
    accumulator = QualityAccumulator()
    accumulator.add_batch_means({"psnr": 10.0, "ssim": 0.5, "mse": 0.1}, 2)
    accumulator.add_batch_means({"psnr": 20.0, "ssim": 0.8, "mse": 0.4}, 6)
    accumulator.add_per_image({"psnr": torch.tensor([30.0, 40.0]), "ssim": torch.tensor([1.0, 0.0]),
                               "mse": torch.tensor([0.0, 0.2])})
    assert accumulator.count == 10
    assert accumulator.means() == pytest.approx(
        {"psnr": (20 + 120 + 70) / 10, "ssim": (1.0 + 4.8 + 1.0) / 10,
         "mse": (0.2 + 2.4 + 0.2) / 10})


def test_errors():
    with pytest.raises(ValueError, match="no images"):
        QualityAccumulator().means()
    with pytest.raises(ValueError, match="unequal lengths"):
        QualityAccumulator().add_per_image({"psnr": torch.zeros(2), "ssim": torch.zeros(3),
                                            "mse": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\) and \(2, 3, 16, 8\)"):
        reference_batch_metrics(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 8))
