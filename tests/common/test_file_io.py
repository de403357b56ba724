"""utils.file_io: a file is replaced whole or not at all, and a failure leaves no temporary file."""
import errno
import os

import pytest

from utils import file_io
from utils.errors import OutputError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    file_io.atomic_write_text("old", str(path))

    def half_then_full(handle):
        handle.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="the disk is full"):
        file_io.atomic_write(str(path), half_then_full)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_hard_link_names_the_same_file(tmp_path):
    source = tmp_path / "w.pth"
    source.write_bytes(b"weights")
    file_io.atomic_link(str(source), str(tmp_path / "sub" / "link.pth"))
    assert os.path.samefile(source, tmp_path / "sub" / "link.pth")


def weights_with_failing_links(tmp_path, monkeypatch, error):
    """A weight file, and os.link failing with ``error`` (an errno)."""
    source = tmp_path / "w.pth"
    source.write_bytes(b"weights")

    def failing_link(src, dst):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(file_io.os, "link", failing_link)
    return source


def test_without_hard_links_the_name_becomes_a_copy(tmp_path, monkeypatch):
    source = weights_with_failing_links(tmp_path, monkeypatch, errno.EXDEV)
    link = tmp_path / "link.pth"
    file_io.atomic_link(str(source), str(link))
    assert link.read_bytes() == b"weights" and not os.path.samefile(source, link)
    assert sorted(os.listdir(tmp_path)) == ["link.pth", "w.pth"]


def test_other_link_failures_are_output_errors_naming_the_file(tmp_path, monkeypatch):
    source = weights_with_failing_links(tmp_path, monkeypatch, errno.EACCES)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'link.pth'}: permission denied"):
        file_io.atomic_link(str(source), str(tmp_path / "link.pth"))
    assert os.listdir(tmp_path) == ["w.pth"]


def test_the_weights_label_is_the_name_and_16_hex_digits(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"abc")
    # sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
    assert file_io.weights_label(str(path)) == "model.pth sha256=ba7816bf8f01cfea"
