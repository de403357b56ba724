"""Recovery attack: settings, scores checked against an independent computation, resume, the CLI.

Every scored number is recomputed here from the .npy files with numpy, the closed-form PSNR and
piq called directly with data_range 1; every error path goes through ``recovery_attack.main``
and must end in exit status 2 with one line on stderr, leaving earlier files as they were.
"""
import dataclasses
import errno
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import piq
import pytest
import torch
from helpers import REPO
from ignite.engine import Events
from PIL import Image

import recovery_attack
from configs import get_default_config, load_config
from data.img_npy import batch_files, find_pairs, npy_dir_of, read_batch, write_batch
from data.npy_pairs import PairDataset, SavedBatchOrder
from data.transforms import normalize
from engine.attack import checkpoint as checkpoint_module
from engine.attack import run as attack_module
from engine.attack import settings as attack_settings_module
from engine.attack.checkpoint import latest_checkpoint
from engine.attack.results import results_markdown
from engine.attack.run import run_attack
from engine.attack.settings import (
    ATTACKERS,
    DEFAULT_VAL_FRACTION,
    OPTIMIZERS,
    AttackSettings,
    available_cpus,
    build_optimizer,
    loader_workers,
)
from engine.attack.trainer import (
    EPOCH_METERS,
    attack_targets,
    create_attack_evaluator,
    create_attack_trainer,
    evaluate_generator,
    recovered_normalized,
)
from engine.common.checkpoint import AtomicCheckpointSaver
from engine.methods.codec import PixelCodec
from engine.protect.handlers import GRID_ROWS, GridWriter
from modeling.generators import GENERATORS, build_generator
from utils.errors import ConfigError, NonFiniteError, RunConflictError
from utils.file_io import FolderLock
from utils.grids import ATTACK_GRID_ROWS, ROW_LABEL_MARGIN, grid_row_names, labelled_grid

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
HEIGHT, WIDTH, BATCH = 32, 16, 2
TINY = {"generator": "resnet_6blocks", "ngf": 4, "total_epochs": 2, "eval_epochs": (0,), "num_grids": 1}
CLI_TINY = ["--generator", "resnet_6blocks", "--device", "cpu", "--no_progress",
            "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "1", "DATALOADER.NUM_WORKERS", "0"]


def write_pairs(run_dir, noise=0.05, train_batches=3, test_batches=2, seed=0, height=HEIGHT,
                width=WIDTH, channels=3):
    """Smooth images (easy to regress) with protected = original + small noise, as protect_image."""
    npy_dir = npy_dir_of(run_dir)
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.2, 0.8, height, dtype=np.float32).reshape(1, 1, height, 1)
    for split, count in (("train", train_batches), ("test", test_batches)):
        for index in range(count):
            tint = rng.uniform(0.5, 1.0, (BATCH, 3, 1, 1)).astype(np.float32)
            pixels = np.broadcast_to(rows * tint, (BATCH, 3, height, width))
            clean = ((pixels - MEAN) / STD).astype(np.float32)[:, :channels]
            protected = clean + noise * rng.standard_normal(clean.shape).astype(np.float32)
            write_batch(npy_dir, split, index, clean, protected, np.arange(BATCH), np.ones(BATCH))
    return npy_dir


def independent_scores(npy_dir, recover):
    """Both protocols' means over the test split, computed without evaluation.image_quality.

    ``recover(protected normalised batch) -> recovered normalised batch``.
    """
    sums = {(protocol, kind): np.zeros(3) for protocol in ("reference_normalisation",
                                                           "pixel_space")
            for kind in ("protected", "recovered")}
    count = 0
    for pair in find_pairs(npy_dir, "test"):
        batch = read_batch(npy_dir, "test", pair.index)
        clean, protected = batch.clean.astype(np.float64), batch.protected
        recovered = recover(torch.from_numpy(protected)).detach().double().numpy()
        size = clean.shape[0]
        for kind, candidate in (("protected", protected.astype(np.float64)),
                                ("recovered", recovered)):
            scaled_c = (candidate - candidate.min()) / (candidate.max() - candidate.min())
            scaled_o = (clean - clean.min()) / (clean.max() - clean.min())
            mse = np.mean((scaled_c - scaled_o) ** 2)
            ssim = piq.ssim(torch.tensor(scaled_c), torch.tensor(scaled_o), data_range=1.0).item()
            psnr = piq.psnr(torch.tensor(scaled_c), torch.tensor(scaled_o), data_range=1.0).item()
            sums["reference_normalisation", kind] += np.array([psnr, ssim, mse]) * size
            pixels_c = np.clip(candidate * STD + MEAN, 0.0, 1.0)
            pixels_o = np.clip(clean * STD + MEAN, 0.0, 1.0)
            per_image_mse = np.mean((pixels_c - pixels_o) ** 2, axis=(1, 2, 3))
            per_image_psnr = 10.0 * np.log10(1.0 / (per_image_mse + 1e-8))
            per_image_ssim = piq.ssim(torch.tensor(pixels_c), torch.tensor(pixels_o),
                                      data_range=1.0, reduction="none").numpy()
            sums["pixel_space", kind] += np.array([per_image_psnr.sum(), per_image_ssim.sum(),
                                                   per_image_mse.sum()])
        count += size
    return count, {key: dict(zip(("psnr", "ssim", "mse"), value / count))
                   for key, value in sums.items()}


def assert_record_matches(record, npy_dir, recover):
    count, expected = independent_scores(npy_dir, recover)
    assert record["num_images"] == count
    for (protocol, kind), values in expected.items():
        for metric, value in values.items():
            assert record[protocol][kind][metric] == pytest.approx(value, rel=2e-4, abs=1e-6), (
                protocol, kind, metric)


def cli_lines(err):
    """The command's own lines on stderr (the log goes there too, one timestamped record a line)."""
    return [line for line in err.splitlines() if line.startswith("recovery_attack.py:")]


