import os

import numpy as np
import pytest
from helpers import write_image
from PIL import Image

from data import DatasetError, ReIDDataset, build_dataset
from data.datasets.image_folder import (
    describe_skipped,
    find_name_collisions,
    folder_is_case_sensitive,
    list_images,
    protected_relative_name,
)


def test_every_image_goes_to_the_gallery_with_parsed_or_unknown_labels(tmp_path):
    write_image(tmp_path / "0002_c3s1_000151_01.jpg")
    write_image(tmp_path / "holiday.png")
    write_image(tmp_path / "b" / "-1_c1s1_000001_01.jpg")
    write_image(tmp_path / "a" / "scan.bmp")
    write_image(tmp_path / "a" / "0005_c0s1_000001_01.jpeg")
    write_image(tmp_path / "cam" / "frame.PNG")
    write_image(tmp_path / "cam" / "frame.bmp")
    write_image(tmp_path / "cam" / "x.webp")
    write_image(tmp_path / "cam" / "y.TIF")
    write_image(tmp_path / "cam" / "z.tiff")
    write_image(tmp_path / "cam" / "0003_c2s1_000001_01.JPG")
    (tmp_path / "cam" / "._frame.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "cam" / "sub").mkdir()
    (tmp_path / "cam" / "sub" / "clip.mp4").write_bytes(b"not read")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("no suffix")
    os.symlink(tmp_path / "a", tmp_path / "link_to_a")
    dataset = build_dataset("image_folder", tmp_path)
    assert dataset.train == [] and dataset.query == []
    found = [(os.path.relpath(r.path, tmp_path), r.pid, r.camid) for r in dataset.gallery]
    assert found == [
        ("0002_c3s1_000151_01.jpg", 2, 2),
        ("a/0005_c0s1_000001_01.jpeg", -1, -1),
        ("a/scan.bmp", -1, -1),
        ("b/-1_c1s1_000001_01.jpg", -1, 0),
        ("cam/0003_c2s1_000001_01.JPG", 3, 1),
        ("cam/frame.PNG", -1, -1),
        ("cam/frame.bmp", -1, -1),
        ("cam/x.webp", -1, -1),
        ("cam/y.TIF", -1, -1),
        ("cam/z.tiff", -1, -1),
        ("holiday.png", -1, -1),
    ]
    assert all(os.path.isabs(r.path) for r in dataset.gallery)
    assert dataset.skipped == [
        ("README", "not an image suffix (no suffix)"),
        ("cam/._frame.jpg", "macOS metadata file (name starts with ._), not an image"),
        ("cam/sub/clip.mp4", "not an image suffix (.mp4)"),
        ("link_to_a", "link to a folder, not followed"),
        ("notes.txt", "not an image suffix (.txt)"),
    ]
    assert describe_skipped(dataset.skipped, limit=2) == (
        "skipped 5 files: README (not an image suffix (no suffix)); "
        "cam/._frame.jpg (macOS metadata file (name starts with ._), not an image); and 3 more"
    )
    assert describe_skipped([("a.txt", "r")]) == "skipped 1 file: a.txt (r)"
    assert dataset.root == str(tmp_path) and dataset.name == "image_folder"
    assert isinstance(dataset, ReIDDataset) and "gallery=11" in repr(dataset)
    assert list_images(tmp_path) == [r.path for r in dataset.gallery]
    outputs = [protected_relative_name(os.path.relpath(r.path, tmp_path)) for r in dataset.gallery]
    assert outputs == [
        "0002_c3s1_000151_01.jpg.png",
        "a/0005_c0s1_000001_01.jpeg.png",
        "a/scan.bmp.png",
        "b/-1_c1s1_000001_01.jpg.png",
        "cam/0003_c2s1_000001_01.JPG.png",
        "cam/frame.PNG.png",
        "cam/frame.bmp.png",
        "cam/x.webp.png",
        "cam/y.TIF.png",
        "cam/z.tiff.png",
        "holiday.png.png",
    ]
    assert find_name_collisions(os.path.relpath(r.path, tmp_path) for r in dataset.gallery) == []


def test_a_folder_of_other_files_only_is_empty_and_lists_what_was_skipped(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(DatasetError) as caught:
        build_dataset("image_folder", tmp_path)
    assert str(caught.value).endswith(
        "searched recursively; skipped 1 file: clip.mp4 (not an image suffix (.mp4))"
    )
    assert ".webp" in str(caught.value)


def test_protected_names_keep_the_extension():
    assert protected_relative_name("cam/frame.PNG") == "cam/frame.PNG.png"
    assert protected_relative_name("cam/frame.bmp") == "cam/frame.bmp.png"
    assert protected_relative_name("cam/frame.png") == "cam/frame.png.png"
    assert protected_relative_name("a.JPG") == "a.JPG.png"
    assert protected_relative_name("a.jpg") == "a.jpg.png"
    assert protected_relative_name("a.jpg.png") == "a.jpg.png.png"
    assert protected_relative_name("deep/er/x.webp") == "deep/er/x.webp.png"
    for bad in ["/abs/a.jpg", "../a.jpg", "a/../../b.jpg", "./a.jpg", "a//b.jpg", "a/", "", "."]:
        with pytest.raises(ValueError, match="normalised file path inside the input folder"):
            protected_relative_name(bad)


def test_protected_names_never_collide_on_a_case_sensitive_file_system():
    tricky = [
        "a.JPG", "a.jpg", "a.Jpg", "A.jpg", "a.jpg.png", "a.png", "a.PNG", "a", "a.png.png",
        "cam/frame.PNG", "cam/frame.bmp", "cam/frame.png", "cam/frame.jpeg", "cam/frame",
    ]
    alphabet = ["a", "A", ".", "jpg", "JPG", "png", "bmp", "x/"]
    generated = set(tricky)
    for i in range(4000):  # every name of up to 4 pieces of the alphabet (valid paths only)
        name = "".join(alphabet[(i // 8 ** k) % 8] for k in range(1 + i % 4))
        if os.path.normpath(name) == name and not name.endswith("/") and ".." not in name.split("/"):
            generated.add(name)
    outputs = [protected_relative_name(name) for name in sorted(generated)]
    assert len(set(outputs)) == len(generated) > 500
    assert find_name_collisions(tricky, case_sensitive=True) == []


def test_collisions_that_remain_are_found_up_front():
    names = ["a.JPG", "a.jpg", "b.png", "cam/frame.PNG", "cam/frame.png", "Cam/other.png", "c.jpg"]
    assert find_name_collisions(names) == [
        ("a.JPG.png", ("a.JPG", "a.jpg")),
        ("cam/frame.PNG.png", ("cam/frame.PNG", "cam/frame.png")),
    ]
    assert find_name_collisions(names, case_sensitive=True) == []
    # an output file that is also an output folder, whatever the case rules
    nested = ["a.jpg", "a.jpg.png/b.jpg", "a.jpg.png/c/d.jpg", "e.jpg"]
    assert find_name_collisions(nested, case_sensitive=True) == [
        ("a.jpg.png", ("a.jpg", "a.jpg.png/b.jpg", "a.jpg.png/c/d.jpg")),
    ]
    assert find_name_collisions(["x/y.jpg", "X.JPG.PNG/z.jpg", "x.jpg"]) == [
        ("x.jpg.png", ("x.jpg", "X.JPG.PNG/z.jpg")),
    ]


def test_case_sensitivity_of_an_output_folder(tmp_path):
    before = sorted(os.listdir(tmp_path))
    assert folder_is_case_sensitive(tmp_path) is True  # Linux tmp; the check leaves nothing behind
    assert sorted(os.listdir(tmp_path)) == before


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=f"{tmp_path} holds no image files"):
        build_dataset("image_folder", tmp_path)
    with pytest.raises(DatasetError, match="no such folder .*missing"):
        build_dataset("image_folder", tmp_path / "missing")
    with pytest.raises(DatasetError, match="dataset root is empty"):
        build_dataset("image_folder", "")


def test_images_are_read_back(tmp_path):
    write_image(tmp_path / "x.png", color=(200, 100, 50))
    path = build_dataset("image_folder", tmp_path).gallery[0].path
    assert np.asarray(Image.open(path))[0, 0].tolist() == [200, 100, 50]
