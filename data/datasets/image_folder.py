"""A user's own folder of images, to be protected as a gallery (never scored: labels may be -1)."""
import os

from .bases import DatasetError, ImageRecord, ReIDDataset
from .layouts import resolve_root
from .market1501 import parse_market_name
from .registry import register_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
UNKNOWN = -1


def list_images(folder):
    """Image files under ``folder`` (recursive), sorted by relative path for a stable order."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        found.extend(
            os.path.join(directory, name) for name in files if name.lower().endswith(IMAGE_SUFFIXES)
        )
    return sorted(found, key=lambda path: os.path.relpath(path, folder))


@register_dataset("image_folder")
def build_image_folder(root):
    """Every image goes to ``gallery``; pid/camid come from Market-style names, else -1."""
    folder = resolve_root(root)
    if not os.path.isdir(folder):
        raise DatasetError(f"image_folder: no such folder {folder}; expected a folder of images")
    gallery = []
    for path in list_images(folder):
        pid, camid = parse_market_name(path) or (UNKNOWN, UNKNOWN)
        gallery.append(ImageRecord(path, pid, camid))
    if not gallery:
        raise DatasetError(
            f"image_folder: {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}), "
            f"searched recursively"
        )
    return ReIDDataset("image_folder", folder, "./", [], [], gallery)