def one_error_line(capsys, *fragments):
    """stderr holds exactly one line of the CLI's own, its error, containing every fragment, and no traceback."""
    err = capsys.readouterr().err
    lines = cli_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("recovery_attack.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def folder_digests(folder):
    return {os.path.relpath(os.path.join(root, name), folder): digest(os.path.join(root, name))
            for root, _, names in os.walk(folder) for name in names}


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
def test_settings_default_to_the_reference_protocol():
    settings = AttackSettings.from_config(get_default_config())
    assert (settings.generator, settings.ngf, settings.optimizer, settings.lr,
            settings.total_epochs, settings.mode, settings.output_activation) == (
        "unet_128", 64, "adam", 1e-3, 100, "reference", "tanh")
    assert settings.evaluated_epochs() == [2, 99]
    assert dataclasses.replace(settings, total_epochs=2).evaluated_epochs() == [1]
    assert dataclasses.replace(settings, mode="strong").output_activation == "none"


def test_each_attacker_follows_its_own_validation_protocol_by_default():
    """Reference: every train pair, as the paper's script; the privacy evaluation's attackers: a tenth held out."""
    cfg = get_default_config()
    assert cfg.ATTACK.VAL_FRACTION == -1
    defaults = {mode: AttackSettings.from_config(cfg, mode=mode).val_fraction for mode in ATTACKERS}
    assert defaults == DEFAULT_VAL_FRACTION == {"reference": 0.0, "strong": 0.1, "identity": 0.1, "inversion": 0.0}
    assert AttackSettings.from_config(cfg).val_fraction == 0.0  # ATTACK.MODE reference
    for explicit in (0.0, 0.1, 0.3):  # a value set by the user applies to every attacker, the reference included
        cfg.ATTACK.VAL_FRACTION = explicit
        assert {AttackSettings.from_config(cfg, mode=mode).val_fraction for mode in ATTACKERS} == {explicit}
    cfg.ATTACK.VAL_FRACTION = -0.5
    with pytest.raises(ConfigError, match=r"ATTACK.VAL_FRACTION must be a number in \[0, 1\), or -1 for each "
                                          r"attacker's default .*got -0.5"):
        AttackSettings.from_config(cfg)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "rmsprop", r"ATTACK.OPTIMIZER must be one of \('adam', 'sgd'\), got 'rmsprop'"),
    ("mode", "weak", r"ATTACK.MODE must be one of \('reference', 'strong', 'identity', 'inversion'\), got 'weak'"),
    ("generator", "unet_64", r"ATTACK.GENERATOR must be one of \[.*'unet_128'.*\], got 'unet_64'"),
    ("total_epochs", 0, "ATTACK.TOTAL_EPOCHS must be a positive integer, got 0"),
    ("lr", -1.0, "ATTACK.LR must be a positive number, got -1.0"),
    ("lr", float("nan"), "ATTACK.LR must be a positive number, got nan"),
    ("eval_epochs", (-1,), r"ATTACK.EVAL_EPOCHS must be 0-based epoch indices >= 0, got \[-1\]"),
    ("pixel_std", (0.2, 0.0, 0.2), r"INPUT.PIXEL_STD must be positive values"),
])
def test_settings_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AttackSettings(**{field: value})


def test_cli_lists_agree_with_the_engine():
    assert recovery_attack.ATTACKERS == ATTACKERS
    assert recovery_attack.GENERATOR_NAMES == tuple(sorted(GENERATORS))
    assert recovery_attack.OPTIMIZER_NAMES == OPTIMIZERS


def test_loader_workers_are_capped_at_the_usable_cpus(monkeypatch):
    assert loader_workers(10_000) == available_cpus()
    monkeypatch.setattr(attack_settings_module, "available_cpus", lambda: 2)
    assert (loader_workers(4), loader_workers(2), loader_workers(1), loader_workers(0)) == (
        2, 2, 1, 0)
    with pytest.raises(ConfigError, match="DATALOADER.NUM_WORKERS must be an integer >= 0, "
                                          "got -1"):
        loader_workers(-1)


# ---------------------------------------------------------------------------------------------
# the strong attacker's targets and clamp
# ---------------------------------------------------------------------------------------------
def test_strong_attacker_targets_pixels():
    pixels = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    originals = normalize(pixels, MEAN.ravel(), STD.ravel())
    strong, reference = AttackSettings(mode="strong"), AttackSettings()
    assert torch.allclose(attack_targets(originals, strong), pixels, atol=1e-6)
    assert attack_targets(originals, reference) is originals


def test_strong_attacker_output_is_clamped_before_normalizing():
    # Pixel outputs from -0.5 to 1.5: a third of them outside [0, 1].
    outputs = torch.linspace(-0.5, 1.5, 2 * 3 * 8 * 4).reshape(2, 3, 8, 4)
    recovered = recovered_normalized(outputs, AttackSettings(mode="strong"))
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    expected = (torch.where(outputs < 0, 0.0, torch.where(outputs > 1, 1.0, outputs)) - mean) / std
    assert torch.allclose(recovered, expected, atol=1e-6)
    assert recovered_normalized(outputs, AttackSettings()) is outputs


class _ConstantPixels(torch.nn.Module):
    """A strong 'generator' returning the originals' pixels stretched beyond [0, 1]."""

    def __init__(self, pairs, scale, offset):
        super().__init__()
        self.batches = [pairs.load_batch(k) for k in range(pairs.num_batches)]
        self.scale, self.offset = scale, offset

    def forward(self, protected):
        for stored_protected, original in self.batches:
            if torch.equal(stored_protected, protected):
                pixels = original * torch.tensor(STD) + torch.tensor(MEAN)
                return pixels * self.scale + self.offset
        raise AssertionError("unknown batch")


def test_strong_attacker_is_scored_on_clamped_pixels(tmp_path):
    npy_dir = write_pairs(str(tmp_path))
    settings = AttackSettings(**{**TINY, "mode": "strong"})
    test_pairs = PairDataset(npy_dir, "test")
    # Pixels 0.1 .. 0.8 become -0.3 .. 1.1: both ends leave [0, 1] and must be clamped.
    stretched = _ConstantPixels(test_pairs, 2.0, -0.5)
    scores = evaluate_generator(stretched, test_pairs, settings, "cpu")

    def clamped(protected):
        pixels = stretched(protected).clamp(0.0, 1.0)
        return (pixels - torch.tensor(MEAN)) / torch.tensor(STD)

    assert_record_matches(scores, npy_dir, clamped)
    # The perfect strong attacker (the originals' own pixels) hits the PSNR cap.
    perfect = evaluate_generator(_ConstantPixels(test_pairs, 1.0, 0.0), test_pairs, settings,
                                 "cpu")
    assert perfect["pixel_space"]["recovered"]["psnr"] == pytest.approx(80.0, abs=1e-3)
    assert perfect["pixel_space"]["recovered"]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert perfect["reference_normalisation"]["recovered"]["mse"] == pytest.approx(0.0, abs=1e-12)


def test_a_generator_that_outputs_nan_is_refused_before_piq(tmp_path):
    npy_dir = write_pairs(str(tmp_path), test_batches=1)
    test_pairs = PairDataset(npy_dir, "test")

    class Broken(torch.nn.Module):
        def forward(self, protected):
            return torch.full_like(protected, float("nan"))

    with pytest.raises(NonFiniteError, match=r"\[reference\] the generator's output for "
                                             r".*encry-test-0-images.npy holds NaN or infinity"):
        evaluate_generator(Broken(), test_pairs, AttackSettings(**TINY), "cpu")


