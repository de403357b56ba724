"""Durable output files: atomic writes, one-line errors for OS failures, a lock per output folder.

Every file is written under a unique temporary name beside its final place and renamed into
place, so an interrupted run never leaves a half-written file that a resumed run would trust, and
two processes never share a temporary file. An ``OSError`` while writing becomes an
``OutputError`` that names the file and says why (a full disk is said in those words), and the
temporary file is removed.
"""
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import uuid

import numpy as np

from .errors import OutputError, RunConflictError

LOCK_FILENAME = ".lock"


def describe_os_error(err, path):
    """One line for an OSError on ``path``: what happened, in words a user can act on."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "the file system is read-only",
        errno.ENOENT: "a folder on the path does not exist",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "the path is a folder",
    }
    reason = reasons.get(err.errno, err.strerror or str(err))
    return f"cannot write {path}: {reason}"


@contextlib.contextmanager
def os_errors_as_output_errors(path):
    """Turn an ``OSError`` raised inside the block into an ``OutputError`` naming ``path``."""
    try:
        yield
    except OSError as err:
        raise OutputError(describe_os_error(err, path)) from err


def make_dirs(path):
    """``os.makedirs(path, exist_ok=True)`` with a one-line error naming the folder."""
    with os_errors_as_output_errors(path):
        os.makedirs(path, exist_ok=True)


def latest_numbered_file(folder, prefix, suffix):
    """Path of ``<folder>/<prefix><N><suffix>`` with the highest integer N (the newest resume point), or None."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    found = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            match = pattern.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(folder, name)))
    return max(found)[1] if found else None


@contextlib.contextmanager
def _replacing(path):
    """A temporary name beside ``path`` to build the new file under; it becomes ``path`` only by ``os.replace``.

    Whatever is left under the temporary name (a failure before the rename) is removed; OS errors
    become ``OutputError`` naming ``path``.
    """
    folder = os.path.dirname(path) or "."
    make_dirs(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os_errors_as_output_errors(path):
            yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write(path, write):
    """Call ``write(handle)`` on a binary temporary file, then rename it to ``path``."""
    with _replacing(path) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
        os.replace(tmp, path)
    return path


def atomic_write_text(text, path):
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(value, path):
    return atomic_write_text(json.dumps(value, indent=2) + "\n", path)


def atomic_save_npy(array, path):
    return atomic_write(path, lambda handle: np.save(handle, array))


def atomic_torch_save(obj, path):
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def atomic_save_image(image, path, format="PNG"):
    """Save a PIL image atomically."""
    return atomic_write(path, lambda handle: image.save(handle, format=format))


class FolderLock:
    """An exclusive, non-blocking lock on an output folder while a run writes to it.

    The lock is an ``flock`` on ``<folder>/.lock``, released by the kernel when the process ends,
    so a crashed run never leaves a stale lock. A second run on the same folder is refused with
    the holder's process id.
    """

    def __init__(self, folder, purpose="run"):
        self.folder = folder
        self.purpose = purpose
        self.path = os.path.join(folder, LOCK_FILENAME)
        self._handle = None

    def acquire(self):
        make_dirs(self.folder)
        with os_errors_as_output_errors(self.path):
            handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunConflictError(
                f"output folder {self.folder} is being written by {holder}; wait for it to finish, "
                "or use another output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({self.purpose})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self):
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def file_digest(path, chunk=1 << 20):
    """SHA-256 of a file's bytes, read in chunks (checkpoints can be hundreds of MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_label(path):
    """How run records name a weight file: its name and the first 16 hex digits of its SHA-256."""
    return f"{os.path.basename(path)} sha256={file_digest(path)[:16]}"


# Errors of os.link that mean "no hard links here" (another file system, FAT, some network shares).
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def atomic_link(source, path):
    """Make ``path`` another name of the file ``source`` (a hard link, replacing ``path`` atomically).

    Where the file system has no hard links, ``path`` becomes a copy. An OS failure is an
    ``OutputError`` naming ``path``.
    """
    with _replacing(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError as err:
            if err.errno not in _NO_LINK_ERRNOS:
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    return path


def write_png(pixels, path):
    """Write one uint8 (3,H,W) image losslessly and atomically (no half-written file on a crash)."""
    from PIL import Image

    atomic_save_image(Image.fromarray(pixels.cpu().permute(1, 2, 0).numpy()), path)


def read_png(path):
    """Read a PNG written by ``write_png`` back as uint8 (3,H,W)."""
    import torch
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
