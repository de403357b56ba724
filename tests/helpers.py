"""Small helpers shared by the test modules (importable as ``helpers``: tests/ is on pythonpath)."""
import os

from PIL import Image

from configs import get_default_config

# INPUT.PIXEL_MEAN and INPUT.PIXEL_STD of the defaults: the ImageNet statistics.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def model_cfg(**model):
    """The default config with ``cfg.MODEL.<KEY> = value`` for each keyword (e.g. NAME, INIT_SEED)."""
    cfg = get_default_config()
    for key, value in model.items():
        setattr(cfg.MODEL, key, value)
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
