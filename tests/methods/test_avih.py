"""AVIH: its terms, step decay and loop against the release's code written out, the method, the key model."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import IMAGENET_MEAN, IMAGENET_STD, protect_argv
from torch import nn

import protect_image
from configs import load_config
from data.img_npy import npy_dir_of, write_batch
from data.synthetic import make_market1501
from data.transforms import denormalize, normalize
from engine.methods import build_method
from engine.methods.avih import AvihParams, avih_protect, decay_step_sizes, load_key_model, local_variance_loss
from engine.protect.run_store import RunStore
from engine.protect.settings import validate_protect_config
from modeling.generators import build_generator
from tools import train_key_model
from utils.errors import CheckpointError, ConfigError

SHAPE = (3, 32, 16)
MEAN, STD = tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()


def key_model(ngf=2):
    torch.manual_seed(1)
    return build_generator("resnet_9blocks", ngf=ngf, output_activation="none").eval()


def originals(batch=2, seed=3):
    pixels = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(seed))
    return normalize(pixels, MEAN, STD)


def release_loss_vc(x):
    """suzhigangssz/AVIH utils.loss_vc, written out."""
    kernel = torch.ones(1, 1, 4, 4)
    total = 0
    for channel in range(3):
        responses = F.conv2d(x[:, channel].unsqueeze(1), kernel, stride=1).reshape(-1)
        total = total + torch.var(responses, unbiased=True)
    return total


def release_attack(model, key, data, start, steps):
    """AVIH.attack of the release for one image (f and G reading the normalised x_adv)."""
    for param in list(model.parameters()) + list(key.parameters()):
        param.requires_grad_(False)
    feature = model(normalize(data, MEAN, STD))
    adv, sum_grad, alpha, losses, num_lo = start.clone(), torch.zeros_like(data), 0.01, [], 0
    for i in range(steps):
        adv = adv.detach().clone().requires_grad_(True)
        adv_ga = torch.clamp(key(normalize(adv, MEAN, STD)), 0, 1)
        adv_feature = model(normalize(adv, MEAN, STD))
        loss = torch.mean((adv_feature - feature) ** 2) + 0.2 * torch.mean((adv_ga - data) ** 2)
        loss = loss + 0.001 * release_loss_vc(adv)
        loss.backward()
        grad = adv.grad.data.clone()
        grad = grad / grad.abs().mean(dim=[1, 2, 3], keepdim=True)
        sum_grad = 0.3 * sum_grad + grad
        adv = torch.clamp(adv.data.clone() - sum_grad * alpha, 0, 1)
        losses.append(float(loss.detach()))
        if i > 1 and losses[i] > losses[i - 1]:
            num_lo += 1
            if num_lo == 16:
                alpha, num_lo = alpha * 0.85, 0
    return adv


def test_local_variance_is_the_releases_loss_per_image():
    pixels = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    ours = local_variance_loss(pixels)
    assert ours.shape == (2,)
    for index in range(2):
        torch.testing.assert_close(ours[index], release_loss_vc(pixels[index : index + 1]), rtol=1e-5, atol=0)


def test_step_decay_multiplies_alpha_after_every_16th_rise_from_step_two():
    losses = [5.0, 6.0] + [float(v) for v in range(3, 40)]  # rises at every step
    alpha, increases, previous = torch.tensor([0.01]), torch.zeros(1, dtype=torch.int64), None
    expected_alpha, count = 0.01, 0
    for step, value in enumerate(losses):
        loss = torch.tensor([value])
        alpha, increases = decay_step_sizes(alpha, increases, loss, previous, step)
        previous = loss
        if step > 1 and value > losses[step - 1]:
            count += 1
            if count == 16:
                expected_alpha, count = expected_alpha * 0.85, 0
        assert float(alpha) == pytest.approx(expected_alpha) and int(increases) == count
    assert expected_alpha == pytest.approx(0.01 * 0.85**2)  # 37 rises counted: two decays


def test_loop_equals_the_release_for_one_image_and_each_image_is_independent_of_its_batch():
    model, key = tiny_model(), key_model()
    data = originals(batch=2)
    start = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    params = AvihParams(steps=40)
    protected, features = avih_protect(model, key, data, start, params, MEAN, STD)
    assert all(p.requires_grad for p in model.parameters())  # frozen for the call only
    pixels = denormalize(data, MEAN, STD).clamp(0, 1)
    for index in range(2):
        alone, _ = avih_protect(model, key, data[index : index + 1], start[index : index + 1], params, MEAN, STD)
        torch.testing.assert_close(alone[0], protected[index], rtol=0, atol=1e-5)
        release = release_attack(model, key, pixels[index : index + 1], start[index : index + 1], 40)
        torch.testing.assert_close(denormalize(protected[index : index + 1], MEAN, STD), release, rtol=0, atol=1e-4)
    torch.testing.assert_close(features, model(protected), rtol=0, atol=1e-6)
    result = denormalize(protected, MEAN, STD)
    assert float(result.min()) >= -1e-6 and float(result.max()) <= 1 + 1e-6


def save_key_model(path, ngf=2):
    torch.save(key_model(ngf).state_dict(), path)
    return str(path)


def avih_config(key_path, *opts):
    return load_config("", ["INPUT.IMG_SIZE", "[32, 16]", "PIXELFADE.METHOD", "'avih'", "AVIH.KEY_MODEL",
                            repr(key_path), "AVIH.KEY_NGF", "2", "AVIH.STEPS", "3", "OUTPUT_DIR", "unused", *opts])


def test_method_draws_its_start_from_the_run_stream_and_reports_its_cost(tmp_path):
    cfg = avih_config(save_key_model(tmp_path / "key.pth"), "PIXELFADE.SEED", "7")
    validate_protect_config(cfg)
    model = tiny_model()
    method = build_method(cfg, model, "cpu")
    data = originals()
    counts = {"forward": 0, "backward": 0, "key_model_forward": 0, "key_model_backward": 0}
    for module, prefix in ((model, ""), (method.key_model, "key_model_")):
        module.register_forward_hook(lambda *_, k=prefix + "forward": counts.__setitem__(k, counts[k] + 1))
        module.register_full_backward_hook(lambda *_, k=prefix + "backward": counts.__setitem__(k, counts[k] + 1))
    out = method(data, torch.arange(2))
    assert method.passes_per_image() == counts
    start = torch.randn(data.shape, generator=torch.Generator().manual_seed(7))
    expected, _ = avih_protect(model, method.key_model, data, start, AvihParams(steps=3), MEAN, STD)
    assert torch.equal(out.protected, expected) and out.noise is None
    method.set_rng_state(method.initial_state)
    assert torch.equal(method(data, torch.arange(2)).protected, expected)
    assert method.passes_per_image() == {"forward": 5, "backward": 3, "key_model_forward": 3, "key_model_backward": 3}
    from_original = build_method(avih_config(cfg.AVIH.KEY_MODEL, "AVIH.INIT", "'original'"), model, "cpu")
    expected, _ = avih_protect(model, method.key_model, data, None, AvihParams(steps=3), MEAN, STD)
    assert torch.equal(from_original(data, torch.arange(2)).protected, expected)


def test_key_model_and_settings_errors_name_the_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"AVIH.KEY_MODEL '.*missing.pth': file not found"):
        validate_protect_config(avih_config(str(tmp_path / "missing.pth")))
    path = save_key_model(tmp_path / "key.pth", ngf=4)
    with pytest.raises(CheckpointError, match=r"key.pth: weights do not fit a resnet_9blocks key model with AVIH.KEY_NGF 2"):
        load_key_model(path, 2, "cpu")
    with pytest.raises(ConfigError, match=r"AVIH.INIT must be one of random, original, got 'zeros'"):
        validate_protect_config(avih_config(path, "AVIH.INIT", "'zeros'"))
    with pytest.raises(ConfigError, match=r"AVIH.STEPS must be an integer >= 1, got 0"):
        validate_protect_config(avih_config(path, "AVIH.STEPS", "0"))


def test_train_key_model_trains_the_strong_resnet_9blocks_that_avih_loads(tmp_path, capsys):
    npy_dir = npy_dir_of(str(tmp_path))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        clean = rng.standard_normal((2, *SHAPE)).astype(np.float32)
        write_batch(npy_dir, split, 0, clean, clean + rng.standard_normal(clean.shape).astype(np.float32),
                    np.arange(2), np.ones(2))
    argv = ["--npy_path", npy_dir, "--total_epochs", "1", "--device", "cpu", "--no_progress", "ATTACK.NGF", "2",
            "ATTACK.NUM_GRIDS", "0", "DATALOADER.NUM_WORKERS", "0"]
    assert train_key_model.main(argv) == 0
    weights = tmp_path / "Generator_weight_strong.pth"
    key = load_key_model(str(weights), 2, "cpu")
    assert isinstance(key.model[-1], nn.Conv2d)  # no output activation: the strong attacker's output
    assert train_key_model.main(["--generator", "unet_128", *argv]) == 2
    assert "--generator is fixed here" in capsys.readouterr().err


def test_protect_image_runs_avih_and_resumes_an_interrupted_run_to_the_same_images(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_market1501(str(root), num_ids=3, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)
    key = save_key_model(tmp_path / "key.pth")
    opts = ["PIXELFADE.METHOD", "avih", "AVIH.KEY_MODEL", key, "AVIH.KEY_NGF", "2", "AVIH.STEPS", "2",
            "PIXELFADE.NUM_GRIDS", "0"]
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    assert protect_image.main(protect_argv(root, full, *opts)) == 0
    real_save = RunStore.save_record

    def crash(self, split, batch_index, record):
        if (split, batch_index) == ("test", 1):
            raise KeyboardInterrupt("simulated interruption")
        real_save(self, split, batch_index, record)

    monkeypatch.setattr(RunStore, "save_record", crash)
    assert protect_image.main(protect_argv(root, interrupted, *opts)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(RunStore, "save_record", real_save)
    assert protect_image.main(protect_argv(root, interrupted, *opts)) == 0
    for name in os.listdir(full / "records"):
        expected = torch.load(full / "records" / name, weights_only=False)
        resumed = torch.load(interrupted / "records" / name, weights_only=False)
        for key in ("rng_state", "protected_features"):
            assert torch.equal(resumed[key], expected[key]), (name, key)
    done = json.loads((full / "results.json").read_text())
    assert done["run"]["method"] == "avih"
    assert json.loads((interrupted / "results.json").read_text())["reid"] == done["reid"]
