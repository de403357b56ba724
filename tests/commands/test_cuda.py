"""The CUDA code paths: device choice, the protection loop and pipeline, autocast, channels_last, pinned loading,
several GPUs (nccl), mixed-precision training and the recovery attack.

Every test needs a CUDA GPU and is skipped without one; ``python -m pytest -m cuda tests/commands/test_cuda.py`` runs them
(benchmarks/gpu_check.sh does, on a lent GPU). What "the same numbers" means on a GPU:
  * per-image mode on CUDA equals the CPU run within float tolerance, in strict fp32 (TF32 off): the two devices
    round differently, so bit equality is not expected;
  * reference mode is identical run to run on CUDA (protect_run turns cuDNN autotuning off and deterministic
    kernels on), checked with two fresh processes, so nothing cached in one process can hide a difference.
"""
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from helpers import REPO, train_cfg

from configs import get_default_config
from data import img_npy
from data.synthetic import make_market1501

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HEIGHT, WIDTH = 64, 32
# The loop amplifies rounding differences step by step; a few steps keep CPU and CUDA within this.
DEVICE_ATOL = 2e-3


@contextmanager
def cuda_math(tf32, deterministic=True):
    """Set the global CUDA math flags for the block (TF32 in cuBLAS and cuDNN, cuDNN determinism), then restore."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_market1501(root, num_ids=8, num_cams=2, images_per_id_cam=2, height=HEIGHT, width=WIDTH)
    return str(root)


def agw_model(device):
    """The default authorization model (AGW resnet50_nl), random weights from a fixed seed, eval mode."""
    from modeling import build_model

    torch.manual_seed(0)
    return build_model(get_default_config()).to(device).eval()


def protect_argv(root, output, device, *extra):
    return ["--random_init", "--root", root, "--output", str(output), "--device", device, "--no_progress",
            "--batch_size", "4", "--max_iter", "3", "--save_image_npy", *extra,
            "INPUT.IMG_SIZE", f"[{HEIGHT}, {WIDTH}]", "DATALOADER.NUM_WORKERS", "0", "PIXELFADE.NUM_GRIDS", "1"]


def protected_arrays(output):
    """{(split, batch index): (original, protected)} of a run folder's img_npy pairs."""
    npy_dir = img_npy.npy_dir_of(str(output))
    return {(split, pair.index): (np.load(pair.clean), np.load(pair.protected))
            for split in ("train", "test") for pair in img_npy.find_pairs(npy_dir, split)}


def per_image_batch(device, count=3, max_iter=4):
    from engine.methods.pixelfade import PixelFadeParams, per_image_noise_and_masks

    params = PixelFadeParams(max_iter=max_iter, beta=0.005, beta_temp=0.005, epsilon=0.1)
    images = torch.randn(count, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    pairs = [per_image_noise_and_masks(0, index, (3, HEIGHT, WIDTH), params.fade_num_iter) for index in range(count)]
    noise = torch.stack([noise for noise, _ in pairs])
    masks = torch.stack([masks for _, masks in pairs])
    return images.to(device), masks.to(device), noise.to(device), params


def test_auto_device_is_cuda_and_a_missing_index_is_refused():
    from modeling.build import resolve_device
    from utils.errors import ConfigError

    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"MODEL.DEVICE is 'cuda:{count}' but this machine has {count} CUDA"):
        resolve_device(f"cuda:{count}")


def test_per_image_loop_on_cuda_matches_cpu():
    from engine.methods.pixelfade import protect_batch

    images, masks, noise, params = per_image_batch("cpu")
    cpu = protect_batch(agw_model("cpu"), images, masks, noise, params, per_image=True)
    with cuda_math(tf32=False):
        gpu = protect_batch(agw_model("cuda"), images.cuda(), masks.cuda(), noise.cuda(), params, per_image=True)
    assert gpu.protected.device.type == "cuda" and gpu.protected.dtype == torch.float32
    difference = (gpu.protected.cpu() - cpu.protected).abs().max().item()
    assert difference < DEVICE_ATOL, difference
    assert torch.equal(gpu.steps_constraint_held.cpu(), cpu.steps_constraint_held)
    torch.testing.assert_close(gpu.features.cpu(), cpu.features, rtol=1e-3, atol=1e-3)
    # The loop really moved the images: the tolerance is small against the change itself.
    assert (cpu.protected - images).abs().max().item() > 50 * DEVICE_ATOL


def test_per_image_pipeline_on_cuda_matches_cpu(data_root, tmp_path):
    import protect_image

    assert protect_image.main(protect_argv(data_root, tmp_path / "cpu", "cpu", "--mode", "per_image")) == 0
    with cuda_math(tf32=False):
        assert protect_image.main(protect_argv(data_root, tmp_path / "cuda", "cuda", "--mode", "per_image")) == 0
    cpu, gpu = protected_arrays(tmp_path / "cpu"), protected_arrays(tmp_path / "cuda")
    assert sorted(cpu) == sorted(gpu) and any(split == "train" for split, _ in cpu)
    for key in cpu:
        assert np.array_equal(cpu[key][0], gpu[key][0]), f"{key}: the loaded originals differ"
        difference = float(np.abs(cpu[key][1] - gpu[key][1]).max())
        assert difference < DEVICE_ATOL, (key, difference)
    results = json.loads((tmp_path / "cuda" / "results.json").read_text())
    assert results["run"]["device"].startswith("cuda")
    assert results["reid"]["encry2clean"]["mAP"] == pytest.approx(
        json.loads((tmp_path / "cpu" / "results.json").read_text())["reid"]["encry2clean"]["mAP"], abs=0.02)