def test_protection_grids_carry_a_label_strip_naming_their_rows(tmp_path):
    """imgs/<split>_<i>.png: original / protected rows as a viewer sees them, a white strip naming each on the left."""
    codec = PixelCodec(tuple(MEAN.ravel()), tuple(STD.ravel()))
    generator = torch.Generator().manual_seed(0)
    original, protected = torch.randn(2, 3, 3, 32, 16, generator=generator)
    writer = GridWriter(store=type("Store", (), {"grid_dir": str(tmp_path / "imgs")})(), split="test", num_grids=1,
                        codec=codec)
    for batch_index in (0, 1):  # only the first num_grids batches are drawn
        writer.handle({"batch_index": batch_index, "original": original, "protected": protected})
    assert os.listdir(tmp_path / "imgs") == ["test_0.png"]
    with Image.open(tmp_path / "imgs" / "test_0.png") as grid:
        assert grid_row_names(grid) == GRID_ROWS == ("original", "protected")
        # make_grid's 2-pixel white padding around and between 3 x 32 x 16 images, plus the label strip
        assert grid.size == (ROW_LABEL_MARGIN + 3 * (16 + 2) + 2, 2 * (32 + 2) + 2)
        pixels = np.asarray(grid.convert("RGB")).astype(np.int64)
    for row, images in enumerate((original, protected)):
        for column in range(3):
            top, left = 2 + row * 34, ROW_LABEL_MARGIN + 2 + column * 18
            expected = codec.to_pixels(images[column:column + 1])[0].permute(1, 2, 0).numpy()
            assert np.array_equal(pixels[top:top + 32, left:left + 16], expected)
        band = pixels[row * 34:(row + 1) * 34, :ROW_LABEL_MARGIN]
        assert band.min() < 128 and band.max() == 255  # dark text on white, in this row's band
    bare = labelled_grid(Image.new("RGB", (10, 20), "red"), ("a", "b"))
    assert bare.size == (10 + ROW_LABEL_MARGIN, 20) and bare.getpixel((ROW_LABEL_MARGIN, 0)) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------
# training, results, resume
# ---------------------------------------------------------------------------------------------
def test_end_to_end_scores_equal_an_independent_computation(tmp_path):
    npy_dir = write_pairs(str(tmp_path))
    settings = AttackSettings(**TINY)
    entry = run_attack(settings, npy_dir, str(tmp_path), show_progress=False)
    results = json.loads((tmp_path / "attack_results.json").read_text())
    assert results["reference"] == json.loads(json.dumps(entry))
    assert sorted(results["reference"]["evaluations"]) == ["0", "1"]
    assert sorted(results["reference"]["train_loss"]) == ["0", "1"]

    generator = build_generator("resnet_6blocks", ngf=4)
    generator.load_state_dict(torch.load(tmp_path / "Generator_weight.pth", weights_only=True))
    generator.eval()
    last = results["reference"]["evaluations"]["1"]
    assert last["epoch"] == 1
    with torch.no_grad():
        assert_record_matches(last, npy_dir, generator)
    # protected = original + 0.05 noise in the normalised space, at both evaluations alike.
    first = results["reference"]["evaluations"]["0"]
    for protocol in ("reference_normalisation", "pixel_space"):
        assert first[protocol]["protected"] == last[protocol]["protected"]

    with Image.open(tmp_path / "rec_images" / "reference" / "0.png") as grid:
        assert grid.size == (ROW_LABEL_MARGIN + BATCH * WIDTH, 3 * HEIGHT)  # the label strip, then the images
        assert grid_row_names(grid) == ATTACK_GRID_ROWS == ("protected", "recovered", "original")
        strip = np.asarray(grid.convert("L"))[:, :ROW_LABEL_MARGIN]
        grid_pixels = np.asarray(grid.convert("RGB"))[:, ROW_LABEL_MARGIN:].astype(np.int64)
    assert [strip[row * HEIGHT:(row + 1) * HEIGHT].min() < 128 for row in range(3)] == [True] * 3  # text per row
    with torch.no_grad():
        protected, original = PairDataset(npy_dir, "test").load_batch(0)
        rows = torch.cat([protected, generator(protected), original])
    scaled = (rows - rows.min()) / (rows.max() - rows.min())
    expected = np.round(scaled.numpy() * 255).astype(np.int64)
    expected = expected.reshape(3, BATCH, 3, HEIGHT, WIDTH).transpose(0, 3, 1, 4, 2)
    assert np.abs(grid_pixels - expected.reshape(3 * HEIGHT, BATCH * WIDTH, 3)).max() <= 1
    assert os.listdir(tmp_path / "rec_images" / "reference") == ["0.png"]
    assert sorted(os.listdir(tmp_path / "attack_ckpt" / "reference")) == ["checkpoint_2.pt", "generator_2.pth"]
    log = (tmp_path / "log_recovery.txt").read_text()
    assert f"[reference] epoch 1/1 L1 loss {entry['train_loss']['1']:.6f}" in log


def test_epoch_loss_and_weights_equal_a_plain_training_loop(tmp_path):
    """The ignite meters (reset every epoch) and steps give exactly what a plain loop gives."""
    npy_dir = write_pairs(str(tmp_path), train_batches=3)
    settings = AttackSettings(**{**TINY, "total_epochs": 2, "shuffle": False})
    entry = run_attack(settings, npy_dir, str(tmp_path), show_progress=False)

    torch.manual_seed(settings.seed)
    generator = build_generator("resnet_6blocks", ngf=4)
    optimizer = torch.optim.Adam(generator.parameters(), lr=settings.lr)
    for epoch in range(2):
        weighted = 0.0
        for index in range(3):
            batch = read_batch(npy_dir, "train", index)
            clean, protected = torch.from_numpy(batch.clean), torch.from_numpy(batch.protected)
            loss = torch.nn.functional.l1_loss(generator(protected), clean)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            weighted += loss.item() * BATCH
        assert entry["train_loss"][str(epoch)] == weighted / (3 * BATCH)
    saved = torch.load(tmp_path / "Generator_weight.pth", weights_only=True)
    assert all(torch.equal(saved[key], value) for key, value in generator.state_dict().items())


