import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

from PIL import Image

import recovery_attack
from configs import get_default_config, load_config
from data.npy_pairs import PairDataset
from engine.attack import (AttackSettings, attack_targets, evaluate_generator, latest_checkpoint,
                           recovered_normalised, results_markdown, run_attack)
from data.transforms import normalize
from evaluation.image_quality import to_pixels
from modeling.generators import build_generator

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
HEIGHT, WIDTH, BATCH = 32, 16, 2
TINY = dict(generator="resnet_6blocks", ngf=4, total_epochs=2, eval_epochs=(0,), num_grids=1)


def write_pairs(run_dir, noise=0.05, train_batches=3, test_batches=2, seed=0):
    """Smooth images (easy to regress) with protected = original + small noise, as protect_image."""
    npy_dir = os.path.join(run_dir, "img_npy")
    os.makedirs(npy_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.2, 0.8, HEIGHT, dtype=np.float32).reshape(1, 1, HEIGHT, 1)
    for split, count in (("train", train_batches), ("test", test_batches)):
        for index in range(count):
            tint = rng.uniform(0.5, 1.0, (BATCH, 3, 1, 1)).astype(np.float32)
            pixels = np.broadcast_to(rows * tint, (BATCH, 3, HEIGHT, WIDTH))
            clean = ((pixels - MEAN) / STD).astype(np.float32)
            protected = clean + noise * rng.standard_normal(clean.shape).astype(np.float32)
            np.save(os.path.join(npy_dir, f"clean-{split}-{index}-images.npy"), clean)
            np.save(os.path.join(npy_dir, f"encry-{split}-{index}-images.npy"), protected)
            np.save(os.path.join(npy_dir, f"{split}-{index}-ids.npy"), np.arange(BATCH))
            if split == "test":
                np.save(os.path.join(npy_dir, f"test-{index}-camids.npy"), np.ones(BATCH))
    return npy_dir


def test_settings_default_to_the_reference_protocol():
    settings = AttackSettings.from_config(get_default_config())
    assert (settings.generator, settings.ngf, settings.optimizer, settings.lr,
            settings.total_epochs, settings.mode, settings.output_activation) == (
        "unet_128", 64, "adam", 1e-3, 100, "reference", "tanh")
    assert settings.evaluated_epochs() == [2, 99]
    assert dataclasses.replace(settings, total_epochs=2).evaluated_epochs() == [1]
    assert dataclasses.replace(settings, mode="strong").output_activation == "none"


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "rmsprop", "ATTACK.OPTIMIZER must be one of"),
    ("mode", "weak", "ATTACK.MODE must be one of"),
    ("generator", "unet_64", "ATTACK.GENERATOR must be one of"),
    ("total_epochs", 0, "ATTACK.TOTAL_EPOCHS must be a positive integer"),
    ("lr", -1.0, "ATTACK.LR must be a positive number"),
    ("eval_epochs", (-1,), "ATTACK.EVAL_EPOCHS must be 0-based epoch indices"),
])
def test_settings_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        AttackSettings(**{field: value})


def test_strong_attacker_targets_pixels_and_stores_clamped_images():
    pixels = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    originals = normalize(pixels, MEAN.ravel(), STD.ravel())
    strong, reference = AttackSettings(mode="strong"), AttackSettings()
    assert torch.allclose(attack_targets(originals, strong), pixels, atol=1e-6)
    assert attack_targets(originals, reference) is originals
    outputs = pixels * 1.4 - 0.2
    recovered = recovered_normalised(outputs, strong)
    assert torch.allclose(to_pixels(recovered, MEAN.ravel(), STD.ravel()),
                          outputs.clamp(0, 1), atol=1e-6)
    assert recovered_normalised(outputs, reference) is outputs