def test_reference_mode_is_identical_run_to_run_on_cuda(data_root, tmp_path):
    """Two fresh processes at the CLI defaults (reference mode, fp32, torch's TF32 choice): the same bits."""
    for name in ("first", "second"):
        done = subprocess.run([sys.executable, os.path.join(REPO, "protect_image.py"),
                               *protect_argv(data_root, tmp_path / name, "cuda")],
                              cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    first, second = protected_arrays(tmp_path / "first"), protected_arrays(tmp_path / "second")
    assert sorted(first) == sorted(second)
    for key in first:
        assert np.array_equal(first[key][1], second[key][1]), key
    reid = [json.loads((tmp_path / name / "results.json").read_text())["reid"] for name in ("first", "second")]
    assert reid[0] == reid[1]


@pytest.mark.parametrize("precision, channels_last", [("bf16", False), ("fp16", False), ("bf16", True),
                                                      ("none", True)])
def test_autocast_and_channels_last_on_cuda(precision, channels_last):
    from engine.methods.pixelfade import PixelFadeParams, build_fade_masks, precision_dtype, protect_batch

    params = PixelFadeParams(max_iter=3, beta=0.005, beta_temp=0.005, epsilon=0.1)
    images = torch.randn(4, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2)).cuda()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3)).cuda()
    masks = build_fade_masks(images.numel(), params.fade_num_iter, torch.Generator().manual_seed(4)).cuda()
    with cuda_math(tf32=False):
        strict = protect_batch(agw_model("cuda"), images, masks, noise, params)
        model = agw_model("cuda")
        flags = [param.requires_grad for param in model.parameters()]
        fast = protect_batch(model, images, masks, noise, params, autocast_dtype=precision_dtype(precision),
                             channels_last=channels_last)
    assert fast.protected.dtype == torch.float32 and fast.protected.is_contiguous()
    assert fast.features.dtype == torch.float32 and fast.features.shape == strict.features.shape
    assert all(torch.isfinite(t).all() for t in (fast.protected, fast.features, fast.final_loss))
    assert [param.requires_grad for param in model.parameters()] == flags, "the parameters' flags changed"
    # 3 steps of at most 0.005 x |normalised gradient| each: the images stay near each other.
    assert (fast.protected - strict.protected).abs().mean().item() < 0.05
    if precision != "none":
        assert not torch.equal(fast.protected, strict.protected), "autocast changed nothing: did it run?"


def test_loaders_pin_memory_for_cuda(data_root):
    from data.datasets import build_dataset
    from data.loaders import build_loader, eval_records
    from data.transforms import build_eval_transform

    cfg = get_default_config()
    cfg.INPUT.IMG_SIZE = [HEIGHT, WIDTH]
    dataset = build_dataset("market1501", data_root)
    records, _ = eval_records(dataset)
    batch = next(iter(build_loader(records, build_eval_transform(cfg), 4)))
    assert batch["image"].is_pinned()
    assert batch["image"].to("cuda", non_blocking=True).device.type == "cuda"


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_epoch_with_amp_on_cuda(data_root, tmp_path, amp):
    from model_factories import register_tiny_backbone

    from engine.train import reid as reid_trainer

    name = register_tiny_backbone("tiny_cuda_test_cnn")
    cfg = train_cfg(data_root, tmp_path / "train", name, epochs=1, device="cuda", IMS_PER_BATCH=8, AMP=amp)
    results = reid_trainer.run(cfg, reid_trainer.TrainOptions(show_progress=False))
    assert np.isfinite(results["epochs"][-1]["loss"]) and 0.0 <= results["final"]["mAP"] <= 1.0
    weights = torch.load(os.path.join(cfg.OUTPUT_DIR, f"{name}_model_1.pth"), weights_only=True)
    assert all(tensor.device.type == "cpu" for tensor in weights.values()), "saved weights must load without a GPU"
    checkpoint = torch.load(os.path.join(cfg.OUTPUT_DIR, "training_checkpoint_1.pt"), map_location="cpu",
                            weights_only=True)
    assert ("scaler" in checkpoint) == (amp == "fp16")


def test_recovery_attack_epoch_on_cuda(data_root, tmp_path):
    import protect_image
    import recovery_attack

    assert protect_image.main(protect_argv(data_root, tmp_path / "run", "cuda")) == 0
    assert recovery_attack.main(["--npy_path", str(tmp_path / "run"), "--total_epochs", "1", "--device", "cuda",
                                 "--no_progress", "--attacker", "both", "--generator", "resnet_6blocks",
                                 "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "1", "DATALOADER.NUM_WORKERS", "0"]) == 0
    results = json.loads((tmp_path / "run" / "attack_results.json").read_text())
    assert set(results) >= {"reference", "strong"}
    assert "1 epochs on cuda" in (tmp_path / "run" / "log_recovery.txt").read_text()
    weights = torch.load(tmp_path / "run" / "Generator_weight.pth", weights_only=True)
    assert all(tensor.device.type == "cpu" for tensor in weights.values())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_give_the_per_image_results_of_one(data_root, tmp_path):
    """nccl, one process per GPU: shards are smaller batches, so equal within tolerance, not bit for bit."""
    env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}  # strict fp32 in the spawned processes too
    for name, extra in (("one", []), ("two", ["--nproc_per_node", "2", "--backend", "nccl"])):
        done = subprocess.run([sys.executable, os.path.join(REPO, "protect_image.py"),
                               *protect_argv(data_root, tmp_path / name, "cuda", "--mode", "per_image", *extra)],
                              cwd=REPO, capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = protected_arrays(tmp_path / "one"), protected_arrays(tmp_path / "two")
    assert sorted(one) == sorted(two)
    for key in one:
        assert float(np.abs(one[key][1] - two[key][1]).max()) < DEVICE_ATOL, key
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["run"]["processes"] == 2