def test_reference_attacker_at_the_defaults_trains_on_every_pair_like_the_papers_script(tmp_path):
    """recovery_attack.py with no option but the size: the paper's loop (U-Net with Tanh, Adam 1e-3, L1 to the
    normalised original, seed 0) over ALL train pairs, in the attack's seeded batch order; nothing held out."""
    npy_dir = write_pairs(str(tmp_path), train_batches=4, test_batches=1)
    for index in range(4):  # distinct identities per batch, so a validation split would take whole batches' rows
        batch = read_batch(npy_dir, "train", index)
        write_batch(npy_dir, "train", index, batch.clean, batch.protected, np.arange(BATCH) + BATCH * index,
                    np.ones(BATCH))
    assert recovery_attack.main(["--npy_path", str(tmp_path), "--total_epochs", "1", "--device", "cpu",
                                 "--no_progress", "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "0",
                                 "DATALOADER.NUM_WORKERS", "0"]) == 0
    results = json.loads((tmp_path / "attack_results.json").read_text())
    assert results["reference"]["settings"]["val_fraction"] == 0.0 and "validation_l1" not in results["reference"]
    assert load_config(str(tmp_path / "attack_config.yaml")).ATTACK.VAL_FRACTION == -1

    torch.manual_seed(0)
    generator = build_generator("unet_128", ngf=4, output_activation="tanh")
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    order = SavedBatchOrder(4, shuffle=True, seed=0)
    order.set_epoch(1)  # ignite counts epochs from 1
    visited = list(order)
    assert sorted(visited) == [0, 1, 2, 3]
    generator.train()
    for index in visited:
        batch = read_batch(npy_dir, "train", index)
        loss = torch.nn.functional.l1_loss(generator(torch.from_numpy(batch.protected)), torch.from_numpy(batch.clean))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    saved = torch.load(tmp_path / "Generator_weight.pth", weights_only=True)
    expected = generator.state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[key], expected[key]) for key in expected)


def test_epoch_meters_are_ignite_metrics_in_the_bar_and_the_log(tmp_path, capsys):
    npy_dir = write_pairs(str(tmp_path), train_batches=2, test_batches=1)
    settings = AttackSettings(**{**TINY, "total_epochs": 1})
    generator = build_generator("resnet_6blocks", ngf=4)
    trainer = create_attack_trainer(generator, build_optimizer(settings, generator.parameters()),
                                    settings, "cpu")
    pairs = PairDataset(npy_dir, "train")
    protected, original = pairs.load_batch(1)
    batches = [pairs.load_batch(0), (protected[:1], original[:1])]  # 2 images, then 1
    step_losses, epoch_meters = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda engine: step_losses.append(engine.state.output["loss"].item()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda engine: epoch_meters.append(dict(engine.state.metrics)))
    trainer.run(batches, max_epochs=2)
    assert [meters["loss"] for meters in epoch_meters] == [
        (step_losses[0] * 2 + step_losses[1]) / 3, (step_losses[2] * 2 + step_losses[3]) / 3]
    assert all(meters["images_per_s"] > 0 for meters in epoch_meters)
    assert sorted(epoch_meters[0]) == sorted(EPOCH_METERS)

    entry = run_attack(settings, npy_dir, str(tmp_path / "run"), show_progress=True)
    bar = capsys.readouterr().err
    assert "attack[reference]" in bar and "loss=" in bar and "images_per_s=" in bar
    log = (tmp_path / "run" / "log_recovery.txt").read_text()
    assert f"L1 loss {entry['train_loss']['0']:.6f}, " in log and " images/s" in log


def test_the_test_split_is_scored_by_an_evaluator_engine_after_the_evaluated_epochs(tmp_path):
    npy_dir = write_pairs(str(tmp_path), train_batches=1, test_batches=2)
    settings = AttackSettings(**{**TINY, "total_epochs": 4, "eval_epochs": (0, 2, 9)})
    entry = run_attack(settings, npy_dir, str(tmp_path), show_progress=False)
    assert sorted(entry["evaluations"]) == ["0", "2", "3"]

    generator = build_generator("resnet_6blocks", ngf=4).train()
    test_pairs = PairDataset(npy_dir, "test")
    evaluator = create_attack_evaluator(generator, test_pairs, settings, "cpu")
    evaluator.run(range(test_pairs.num_batches))
    assert generator.training  # put back in training mode after scoring
    record = evaluator.state.metrics["quality"]
    assert record == evaluate_generator(generator, test_pairs, settings, "cpu")
    with torch.no_grad():
        assert_record_matches(record, npy_dir, generator.eval())


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
    assert sorted(os.listdir(checkpoint_dir)) == ["checkpoint_2.pt", "generator_2.pth"]
    assert latest_checkpoint(checkpoint_dir) == os.path.join(checkpoint_dir, "checkpoint_2.pt")

    again = run_attack(settings, npy_dir, resumed_dir, show_progress=False)
    assert again == entry
    with pytest.raises(RunConflictError, match="different attack .*lr: 0.001 -> 0.002"):
        run_attack(dataclasses.replace(settings, lr=2e-3), npy_dir, resumed_dir,
                   show_progress=False)
    with pytest.raises(RunConflictError, match="trained for 2 epochs, more than --total_epochs "
                                               "/ ATTACK.TOTAL_EPOCHS = 1"):
        run_attack(dataclasses.replace(settings, total_epochs=1), npy_dir, resumed_dir,
                   show_progress=False)