def test_end_to_end_writes_results_grids_and_weights(tmp_path):
    npy_dir = write_pairs(str(tmp_path))
    settings = AttackSettings(**TINY)
    entry = run_attack(settings, npy_dir, str(tmp_path), show_progress=False)
    results = json.loads((tmp_path / "attack_results.json").read_text())
    assert results["reference"] == json.loads(json.dumps(entry))
    assert sorted(results["reference"]["evaluations"]) == ["0", "1"]
    record = results["reference"]["evaluations"]["1"]
    assert record["epoch"] == 1 and record["num_images"] == 2 * BATCH
    for protocol in ("reference_normalisation", "pixel_space"):
        for kind in ("protected", "recovered"):
            values = record[protocol][kind]
            assert sorted(values) == ["mse", "psnr", "ssim"]
            assert all(math.isfinite(value) for value in values.values())
    # protected = original + 0.05 noise in the normalised space: about 0.05*0.226 in pixels.
    assert record["pixel_space"]["protected"]["mse"] == pytest.approx(0.05 ** 2 * 0.0511, rel=0.1)
    assert set(results["reference"]["train_loss"]) == {"0", "1"}

    grid_files = sorted(os.listdir(tmp_path / "rec_images" / "reference"))
    assert grid_files == ["0.png"]
    with Image.open(tmp_path / "rec_images" / "reference" / "0.png") as grid:
        assert grid.size == (BATCH * WIDTH, 3 * HEIGHT)

    weights = torch.load(tmp_path / "Generator_weight.pth", weights_only=True)
    generator = build_generator("resnet_6blocks", ngf=4)
    generator.load_state_dict(weights)
    assert os.listdir(tmp_path / "attack_ckpt" / "reference") == ["checkpoint_2.pt"]
    markdown = (tmp_path / "attack_results.md").read_text()
    assert markdown.count("| reference | 1 |") == 4 and "| pixel_space | recovered |" in markdown
    assert "L1 loss" in (tmp_path / "log_recovery.txt").read_text()


def test_strong_attacker_is_scored_in_pixel_space(tmp_path):
    npy_dir = write_pairs(str(tmp_path))
    settings = AttackSettings(**{**TINY, "mode": "strong", "total_epochs": 1})
    run_attack(settings, npy_dir, str(tmp_path), show_progress=False)
    run_attack(dataclasses.replace(settings, mode="reference"), npy_dir, str(tmp_path),
               show_progress=False)
    results = json.loads((tmp_path / "attack_results.json").read_text())
    assert sorted(results) == ["reference", "strong"]
    assert results["strong"]["settings"]["mode"] == "strong"
    assert (tmp_path / "Generator_weight_strong.pth").is_file()
    # A strong attacker that outputs the originals' pixels is scored as a perfect recovery.
    test_pairs = PairDataset(npy_dir, "test")
    oracle = _PixelOracle(test_pairs, torch.tensor(MEAN), torch.tensor(STD))
    scores = evaluate_generator(oracle, test_pairs, settings, "cpu")
    assert scores["pixel_space"]["recovered"]["psnr"] == pytest.approx(80.0, abs=1e-2)
    assert scores["reference_normalisation"]["recovered"]["mse"] < 1e-10
    assert scores["pixel_space"]["protected"]["psnr"] < 60
    table = results_markdown(results)
    assert table.count("| strong | 0 |") == 4 and table.count("| reference | 0 |") == 4


class _PixelOracle(torch.nn.Module):
    """A 'generator' returning the stored originals' pixels: the perfect strong attacker."""

    def __init__(self, pairs, mean, std):
        super().__init__()
        self.originals = [pairs.load_batch(k) for k in range(pairs.num_batches)]
        self.mean, self.std = mean, std

    def forward(self, protected):
        for stored_protected, original in self.originals:
            if torch.equal(stored_protected, protected):
                return original * self.std + self.mean
        raise AssertionError("unknown batch")


def test_loss_decreases_on_easy_pairs(tmp_path):
    npy_dir = write_pairs(str(tmp_path), noise=0.02)
    for mode in ("reference", "strong"):
        settings = AttackSettings(**{**TINY, "mode": mode, "total_epochs": 4, "lr": 2e-3})
        entry = run_attack(settings, npy_dir, str(tmp_path / mode), show_progress=False)
        losses = [entry["train_loss"][str(epoch)] for epoch in range(4)]
        assert losses[3] < 0.9 * losses[0], (mode, losses)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    npy_dir = write_pairs(str(tmp_path / "data"))
    settings = AttackSettings(**{**TINY, "eval_epochs": ()})
    run_attack(settings, npy_dir, str(tmp_path / "straight"), show_progress=False)

    resumed_dir = str(tmp_path / "resumed")
    run_attack(dataclasses.replace(settings, total_epochs=1), npy_dir, resumed_dir,
               show_progress=False)
    entry = run_attack(settings, npy_dir, resumed_dir, show_progress=False)
    straight = torch.load(tmp_path / "straight" / "Generator_weight.pth", weights_only=True)
    resumed = torch.load(os.path.join(resumed_dir, "Generator_weight.pth"), weights_only=True)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert sorted(entry["train_loss"]) == ["0", "1"] and sorted(entry["evaluations"]) == ["0", "1"]
    checkpoint_dir = os.path.join(resumed_dir, "attack_ckpt", "reference")
    assert os.listdir(checkpoint_dir) == ["checkpoint_2.pt"]
    assert latest_checkpoint(checkpoint_dir).endswith("checkpoint_2.pt")

    again = run_attack(settings, npy_dir, resumed_dir, show_progress=False)
    assert again == entry
    with pytest.raises(ValueError, match="different attack .*lr: 0.001 -> 0.002"):
        run_attack(dataclasses.replace(settings, lr=2e-3), npy_dir, resumed_dir,
                   show_progress=False)
    with pytest.raises(ValueError, match="already trained 2 epochs"):
        run_attack(dataclasses.replace(settings, total_epochs=1), npy_dir, resumed_dir,
                   show_progress=False)


