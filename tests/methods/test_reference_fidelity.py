"""Reference mode at the defaults reproduces the reference bit for bit, starting from image files.

``protect_image.py`` is run on JPEG files (resized on load); the oracle feeds the same files
through the reference's own transform (torchvision ``Resize``, ``hflip`` where the run flipped,
``ToTensor``, ``Normalize``) into the literal reference loop, with masks and noise
drawn from the same seeded stream in the same order (train batches first, then test). Every saved
original and protected batch must be equal, not close: the loop amplifies any rounding.
"""

import csv
import os

import numpy as np
import pytest
import torch
from helpers import protect_argv
from PIL import Image
from torchvision import transforms as T

import protect_image
from configs import load_config
from data import img_npy
from data.synthetic import make_market1501
from engine.methods.pixelfade import PixelFadeParams
from engine.methods.pixelfade_reference import reference_masks, reference_protect
from modeling import build_authorization_model

SIZE = (32, 16)
BATCH = 4
STEPS = 7
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # Files larger than INPUT.IMG_SIZE, so the resize is part of what must match.
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=40, width=20, seed=5)
    output = tmp_path_factory.mktemp("run") / "protect"
    argv = protect_argv(root, output, "--save_image_npy", batch_size=BATCH, max_iter=STEPS, image_size=SIZE)
    assert protect_image.main(argv) == 0
    return root / "market1501", output


def reference_input(path, flipped):
    """The reference's train/eval transform; the flip is the one the run drew (``hflip``, which
    ``RandomHorizontalFlip`` applies, called directly so the global random stream is not touched)."""
    steps = [T.Resize(SIZE)] + ([T.functional.hflip] if flipped else []) + [T.ToTensor(), T.Normalize(MEAN, STD)]
    with Image.open(path) as image:
        return T.Compose(steps)(image.convert("RGB"))


def split_items(output, split):
    with open(output / f"protection_stats_{split}.csv") as handle:
        return [(row["path"], row["flipped"] == "1") for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_defaults_reproduce_the_literal_reference_loop_from_files(run_folder):
    data_root, output = run_folder
    cfg = load_config("", ["INPUT.IMG_SIZE", f"[{SIZE[0]}, {SIZE[1]}]"])
    assert not cfg.PIXELFADE.CHANNELS_LAST and cfg.PIXELFADE.PRECISION == "none" and cfg.PIXELFADE.MODE == "reference"
    model = build_authorization_model(cfg, "", "cpu")
    params = PixelFadeParams(max_iter=STEPS)
    torch.manual_seed(cfg.PIXELFADE.SEED)
    masks = reference_masks(BATCH, (3, *SIZE), params.fade_num_iter)
    npy = output / "img_npy"
    compared = {"train": [], "test": []}
    for split in ("train", "test"):
        items = split_items(output, split)
        for batch_index, start in enumerate(range(0, len(items), BATCH)):
            batch = items[start : start + BATCH]
            data = torch.stack([reference_input(os.path.join(data_root, path), flipped) for path, flipped in batch])
            theirs = reference_protect(model, data, masks, params, full_batch=BATCH)
            clean, protected, _, _ = img_npy.read_batch(str(npy), split, batch_index)
            assert np.array_equal(clean, data.numpy()), f"{split} batch {batch_index}: inputs differ"
            assert np.abs(protected - theirs.numpy()).max() == 0.0, (
                f"{split} batch {batch_index}: protected images differ"
            )
            compared[split].append(len(batch))
    # A full and a smaller last batch were compared, and some train images were flipped.
    assert compared["test"] == [4, 4, 2]
    assert compared["train"] == [4, 4]
    assert 0 < sum(flipped for _, flipped in split_items(output, "train")) < 8