def test_resume_reads_the_checkpoint_on_the_cpu_and_hands_ignite_the_loaded_dict(tmp_path,
                                                                                monkeypatch):
    """ignite's load_objects would torch.load a path without map_location: it gets a dict."""
    npy_dir = write_pairs(str(tmp_path / "data"), train_batches=1, test_batches=1)
    settings = AttackSettings(**{**TINY, "total_epochs": 1, "eval_epochs": ()})
    run_attack(settings, npy_dir, str(tmp_path), show_progress=False)
    real_load, real_load_objects = torch.load, checkpoint_module.Checkpoint.load_objects
    loads, handed = [], []

    def recording_load(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    def recording_load_objects(to_load, checkpoint, **kwargs):
        handed.append(checkpoint)
        return real_load_objects(to_load, checkpoint, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(checkpoint_module.Checkpoint, "load_objects",
                        staticmethod(recording_load_objects))
    entry = run_attack(dataclasses.replace(settings, total_epochs=2), npy_dir, str(tmp_path),
                       show_progress=False)
    assert sorted(entry["train_loss"]) == ["0", "1"]
    assert len(handed) == 1 and isinstance(handed[0], dict)
    assert loads and all(kwargs["map_location"] == "cpu" and kwargs["weights_only"]
                         for kwargs in loads)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    """ignite drops the old checkpoint before writing the new one; ours waits for the new one."""
    write_pairs(str(tmp_path / "run"))
    output = tmp_path / "attack"
    argv = ["--npy_path", str(tmp_path / "run"), "--output", str(output), "--total_epochs", "3",
            *CLI_TINY, "ATTACK.EVAL_EPOCHS", "[0]"]
    real_save = torch.save

    def full_disk_at_epoch_2(obj, handle, *args, **kwargs):
        if "checkpoint_2.pt" in str(getattr(handle, "name", "")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_epoch_2)
    assert recovery_attack.main(argv) == 2
    checkpoint_dir = output / "attack_ckpt" / "reference"
    one_error_line(capsys, f"cannot write {checkpoint_dir / 'checkpoint_2.pt'}: the disk is full")
    assert sorted(os.listdir(checkpoint_dir)) == ["checkpoint_1.pt", "generator_1.pth"]
    assert sorted(json.loads((output / "attack_results.json").read_text())["reference"]
                  ["evaluations"]) == ["0"]
    monkeypatch.setattr(torch, "save", real_save)
    assert recovery_attack.main(argv) == 0
    assert "resuming from" in (output / "log_recovery.txt").read_text()
    assert sorted(os.listdir(checkpoint_dir)) == ["checkpoint_3.pt", "generator_3.pth"]
    assert sorted(json.loads((output / "attack_results.json").read_text())["reference"]
                  ["train_loss"]) == ["0", "1", "2"]


def test_diverged_training_stops_with_one_line_and_keeps_the_last_good_epoch(tmp_path, capsys,
                                                                             monkeypatch):
    write_pairs(str(tmp_path / "run"))
    output = tmp_path / "attack"
    real_build = attack_module.build_optimizer

    def poisoned_after_epoch_0(settings, parameters):
        parameters = list(parameters)
        optimizer = real_build(settings, parameters)
        real_step, steps = optimizer.step, []

        def step(*args, **kwargs):
            real_step(*args, **kwargs)
            steps.append(1)
            if len(steps) == 4:  # first step of epoch 1 (3 saved batches per epoch)
                with torch.no_grad():
                    parameters[0].fill_(float("nan"))

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(attack_module, "build_optimizer", poisoned_after_epoch_0)
    argv = ["--npy_path", str(tmp_path / "run"), "--output", str(output), "--total_epochs", "3",
            *CLI_TINY, "ATTACK.EVAL_EPOCHS", "[0]"]
    assert recovery_attack.main(argv) == 2
    one_error_line(capsys, "[reference] the L1 loss of epoch 1 is nan", "--lr / ATTACK.LR",
                   str(output / "attack_ckpt" / "reference"))
    assert sorted(os.listdir(output / "attack_ckpt" / "reference")) == ["checkpoint_1.pt", "generator_1.pth"]
    results = json.loads((output / "attack_results.json").read_text())
    assert sorted(results["reference"]["evaluations"]) == ["0"]
    assert "Engine run is terminating due to exception" in (
        output / "log_recovery.txt").read_text()


def test_results_markdown_says_what_rows_and_columns_mean():
    values = {"psnr": 31.2449, "ssim": 0.91234, "mse": 0.00081}
    record = {"num_images": 4,
              "reference_normalisation": {"protected": values, "recovered": values},
              "pixel_space": {"protected": values, "recovered": values}}
    table = results_markdown({"strong": {"evaluations": {"1": record}},
                              "reference": {"evaluations": {"0": record, "1": record}}})
    lines = table.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("## ")]
    assert [lines[i] for i in headers] == [
        "## Reference protocol: each batch min-max scaled to [0, 1]",
        "## Pixel space: the run's normalisation undone, pixels clamped to [0, 1]"]
    for start, protocol_note in zip(headers, ("min-max scaled to [0, 1] as a whole",
                                              "the run's normalisation (INPUT.PIXEL_MEAN")):
        body = lines[start + 2:start + 2 + 2 + 6]
        assert body[0] == ("| attacker | epoch | images | image vs original | PSNR (dB) | SSIM "
                           "| MSE |")
        assert body[2:] == [f"| {attacker} | {epoch} | 4 | {kind} | 31.24 | 0.9123 | 0.0008 |"
                            for attacker, epoch in (("reference", 0), ("reference", 1),
                                                    ("strong", 1))
                            for kind in ("protected", "recovered")]
        note = lines[start + 2 + 8 + 1]
        assert note.startswith("Rows: `protected` = the stored protected test image vs its "
                               "original")
        assert "`recovered` = the attacker's generator output from the protected image vs the " \
               "original" in note and protocol_note in note


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def test_help_is_quick_shows_config_defaults_and_imports_no_torch():
    code = ("import sys, recovery_attack\n"
            "try:\n    recovery_attack.main(['--help'])\n"
            "except SystemExit as exit:\n    assert exit.code == 0\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    root = REPO
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    assert out.rstrip().endswith("torch imported: False")
    text = " ".join(out.split())
    for expected in ("default: 100 (ATTACK.TOTAL_EPOCHS)", "default: 0.001 (ATTACK.LR)",
                     "default: unet_128 (ATTACK.GENERATOR)", "default: adam (ATTACK.OPTIMIZER)",
                     "default: reference (ATTACK.MODE)", "default: auto (MODEL.DEVICE)",
                     ("default: 4 (DATALOADER.NUM_WORKERS), always capped at the CPUs this "
                      f"process may use ({available_cpus()} here)"),
                     "--initial_lr INITIAL_LR no effect", "--debug no effect"):
        assert expected in text, expected
    assert "default: None" not in text


def test_cli_flags_override_config_and_reference_order(tmp_path, capsys):
    write_pairs(str(tmp_path / "run"), train_batches=3, test_batches=3)
    output = tmp_path / "attack"
    assert recovery_attack.main([
        "--npy_path", str(tmp_path / "run"), "--output", str(output), "--total_epochs", "1",
        "--lr", "0.002", "--generator", "resnet_6blocks", "--attacker", "strong",
        "--reference_order", "--device", "cpu", "--no_progress", "ATTACK.NGF", "4",
        "ATTACK.LR", "0.5", "ATTACK.NUM_GRIDS", "2", "DATALOADER.NUM_WORKERS", "0"]) == 0
    assert cli_lines(capsys.readouterr().err) == []
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
    assert checkpoint["history"]["identity"]["lr"] == 0.002


def test_cli_both_attackers_write_next_to_img_npy_by_default(tmp_path):
    write_pairs(str(tmp_path), train_batches=1, test_batches=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path / "img_npy"), "--total_epochs", "1",
                                 "--attacker", "both", *CLI_TINY, "ATTACK.NUM_GRIDS", "0"]) == 0
    results = json.loads((tmp_path / "attack_results.json").read_text())
    assert sorted(results) == ["reference", "strong"]
    assert [results[a]["settings"]["mode"] for a in ("reference", "strong")] == [
        "reference", "strong"]
    names = sorted(os.listdir(tmp_path))
    # By default only the strong attacker holds out identities and keeps its best epoch's weights.
    assert names == [".lock", "Generator_weight.pth", "Generator_weight_strong.pth",
                     "Generator_weight_strong_best.pth", "attack_ckpt", "attack_config.yaml",
                     "attack_results.json", "attack_results.md", "img_npy", "log_recovery.txt"]
    assert sorted(os.listdir(tmp_path / "attack_ckpt")) == ["reference", "strong"]
    assert results_markdown(results) == (tmp_path / "attack_results.md").read_text()
    assert (tmp_path / "log_recovery.txt").read_text().count(results_markdown(results)) == 1  # the CLI prints them


