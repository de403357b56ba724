"""Small synthetic visible-infrared data sets in the SYSU-MM01 and RegDB layouts.

The same synthetic people (``synthetic_render``) are seen by RGB cameras and by infrared ones. An
infrared image is one intensity channel computed with another colour-to-brightness mapping than plain
grey (near-infrared: red and skin tones bright; thermal: a body glows against a dark scene), stored as
a 3-channel JPEG as the real files are read. So a model must learn that a colour and its brightness
under infrared belong to one person. Output depends only on the arguments.
"""
import os

import numpy as np

from .synthetic import _new_folder, _save_jpg
from .synthetic_render import random_camera, random_look, render_crop

# R, G, B weights of the infrared intensity (plain grey is about 0.30, 0.59, 0.11).
NEAR_INFRARED_WEIGHTS = (0.60, 0.25, 0.15)
THERMAL_WEIGHTS = (0.15, 0.30, 0.55)
SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)
_LOOK, _CAMERA, _IMAGE, _SPLIT = range(4)


def _rng(seed, *tags):
    return np.random.default_rng([seed, 1000, *tags])


def infrared_image(pixels, weights, gamma=0.8):
    """uint8 (H, W, 3) RGB -> uint8 (H, W, 3) with one intensity channel: weighted sum, gamma, repeated."""
    intensity = (pixels.astype(np.float32) / 255.0) @ np.asarray(weights, dtype=np.float32)
    intensity = np.clip(intensity, 0.0, 1.0) ** gamma
    channel = (intensity * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(channel[:, :, None], 3, axis=2)


def _check(num_ids, images_per_id_cam, height, width, minimum_ids):
    if num_ids < minimum_ids:
        raise ValueError(f"num_ids must be >= {minimum_ids}, got {num_ids}")
    if images_per_id_cam < 1:
        raise ValueError(f"images_per_id_cam must be >= 1, got {images_per_id_cam}")
    if height < 16 or width < 8:
        raise ValueError(f"image size must be at least 16x8 (height x width), got {height}x{width}")


class _People:
    """Identities and cameras; ``crop`` renders one image, in infrared when the camera is."""

    def __init__(self, num_ids, num_cams, height, width, seed):
        self.seed, self.height, self.width = seed, height, width
        self.looks = [random_look(_rng(seed, _LOOK, i)) for i in range(num_ids)]
        self.cameras = [random_camera(_rng(seed, _CAMERA, c)) for c in range(num_cams)]

    def crop(self, identity, camera, shot, infrared_weights=None):
        rng = _rng(self.seed, _IMAGE, identity, camera, shot)
        pixels = render_crop(self.looks[identity], self.cameras[camera], self.height, self.width, rng)
        return pixels if infrared_weights is None else infrared_image(pixels, infrared_weights)


def sysu_camera_absent(identity, camera):
    """Every third identity is missing from one camera (cycling over cam1..cam6), as in the real set."""
    return identity % 3 == 1 and camera == 1 + (identity // 3) % 6


def make_sysu_mm01(root, num_ids=12, images_per_id_cam=2, height=64, width=32, seed=0):
    """Write ``<root>/SYSU-MM01/`` (cam1..cam6, exp/{train,val,test}_id.txt) and return it.

    Identities 1..num_ids: the first half train, the next sixth val, the rest test. Every third
    identity lacks one camera; file names are 4 digits + .jpg as in the release.
    """
    _check(num_ids, images_per_id_cam, height, width, minimum_ids=6)
    folder = _new_folder(os.path.join(os.fspath(root), "SYSU-MM01"))
    people = _People(num_ids, 6, height, width, seed)
    for identity in range(num_ids):
        for camera in range(1, 7):
            if sysu_camera_absent(identity, camera):
                continue
            weights = NEAR_INFRARED_WEIGHTS if camera in SYSU_INFRARED_CAMERAS else None
            person_dir = os.path.join(folder, f"cam{camera}", f"{identity + 1:04d}")
            os.makedirs(person_dir)
            for shot in range(images_per_id_cam):
                _save_jpg(os.path.join(person_dir, f"{shot + 1:04d}.jpg"),
                          people.crop(identity, camera - 1, shot, weights))
    num_train, num_val = num_ids // 2, max(1, num_ids // 6)
    splits = {"train": range(1, num_train + 1), "val": range(num_train + 1, num_train + num_val + 1),
              "test": range(num_train + num_val + 1, num_ids + 1)}
    os.makedirs(os.path.join(folder, "exp"))
    for split, ids in splits.items():
        with open(os.path.join(folder, "exp", f"{split}_id.txt"), "w", encoding="utf-8") as handle:
            handle.write(",".join(str(pid) for pid in ids) + "\n")
    return folder


def make_regdb(root, num_ids=12, images_per_id_cam=3, height=64, width=32, seed=0, num_trials=10):
    """Write ``<root>/RegDB/`` (Visible/, Thermal/, idx/ for trials 1..num_trials) and return it.

    Each identity has ``images_per_id_cam`` visible and as many thermal images. Trial t splits the
    identities at random into equal train and test halves; idx labels are the identity numbers
    (0-based), so train labels are not contiguous and the reader relabels them.
    """
    _check(num_ids, images_per_id_cam, height, width, minimum_ids=4)
    if num_ids % 2 or not 1 <= num_trials <= 10:
        raise ValueError(f"regdb needs an even num_ids and 1..10 trials, got {num_ids} and {num_trials}")
    folder = _new_folder(os.path.join(os.fspath(root), "RegDB"))
    people = _People(num_ids, 2, height, width, seed)
    files = {"visible": {}, "thermal": {}}
    for side, sensor, camera, weights in (("visible", "Visible", 0, None), ("thermal", "Thermal", 1, THERMAL_WEIGHTS)):
        for identity in range(num_ids):
            os.makedirs(os.path.join(folder, sensor, str(identity + 1)))
            names = []
            for shot in range(images_per_id_cam):
                relative = f"{sensor}/{identity + 1}/{side}_{identity + 1}_{shot + 1}.jpg"
                _save_jpg(os.path.join(folder, relative), people.crop(identity, camera, shot, weights))
                names.append(relative)
            files[side][identity] = names
    os.makedirs(os.path.join(folder, "idx"))
    for trial in range(1, num_trials + 1):
        order = _rng(seed, _SPLIT, trial).permutation(num_ids)
        halves = {"train": sorted(order[: num_ids // 2]), "test": sorted(order[num_ids // 2:])}
        for split, identities in halves.items():
            for side in files:
                lines = [f"{name} {identity}" for identity in identities for name in files[side][identity]]
                with open(os.path.join(folder, "idx", f"{split}_{side}_{trial}.txt"), "w", encoding="utf-8") as handle:
                    handle.write("\n".join(lines) + "\n")
    return folder
