"""Small helpers shared by the test modules (importable as ``helpers``: tests/ is on pythonpath)."""
import os
import subprocess
import sys

from PIL import Image

from configs import get_default_config

# The repository root (where run.sh and the commands are) and the tests' stored fixtures.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
# INPUT.PIXEL_MEAN and INPUT.PIXEL_STD of the defaults: the ImageNet statistics.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def model_cfg(**model):
    """The default config with ``cfg.MODEL.<KEY> = value`` for each keyword (e.g. NAME, INIT_SEED)."""
    cfg = get_default_config()
    for key, value in model.items():
        setattr(cfg.MODEL, key, value)
    return cfg


def train_cfg(root, output, model_name, epochs=3, device="cpu", **solver):
    """A frozen config for a whole AGW training run in seconds: 32x16 images, ``epochs`` epochs of
    16-image PK batches, a checkpoint every epoch, evaluation at the end; ``solver`` overrides SOLVER.*."""
    cfg = get_default_config()
    cfg.MODEL.NAME = model_name
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHT_REGULARIZED_TRIPLET = "on"
    cfg.INPUT.IMG_SIZE = [32, 16]
    cfg.INPUT.PADDING = 2
    cfg.DATASETS.ROOT_DIR = root
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.MAX_EPOCHS = epochs
    cfg.SOLVER.BASE_LR = 3.5e-3
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = (100,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.EVAL_PERIOD = epochs
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    cfg.OUTPUT_DIR = str(output)
    cfg.freeze()
    return cfg


def write_image(path, color=(10, 20, 30), size=(16, 32), mode="RGB"):
    """A one-color image of ``size`` (width, height) at ``path``, parent folders created."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def protect_argv(root, output, *extra, batch_size=4, max_iter=2, image_size=(32, 16)):
    """protect_image.py arguments for a tiny CPU run of an untrained model on the data set at ``root``.

    ``extra`` flags come before the trailing ``KEY VALUE`` pairs, which set the image size, no
    loader workers and no grids; put more ``KEY VALUE`` pairs at the end of ``extra``.
    """
    return ["--random_init", "--root", str(root), "--output", str(output), "--batch_size", str(batch_size),
            "--max_iter", str(max_iter), "--device", "cpu", "--no_progress", *extra,
            "INPUT.IMG_SIZE", f"[{image_size[0]}, {image_size[1]}]", "DATALOADER.NUM_WORKERS", "0"]


def fake_venv(tmp_path):
    """A VENV for run.sh whose python is this one and whose stamp is current, so nothing is installed."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    digest = subprocess.run("cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1", shell=True, cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    (venv / ".requirements.sha256").write_text(digest)
    return venv