def _tensor_files(folder):
    """{(device, inode): [paths]} of every .pt/.pth file under ``folder``: hard links are one file on disk."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith((".pt", ".pth")):
                path = os.path.join(root, name)
                info = os.stat(path)
                files.setdefault((info.st_dev, info.st_ino), []).append(os.path.relpath(path, folder))
    return files


def _tensor_digests(value, found):
    if isinstance(value, torch.Tensor):
        if value.numel() > 1:
            found.add(hashlib.sha256(value.detach().contiguous().cpu().numpy().tobytes()).hexdigest())
    elif isinstance(value, dict):
        for item in value.values():
            _tensor_digests(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensor_digests(item, found)
    return found


class _FirstEpochIsBest(attack_module.BestWeights):
    """The validation picks epoch 0 whatever comes after, so the best and the last weights differ."""

    def offer(self, epoch, loss, module):
        if epoch == 0:
            super().offer(epoch, loss, module)


def test_each_set_of_weights_is_on_disk_once(tmp_path, monkeypatch):
    """Checkpoint = optimizer + trainer state; current and best weights in one file each; the published
    Generator_weight*.pth are hard links to them: no two files hold the same tensor."""
    monkeypatch.setattr(attack_module, "BestWeights", _FirstEpochIsBest)
    write_pairs(str(tmp_path), train_batches=3, test_batches=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path), "--total_epochs", "3", "--attacker", "both",
                                 *CLI_TINY, "ATTACK.NUM_GRIDS", "0"]) == 0
    results = json.loads((tmp_path / "attack_results.json").read_text())
    assert results["strong"]["best"]["epoch"] == 0 and "best" not in results["reference"]
    files = _tensor_files(tmp_path)
    assert sorted(sorted(paths) for paths in files.values()) == [
        ["Generator_weight.pth", "attack_ckpt/reference/generator_3.pth"],
        ["Generator_weight_strong.pth", "attack_ckpt/strong/generator_3.pth"],
        ["Generator_weight_strong_best.pth", "attack_ckpt/strong/best_1.pth"],
        ["attack_ckpt/reference/checkpoint_3.pt"], ["attack_ckpt/strong/checkpoint_3.pt"]]
    owners = {}
    for paths in files.values():
        for digest in _tensor_digests(torch.load(tmp_path / paths[0], weights_only=True), set()):
            owners.setdefault(digest, []).append(paths[0])
    assert {digest: paths for digest, paths in owners.items() if len(paths) > 1} == {}
    checkpoint = torch.load(tmp_path / "attack_ckpt" / "strong" / "checkpoint_3.pt", weights_only=True)
    assert "generator" not in checkpoint and "weights" not in checkpoint["best"]
    assert checkpoint["weight_files"] == {"generator": "generator_3.pth", "best": "best_1.pth"}
    assert len(checkpoint["optimizer"]["state"]) == len(list(build_generator("resnet_6blocks", ngf=4).parameters()))

    # The reference format: plain state dicts that the generator loads as they are.
    for name, mode in (("Generator_weight.pth", "reference"), ("Generator_weight_strong_best.pth", "strong")):
        activation = "tanh" if mode == "reference" else "none"
        generator = build_generator("resnet_6blocks", ngf=4, output_activation=activation)
        generator.load_state_dict(torch.load(tmp_path / name, weights_only=True))


def test_a_run_folder_of_the_previous_layout_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Checkpoints written with the weights inside (before weight files) resume, and end like a straight run."""
    write_pairs(str(tmp_path / "data"), train_batches=2, test_batches=1)
    settings = AttackSettings(**{**TINY, "total_epochs": 3, "eval_epochs": (), "mode": "strong", "val_fraction": 0.4})
    run_attack(settings, str(tmp_path / "data" / "img_npy"), str(tmp_path / "straight"), show_progress=False)
    monkeypatch.setattr(attack_module, "WeightFileCheckpointSaver", AtomicCheckpointSaver)
    old = str(tmp_path / "old")
    run_attack(dataclasses.replace(settings, total_epochs=2), str(tmp_path / "data" / "img_npy"), old,
               show_progress=False)
    saved = torch.load(os.path.join(old, "attack_ckpt", "strong", "checkpoint_2.pt"), weights_only=True)
    assert "generator" in saved and "weights" in saved["best"]  # the previous layout
    monkeypatch.undo()
    entry = run_attack(settings, str(tmp_path / "data" / "img_npy"), old, show_progress=False)
    assert sorted(os.listdir(os.path.join(old, "attack_ckpt", "strong"))) == sorted(
        {"checkpoint_3.pt", "generator_3.pth", f"best_{entry['best']['epoch'] + 1}.pth"})
    for name in ("Generator_weight_strong.pth", "Generator_weight_strong_best.pth"):
        straight = torch.load(tmp_path / "straight" / name, weights_only=True)
        resumed = torch.load(os.path.join(old, name), weights_only=True)
        assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight), name


def test_cli_caps_loader_workers_so_torch_does_not_warn(tmp_path, recwarn):
    write_pairs(str(tmp_path), train_batches=2, test_batches=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path), "--total_epochs", "1",
                                 "--num_workers", "64", *CLI_TINY]) == 0
    assert [str(w.message) for w in recwarn if "worker" in str(w.message)] == []
    log = (tmp_path / "log_recovery.txt").read_text()
    assert f"1 epochs on cpu, {min(64, available_cpus())} loader workers" in log


def test_cli_initial_lr_and_debug_are_accepted_with_a_note_and_change_nothing(tmp_path, capsys):
    write_pairs(str(tmp_path), train_batches=1, test_batches=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path), "--total_epochs", "1",
                                 "--initial_lr", "0.1", "--debug", *CLI_TINY]) == 0
    assert cli_lines(capsys.readouterr().err) == [
        "recovery_attack.py: note: " + recovery_attack.NO_EFFECT_NOTES["initial_lr"],
        "recovery_attack.py: note: " + recovery_attack.NO_EFFECT_NOTES["debug"]]
    assert load_config(str(tmp_path / "attack_config.yaml")).ATTACK.LR == 1e-3
    checkpoint = torch.load(tmp_path / "attack_ckpt" / "reference" / "checkpoint_1.pt",
                            weights_only=True)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == 1e-3


