import os

import numpy as np
import pytest
from PIL import Image, ImageFile

import data.image_check as image_check
from data.image_check import check_images_readable, find_unreadable_images, image_problem
from utils.errors import DatasetError


def noisy(size=(32, 64), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def files(tmp_path):
    """name -> path of good and bad files of every kind the check must tell apart."""
    paths = {}

    def add(name, content=None, image=None, fmt=None):
        path = tmp_path / name
        if image is not None:
            image.save(path, format=fmt)
        else:
            path.write_bytes(content)
        paths[name] = str(path)
        return path

    whole_jpeg = add("good.jpg", image=noisy(), fmt="JPEG").read_bytes()
    whole_png = add("good.png", image=noisy(seed=1), fmt="PNG").read_bytes()
    add("good.bmp", image=noisy(seed=2), fmt="BMP")
    add("good.webp", image=noisy(seed=3), fmt="WEBP")
    add("gray.tif", image=Image.new("L", (8, 8), 9), fmt="TIFF")
    add("padded.jpg", whole_jpeg + b"\x00" * 100)  # NUL padding after EOI: readable
    add("trailer.jpg", whole_jpeg + b"EXTRA DATA AFTER EOI")  # bytes after EOI: readable
    add("empty.jpg", b"")
    add("text.jpg", b"just some text, not an image\n")
    add("truncated.jpg", whole_jpeg[: len(whole_jpeg) // 2])
    add("truncated.png", whole_png[: len(whole_png) // 2])
    add("header_only.jpg", whole_jpeg[:200])
    os.mkdir(tmp_path / "folder.jpg")
    paths["folder.jpg"] = str(tmp_path / "folder.jpg")
    paths["missing.jpg"] = str(tmp_path / "missing.jpg")
    return paths


GOOD = ["good.jpg", "good.png", "good.bmp", "good.webp", "gray.tif", "padded.jpg", "trailer.jpg"]


def test_each_problem_is_named(files):
    for name in GOOD:
        assert image_problem(files[name]) is None, name
    assert image_problem(files["empty.jpg"]) == "empty file (0 bytes)"
    assert image_problem(files["text.jpg"]) == "not an image PIL can identify"
    assert image_problem(files["missing.jpg"]) == "file not found"
    assert image_problem(files["folder.jpg"]) == "is a folder, not a file"
    assert image_problem(files["truncated.jpg"]).startswith("truncated or corrupt JPEG: image file is truncated")
    assert image_problem(files["header_only.jpg"]) == "corrupt image: Truncated File Read"  # cut in the header
    assert image_problem(files["truncated.png"]).startswith("corrupt PNG:")


def test_find_lists_every_bad_file_in_input_order(files):
    order = sorted(files)
    bad = find_unreadable_images([files[name] for name in order], num_workers=0)
    assert [os.path.basename(path) for path, _ in bad] == [
        "empty.jpg", "folder.jpg", "header_only.jpg", "missing.jpg", "text.jpg", "truncated.jpg", "truncated.png",
    ]
    assert all(isinstance(reason, str) and "\n" not in reason for _, reason in bad)
    assert find_unreadable_images([], 2) == []


def test_pool_gives_the_same_answer_as_one_process(files, monkeypatch):
    paths = [files[name] for name in sorted(files)] * 30
    serial = find_unreadable_images(paths, num_workers=1)
    assert len(serial) == 7 * 30
    monkeypatch.setattr(image_check, "MIN_IMAGES_FOR_POOL", 10)
    assert find_unreadable_images(paths, num_workers=2) == serial
    monkeypatch.setattr(image_check, "_pool", lambda workers: image_check.ThreadPoolExecutor(workers))
    assert find_unreadable_images(paths, num_workers=2) == serial


def test_full_decode_also_catches_truncated_pixel_data_of_other_formats(tmp_path):
    whole = tmp_path / "whole.bmp"
    noisy(seed=4).save(whole)
    cut = tmp_path / "cut.bmp"
    cut.write_bytes(whole.read_bytes()[:-500])
    assert image_problem(cut) is None  # the cheap check reads only the header of a BMP
    assert image_problem(cut, full_decode=True).startswith("corrupt BMP: image file is truncated")
    assert find_unreadable_images([whole, cut], full_decode=True) == [(str(cut), image_problem(cut, True))]


def test_check_raises_one_line_naming_all_bad_files(files, tmp_path):
    check_images_readable([files[name] for name in GOOD], num_workers=2)
    with pytest.raises(DatasetError) as caught:
        check_images_readable([files["good.jpg"], files["text.jpg"], files["missing.jpg"]])
    assert str(caught.value) == (
        f"2 of 3 images cannot be read: {files['text.jpg']} (not an image PIL can identify); "
        f"{files['missing.jpg']} (file not found)"
    )
    many = [str(tmp_path / f"absent_{index:02d}.jpg") for index in range(23)]
    with pytest.raises(DatasetError) as caught:
        check_images_readable([files["good.png"]] + many)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("23 of 24 images cannot be read: ")
    assert all(path in message for path in many[:20]) and many[20] not in message
    assert message.endswith(f"{many[19]} (file not found); and 3 more")


def test_bad_worker_count():
    with pytest.raises(ValueError, match="num_workers"):
        find_unreadable_images([], -1)


def test_intact_jpegs_are_not_decoded(files, monkeypatch):
    def no_decode(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    for name in ("good.jpg", "padded.jpg", "good.png"):
        assert image_problem(files[name]) is None, name
    assert image_problem(files["trailer.jpg"]) == "truncated or corrupt JPEG: decoded"
