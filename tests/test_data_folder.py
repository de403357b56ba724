import os

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, build_dataset


def _save(path, colour=(10, 20, 30), size=(16, 32)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_every_image_goes_to_the_gallery_with_parsed_or_unknown_labels(tmp_path):
    _save(tmp_path / "0002_c3s1_000151_01.jpg")
    _save(tmp_path / "holiday.png")
    _save(tmp_path / "b" / "-1_c1s1_000001_01.jpg")
    _save(tmp_path / "a" / "scan.bmp")
    _save(tmp_path / "a" / "0005_c0s1_000001_01.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = build_dataset("image_folder", tmp_path)
    assert dataset.train == [] and dataset.query == []
    found = [(os.path.relpath(r.path, tmp_path), r.pid, r.camid) for r in dataset.gallery]
    assert found == [
        ("0002_c3s1_000151_01.jpg", 2, 2),
        ("a/0005_c0s1_000001_01.jpeg", -1, -1),
        ("a/scan.bmp", -1, -1),
        ("b/-1_c1s1_000001_01.jpg", -1, 0),
        ("holiday.png", -1, -1),
    ]
    assert dataset.root == str(tmp_path) and dataset.name == "image_folder"


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=f"{tmp_path} holds no image files"):
        build_dataset("image_folder", tmp_path)
    with pytest.raises(DatasetError, match="no such folder .*missing"):
        build_dataset("image_folder", tmp_path / "missing")
    with pytest.raises(DatasetError, match="dataset root is empty"):
        build_dataset("image_folder", "")


def test_images_are_read_back(tmp_path):
    _save(tmp_path / "x.png", colour=(200, 100, 50))
    path = build_dataset("image_folder", tmp_path).gallery[0].path
    assert np.asarray(Image.open(path))[0, 0].tolist() == [200, 100, 50]