@pytest.mark.parametrize("gpus, device, indices", [
    ("0", "cuda:0", [0]), ("1,2", "cuda:1", [1, 2]), ("[0, 1]", "cuda:0", [0, 1])])
def test_gpus_selects_the_first_listed_gpu(gpus, device, indices):
    args = recovery_attack.build_parser().parse_args(["--npy_path", "x", "--gpus", gpus])
    assert recovery_attack.gpu_device(gpus) == (device, indices)
    assert recovery_attack.extra_values(args) == {"MODEL.DEVICE": device}
    expected_notes = [] if len(indices) == 1 else [
        f"--gpus {gpus}: the attack trains on one device, {device}"]
    assert recovery_attack.notes(args) == expected_notes


def test_cli_gpus_without_cuda_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    write_pairs(str(tmp_path / "run"), train_batches=1, test_batches=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path / "run"), "--gpus", "0",
                                 "--output", str(tmp_path / "attack")]) == 2
    one_error_line(capsys, "--gpus: CUDA is not available on this machine, so there is no "
                           "cuda:0; leave --gpus out (or pass --device cpu)")
    assert not (tmp_path / "attack").exists()


def test_cli_gpus_on_a_gpu_machine(tmp_path, capsys):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    write_pairs(str(tmp_path / "run"), train_batches=1, test_batches=1)
    count = torch.cuda.device_count()
    assert recovery_attack.main(["--npy_path", str(tmp_path / "run"), "--gpus", str(count)]) == 2
    one_error_line(capsys, f"--gpus: there is no cuda:{count} on this machine")
    argv = ["--npy_path", str(tmp_path / "run"), "--total_epochs", "1", "--gpus", "0",
            *[a for a in CLI_TINY if a not in ("--device", "cpu")]]
    assert recovery_attack.main(argv) == 0
    assert "1 epochs on cuda:0" in (tmp_path / "run" / "log_recovery.txt").read_text()


@pytest.mark.parametrize("arguments, message", [
    ([], "the following arguments are required: --npy_path"),
    (["--npy_path", "{missing}"], ("--npy_path: no saved image pairs found: neither "
                                   "{missing}/img_npy nor {missing}")),
    (["--npy_path", "{run}", "ATTACK.NOPE", "1"], "unknown config key 'ATTACK.NOPE'"),
    (["--npy_path", "{run}", "ATTACK.MODE", "weak"], "ATTACK.MODE must be one of"),
    (["--npy_path", "{run}", "--generator", "unet_64"],
     "argument --generator: invalid choice: 'unet_64'"),
    (["--npy_path", "{run}", "--total_epochs", "x"],
     "argument --total_epochs: invalid int value: 'x'"),
    (["--npy_path", "{run}", "--total_epochs", "0"],
     "ATTACK.TOTAL_EPOCHS must be a positive integer, got 0"),
    (["--npy_path", "{run}", "--device", "tpu"], "MODEL.DEVICE: expected 'auto', 'cpu'"),
    (["--npy_path", "{run}", "--gpus", "first"], "--gpus: expected GPU indices such as 0 or 0,1"),
    (["--npy_path", "{run}", "--gpus", "0", "--device", "cpu"],
     "--gpus and --device both choose the device"),
    (["--npy_path", "{run}", "--num_workers", "-1"],
     "DATALOADER.NUM_WORKERS must be an integer >= 0, got -1"),
    (["--npy_path", "{run}", "ATTACK.TOTAL_EPOCHS"], "KEY VALUE pairs"),
    (["--npy_path", "{run}", "ATTACK.NGF", "4", "--total_epochs", "2"],
     "--total_epochs comes after the KEY VALUE overrides, where it would be read as a config key"),
    (["--npy_path", "{run}", "--config_file", "{missing}.yml"], "config file not found"),
])
def test_cli_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys, arguments, message):
    write_pairs(str(tmp_path / "run"), train_batches=1, test_batches=1)
    before = folder_digests(tmp_path)
    paths = {"missing": str(tmp_path / "missing"), "run": str(tmp_path / "run")}
    argv = [argument.format(**paths) for argument in arguments]
    assert recovery_attack.main(argv) == 2
    one_error_line(capsys, message.format(**paths))
    assert folder_digests(tmp_path) == before


def test_cli_refuses_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    write_pairs(str(tmp_path), train_batches=1, test_batches=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path), "--device", "cuda"]) == 2
    one_error_line(capsys, "MODEL.DEVICE is 'cuda' but CUDA is not available")


def _resave(path, transform):
    """Rewrite one saved file, as a damaged or foreign writer would leave it."""
    np.save(path, transform(np.load(path)))


def _poisoned(value, image=1):
    def poison(array):
        array[image, 2, 5, 3] = value
        return array
    return poison


@pytest.mark.parametrize("split, index, role, value", [("train", 1, "protected", np.nan),
                                                       ("train", 2, "clean", np.inf),
                                                       ("test", 1, "protected", -np.inf)])
def test_cli_non_finite_pairs_are_refused_before_anything_is_written(tmp_path, capsys, split,
                                                                     index, role, value):
    npy_dir = write_pairs(str(tmp_path))
    path = getattr(batch_files(npy_dir, split, index), role)
    _resave(path, _poisoned(value))
    before = folder_digests(tmp_path)
    assert recovery_attack.main(["--npy_path", str(tmp_path), "--total_epochs", "1",
                                 *CLI_TINY]) == 2
    one_error_line(capsys, f"{path} holds NaN or infinite values (first in image 1 of the batch)")
    assert folder_digests(tmp_path) == before  # no log file, no config, no lock file