def test_cli_flags_override_config_and_reference_order(tmp_path):
    write_pairs(str(tmp_path / "run"), train_batches=3, test_batches=3)
    output = tmp_path / "attack"
    recovery_attack.main(["--npy_path", str(tmp_path / "run"), "--output", str(output),
                          "--total_epochs", "1", "--lr", "0.002", "--generator", "resnet_6blocks",
                          "--attacker", "strong", "--reference_order", "--device", "cpu",
                          "--no_progress", "ATTACK.NGF", "4", "ATTACK.LR", "0.5",
                          "ATTACK.NUM_GRIDS", "2", "DATALOADER.NUM_WORKERS", "0"])
    saved = load_config(str(output / "attack_config.yaml")).ATTACK
    assert (saved.TOTAL_EPOCHS, saved.LR, saved.GENERATOR, saved.NGF,
            saved.MODE) == (1, 0.002, "resnet_6blocks", 4, "strong")
    results = json.loads((output / "attack_results.json").read_text())
    assert list(results) == ["strong"]
    assert sorted(os.listdir(output / "rec_images" / "strong")) == ["0.png", "1.png"]
    checkpoint = torch.load(output / "attack_ckpt" / "strong" / "checkpoint_1.pt",
                            weights_only=True)
    assert checkpoint["history"]["identity"]["reference_order"] is True
    assert checkpoint["history"]["identity"]["shuffle"] is False


def test_cli_writes_next_to_img_npy_by_default(tmp_path):
    write_pairs(str(tmp_path), train_batches=1, test_batches=1)
    recovery_attack.main(["--npy_path", str(tmp_path / "img_npy"), "--total_epochs", "1",
                          "--generator", "resnet_6blocks", "--device", "cpu", "--no_progress",
                          "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "0",
                          "DATALOADER.NUM_WORKERS", "0"])
    assert (tmp_path / "attack_results.json").is_file()
    assert (tmp_path / "Generator_weight.pth").is_file()
    assert not (tmp_path / "rec_images").exists()


@pytest.mark.parametrize("arguments, message", [
    ([], "the following arguments are required: --npy_path"),
    (["--npy_path", "{missing}"], "neither {missing}/img_npy nor {missing}"),
    (["--npy_path", "{run}", "ATTACK.NOPE", "1"], "unknown config key 'ATTACK.NOPE'"),
    (["--npy_path", "{run}", "ATTACK.MODE", "weak"], "ATTACK.MODE must be one of"),
    (["--npy_path", "{run}", "--generator", "unet_64"], "invalid choice: 'unet_64'"),
    (["--npy_path", "{run}", "--device", "tpu"], "MODEL.DEVICE: expected 'auto', 'cpu'"),
    (["--npy_path", "{run}", "ATTACK.TOTAL_EPOCHS"], "KEY VALUE pairs"),
])
def test_cli_errors(tmp_path, capsys, arguments, message):
    write_pairs(str(tmp_path / "run"), train_batches=1, test_batches=1)
    paths = {"missing": str(tmp_path / "missing"), "run": str(tmp_path / "run")}
    with pytest.raises(SystemExit) as exit_info:
        recovery_attack.main([argument.format(**paths) for argument in arguments])
    assert exit_info.value.code == 2
    assert message.format(**paths) in capsys.readouterr().err


def test_cli_refuses_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    write_pairs(str(tmp_path), train_batches=1, test_batches=1)
    with pytest.raises(SystemExit):
        recovery_attack.main(["--npy_path", str(tmp_path), "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_reports_a_broken_pair_set(tmp_path, capsys):
    npy_dir = write_pairs(str(tmp_path), train_batches=2, test_batches=1)
    os.remove(os.path.join(npy_dir, "clean-train-1-images.npy"))
    with pytest.raises(SystemExit):
        recovery_attack.main(["--npy_path", str(tmp_path)])
    assert "missing partner" in capsys.readouterr().err
