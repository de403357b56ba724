import math

import piq
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from data.transforms import normalize
from evaluation.image_quality import (
    PROTOCOLS,
    PSNR_CAP_DB,
    ImageQuality,
    QualityAccumulator,
    min_max_scale,
    pixel_space_metrics,
    reference_batch_metrics,
    to_pixels,
)
from utils.errors import NonFiniteError

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
    assert torch.equal(scaled, torch.tensor([[0.0, 0.5], [1.0, 0.375]]))


def test_constant_batches_score_as_identical_after_scaling():
    # Both sides scale to zeros: the reference would divide by zero; here it is a perfect match.
    metrics = reference_batch_metrics(torch.full((2, 3, 16, 16), 2.5), torch.full((2, 3, 16, 16),
                                                                                    -1.0))
    assert metrics == pytest.approx({"psnr": PSNR_CAP_DB, "ssim": 1.0, "mse": 0.0}, abs=1e-5)


def _constant_pixels(values, height=16, width=16):
    """Normalised images whose pixels are one value per image (all channels)."""
    pixels = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, height,
                                                                                 width)
    return normalize(pixels.contiguous(), MEAN, STD)


def test_pixel_space_ssim_and_psnr_of_constant_images_match_the_closed_form():
    """For constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2 at
    data_range 1 (the variances vanish and the structure term is 1); PSNR = 10 log10(1 / MSE).
    A data_range of 255 instead gives SSIM 0.977 and PSNR 56 dB for the first pair."""
    candidate_values, original_values = [0.2, 0.9, 0.5], [0.6, 0.3, 0.5]
    metrics = pixel_space_metrics(_constant_pixels(candidate_values),
                                  _constant_pixels(original_values), MEAN, STD)
    c1 = 0.01 ** 2
    expected_ssim = [(2 * a * b + c1) / (a * a + b * b + c1)
                     for a, b in zip(candidate_values, original_values)]
    expected_mse = [(a - b) ** 2 for a, b in zip(candidate_values, original_values)]
    expected_psnr = [10 * math.log10(1 / (mse + 1e-8)) for mse in expected_mse]
    assert metrics["ssim"].tolist() == pytest.approx(expected_ssim, abs=1e-4)
    assert expected_ssim[0] == pytest.approx(0.600100, abs=1e-6)
    assert metrics["mse"].tolist() == pytest.approx(expected_mse, abs=1e-6)
    assert metrics["psnr"].tolist() == pytest.approx(expected_psnr, abs=1e-3)
    assert expected_psnr[0] == pytest.approx(7.9588, abs=1e-4)


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
    expected_ssim = piq.ssim(noisy.clamp(0, 1), pixels, data_range=1.0, reduction="none")
    assert torch.allclose(metrics["ssim"], expected_ssim, atol=1e-5)


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
    with pytest.raises(ValueError, match="no images were added to the quality accumulator"):
        QualityAccumulator().means()
    with pytest.raises(ValueError, match=r"per-image metrics of unequal lengths: \[2, 3\]"):
        QualityAccumulator().add_per_image({"psnr": torch.zeros(2), "ssim": torch.zeros(3),
                                            "mse": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\) and \(2, 3, 16, 8\)"):
        reference_batch_metrics(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 8))
    with pytest.raises(ValueError, match=r"SSIM needs images of at least 11 x 11 pixels, got "
                                         r"\(16, 10\)"):
        pixel_space_metrics(torch.zeros(1, 3, 16, 10), torch.zeros(1, 3, 16, 10), MEAN, STD)


@pytest.mark.parametrize("function", [reference_batch_metrics,
                                      lambda c, o: pixel_space_metrics(c, o, MEAN, STD)])
@pytest.mark.parametrize("side, value", [("candidate", float("nan")),
                                         ("original", float("inf"))])
def test_non_finite_images_are_refused_before_piq(function, side, value):
    """piq would fail on an assertion (NaN >= 0 is false); the error names the side instead."""
    good = torch.zeros(2, 3, 16, 16)
    bad = good.clone()
    bad[1, 0, 4, 4] = value
    images = {"candidate": good, "original": good}
    images[side] = bad
    with pytest.raises(NonFiniteError, match=f"the {side} images hold NaN or infinite values"):
        function(images["candidate"], images["original"])


def test_image_quality_metric_equals_the_accumulated_functions():
    """The ignite Metric gives what QualityAccumulator gives over the same batches, per protocol."""
    generator = torch.Generator().manual_seed(5)
    batches = []
    for size in (3, 1, 2):
        original = torch.randn(size, 3, 16, 12, generator=generator)
        batches.append({"original": original,
                        "candidates": {"near": original + 0.1 * torch.randn(original.shape,
                                                                            generator=generator),
                                       "far": torch.randn(original.shape, generator=generator)}})
    engine = Engine(lambda engine, batch: batch)
    ImageQuality(("near", "far"), MEAN, STD).attach(engine, "quality")
    record = engine.run(batches).metrics["quality"]
    assert set(engine.state.metrics) == {"quality"}  # the record is stored whole, not flattened

    expected = {"num_images": 6}
    for protocol in PROTOCOLS:
        expected[protocol] = {}
        for kind in ("near", "far"):
            accumulator = QualityAccumulator()
            for batch in batches:
                candidate, original = batch["candidates"][kind], batch["original"]
                if protocol == "pixel_space":
                    accumulator.add_per_image(pixel_space_metrics(candidate, original, MEAN, STD))
                else:
                    accumulator.add_batch_means(reference_batch_metrics(candidate, original),
                                                original.shape[0])
            expected[protocol][kind] = accumulator.means()
    assert record == expected
    assert record["pixel_space"]["near"]["psnr"] > record["pixel_space"]["far"]["psnr"]
    with pytest.raises(NotComputableError):
        ImageQuality(("near",), MEAN, STD).compute()