@pytest.mark.parametrize("files, transform, message", [
    ([("train", 2, "clean"), ("train", 2, "protected")], lambda a: a[:, :, :24],
     ("{npy}/clean-train-2-images.npy and {npy}/encry-train-2-images.npy hold images of shape "
      "(3, 24, 16); expected C x H x W = (3, 32, 16) (the shape of {npy}/clean-train-0-images.npy)")),
    ([("train", 1, "clean"), ("train", 1, "protected")], lambda a: a[:, :1],
     "hold images of shape (1, 32, 16); expected C x H x W = (3, 32, 16)"),
    ([("test", 0, "clean"), ("test", 0, "protected")], lambda a: a[:, :, :, :12],
     ("{npy}/clean-test-0-images.npy and {npy}/encry-test-0-images.npy hold images of shape "
      "(3, 32, 12); expected C x H x W = (3, 32, 16) (the shape of the train split)")),
    ([("train", 0, "protected")], lambda a: a[:, :, :, :12],
     ("shape mismatch in batch 0: {npy}/clean-train-0-images.npy is (2, 3, 32, 16) but "
      "{npy}/encry-train-0-images.npy is (2, 3, 32, 12)")),
    ([("test", 1, "protected")], lambda a: a[0],
     ("{npy}/encry-test-1-images.npy: expected a B x C x H x W array of images, got shape "
      "(3, 32, 16)")),
])
def test_cli_reshaped_batches_are_one_line(tmp_path, capsys, files, transform, message):
    npy_dir = write_pairs(str(tmp_path))
    for split, index, role in files:
        _resave(getattr(batch_files(npy_dir, split, index), role), transform)
    before = folder_digests(tmp_path)
    assert recovery_attack.main(["--npy_path", str(tmp_path), *CLI_TINY]) == 2
    one_error_line(capsys, message.format(npy=npy_dir))
    assert folder_digests(tmp_path) == before


def test_cli_wrong_channel_count_and_tiny_images_are_one_line(tmp_path, capsys):
    gray = write_pairs(str(tmp_path / "gray"), channels=1)
    assert recovery_attack.main(["--npy_path", str(tmp_path / "gray"), *CLI_TINY]) == 2
    one_error_line(capsys, f"{gray}/clean-train-0-images.npy holds images with 1 channels; "
                           "expected 3 (one per INPUT.PIXEL_MEAN value)")
    tiny = write_pairs(str(tmp_path / "tiny"), height=10, width=8)
    assert recovery_attack.main(["--npy_path", str(tmp_path / "tiny"), *CLI_TINY]) == 2
    one_error_line(capsys, f"{tiny}/clean-train-0-images.npy holds 10 x 8 images; expected at "
                           "least 11 x 11 pixels (SSIM's window)")


def test_cli_broken_pair_set_is_one_line(tmp_path, capsys):
    npy_dir = write_pairs(str(tmp_path), train_batches=2, test_batches=1)
    files = batch_files(npy_dir, "train", 1)
    os.remove(files.clean)
    assert recovery_attack.main(["--npy_path", str(tmp_path)]) == 2
    one_error_line(capsys, f"missing partner: {files.protected} has no {files.clean}")


@pytest.fixture
def finished_attack(tmp_path):
    """A finished 2-epoch attack in <tmp>/attack and the digests of its files."""
    write_pairs(str(tmp_path / "run"))
    output = tmp_path / "attack"

    def argv(*flags):
        return ["--npy_path", str(tmp_path / "run"), "--output", str(output), *flags, *CLI_TINY]

    assert recovery_attack.main(argv("--total_epochs", "2")) == 0
    return argv, output, folder_digests(output)


def test_cli_fewer_epochs_than_the_checkpoint_is_one_line(finished_attack, capsys):
    argv, output, before = finished_attack
    capsys.readouterr()
    assert recovery_attack.main(argv("--total_epochs", "1")) == 2
    one_error_line(capsys, f"{output}/attack_ckpt/reference/checkpoint_2.pt holds a generator "
                           "trained for 2 epochs, more than --total_epochs / ATTACK.TOTAL_EPOCHS "
                           "= 1; pass --total_epochs 2 (or more) to finish from it, or another "
                           "--output to train afresh")
    assert folder_digests(output) == before
    # The same command as before finishes at once with the same results.
    assert recovery_attack.main(argv("--total_epochs", "2")) == 0
    after = folder_digests(output)
    for name in ("attack_results.json", "attack_results.md", "Generator_weight.pth",
                 "attack_ckpt/reference/checkpoint_2.pt"):
        assert after[name] == before[name], name


def test_cli_other_settings_over_a_checkpoint_is_one_line(finished_attack, capsys):
    argv, output, before = finished_attack
    capsys.readouterr()
    assert recovery_attack.main(argv("--total_epochs", "2", "--lr", "0.01")) == 2
    one_error_line(capsys, f"{output}/attack_ckpt/reference/checkpoint_2.pt was written by a "
                           "different attack (lr: 0.001 -> 0.01)")
    assert folder_digests(output) == before


def test_cli_unreadable_checkpoint_is_one_line(finished_attack, capsys):
    argv, output, _ = finished_attack
    checkpoint = output / "attack_ckpt" / "reference" / "checkpoint_2.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = folder_digests(output)
    capsys.readouterr()
    assert recovery_attack.main(argv("--total_epochs", "3")) == 2
    one_error_line(capsys, f"cannot read the attack checkpoint {checkpoint} (",
                   "delete it to train afresh, or pass another --output")
    assert folder_digests(output) == before


def test_cli_refuses_a_second_attack_on_a_locked_folder(finished_attack, capsys):
    argv, output, before = finished_attack
    capsys.readouterr()
    with FolderLock(str(output), "recovery_attack.py"):
        assert recovery_attack.main(argv("--total_epochs", "2")) == 2
        one_error_line(capsys, f"output folder {output} is being written by process "
                               f"{os.getpid()} (recovery_attack.py)")
    assert {name: value for name, value in folder_digests(output).items()
            if name != ".lock"} == {name: value for name, value in before.items()
                                    if name != ".lock"}


def test_cli_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    write_pairs(str(tmp_path / "run"), train_batches=1, test_batches=1)
    (tmp_path / "taken").write_text("a file, not a folder")
    assert recovery_attack.main(["--npy_path", str(tmp_path / "run"), "--output",
                                 str(tmp_path / "taken" / "attack"), *CLI_TINY]) == 2
    one_error_line(capsys, f"cannot write {tmp_path / 'taken' / 'attack'}: a part of the path is "
                           "a file, not a folder")


def test_cli_weights_that_cannot_be_written_are_one_line(tmp_path, capsys):
    write_pairs(str(tmp_path / "run"), train_batches=1, test_batches=1)
    output = tmp_path / "attack"
    (output / "Generator_weight.pth").mkdir(parents=True)  # a folder where the file goes
    assert recovery_attack.main(["--npy_path", str(tmp_path / "run"), "--output", str(output),
                                 "--total_epochs", "1", *CLI_TINY]) == 2
    one_error_line(capsys, f"cannot write {output / 'Generator_weight.pth'}: the path is a folder")
    assert [name for name in os.listdir(output) if name.endswith(".tmp")] == []
    assert "L1 loss" in (output / "log_recovery.txt").read_text()
