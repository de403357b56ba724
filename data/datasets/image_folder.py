"""A user's own folder of images, to be protected as a gallery (never scored: labels may be -1).

Every file under the folder is either taken as an image (by its suffix, case-insensitive) or
listed in ``dataset.skipped`` with the reason, so nothing is left out silently. Each image's
protected copy is named by ``protected_relative_name``, which keeps the input's full name
(extension included) and appends ``.png``: ``cam/frame.PNG`` and ``cam/frame.bmp`` become
``cam/frame.PNG.png`` and ``cam/frame.bmp.png`` instead of both ``cam/frame.png``.
"""
import os
import tempfile
from collections import defaultdict

from .bases import DatasetError, ImageRecord, ReIDDataset
from .layouts import resolve_root
from .market1501 import parse_market_name
from .registry import register_dataset

# Formats PIL reads that people keep photos in; matched case-insensitively.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PROTECTED_SUFFIX = ".png"
APPLEDOUBLE_PREFIX = "._"
UNKNOWN = -1
SKIPPED_SHOWN = 20


def skip_reason(name):
    """Why a file called ``name`` is not taken as an image, or None when it is."""
    if name.startswith(APPLEDOUBLE_PREFIX):
        return "macOS metadata file (name starts with ._), not an image"
    if not name.lower().endswith(IMAGE_SUFFIXES):
        suffix = os.path.splitext(name)[1]
        return f"not an image suffix ({suffix or 'no suffix'})"
    return None


def scan_folder(folder):
    """``(image_paths, skipped)`` under ``folder``, recursively, both sorted by relative path.

    ``image_paths`` are absolute paths of the files with an image suffix; ``skipped`` is a list
    of ``(relative path, reason)`` for every other file, and for links to folders, which are
    not followed (a link loop would never end, and the images may be listed twice).
    """
    images, skipped = [], []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in subdirs:
            if os.path.islink(os.path.join(directory, name)):
                relative = os.path.relpath(os.path.join(directory, name), folder)
                skipped.append((relative, "link to a folder, not followed"))
        for name in files:
            path = os.path.join(directory, name)
            reason = skip_reason(name)
            if reason is None:
                images.append(path)
            else:
                skipped.append((os.path.relpath(path, folder), reason))
    images.sort(key=lambda path: os.path.relpath(path, folder))
    skipped.sort()
    return images, skipped


def list_images(folder):
    """Image files under ``folder`` (recursive), sorted by relative path for a stable order."""
    return scan_folder(folder)[0]


def describe_skipped(skipped, limit=SKIPPED_SHOWN):
    """One line: ``skipped N files: a.txt (reason); ...`` naming the first ``limit``."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:limit])
    rest = len(skipped) - min(len(skipped), limit)
    return f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''}: {shown}" + (
        f"; and {rest} more" if rest else ""
    )


def protected_relative_name(relative_path):
    """Where the protected PNG of the image at ``relative_path`` goes, relative to the output folder.

    The whole input name is kept and ``.png`` appended (``a/b.JPG`` -> ``a/b.JPG.png``, and
    ``x.png`` -> ``x.png.png``): appending a fixed suffix maps distinct names to distinct names,
    so two inputs never share an output on a case-sensitive file system. (Dropping the
    extension, or keeping ``x.png`` as is, would not be: ``a.jpg.png`` and ``a.jpg`` would
    then meet.) A path that is absolute, climbs out with ``..`` or is not normalised
    (``./a.jpg``, ``a//b.jpg``: other spellings of one file) is refused with a ValueError.
    """
    relative_path = os.fspath(relative_path)
    parts = relative_path.split(os.sep)
    if (
        os.path.isabs(relative_path)
        or os.path.normpath(relative_path) != relative_path
        or ".." in parts
        or parts[-1] in ("", ".")
    ):
        raise ValueError(
            f"expected a normalised file path inside the input folder (as os.path.relpath "
            f"gives), got {relative_path!r}"
        )
    return relative_path + PROTECTED_SUFFIX


def find_name_collisions(relative_paths, case_sensitive=False):
    """Protected-name clashes among ``relative_paths``: ``[(output name, (inputs...)), ...]``.

    Two clashes are possible even though ``protected_relative_name`` is one-to-one:
    - on a case-insensitive file system (macOS and Windows by default, exFAT and SMB drives)
      names differing only in case, ``a.JPG`` and ``a.jpg``, are one file: checked unless
      ``case_sensitive`` (see ``folder_is_case_sensitive``);
    - an output file whose name is also an output folder (input ``a.jpg`` next to a folder
      ``a.jpg.png/``), on any file system.
    Empty when every input gets its own file. Sorted by output name.
    """
    fold = (lambda name: name) if case_sensitive else (lambda name: name.casefold())
    by_output = defaultdict(list)
    folders = defaultdict(list)
    for relative in relative_paths:
        relative = os.fspath(relative)
        output = protected_relative_name(relative)
        by_output[fold(output)].append((output, relative))
        parent = os.path.dirname(output)
        while parent:
            folders[fold(parent)].append(relative)
            parent = os.path.dirname(parent)
    clashes = []
    for key, entries in by_output.items():
        inputs = sorted({relative for _, relative in entries})
        if len(inputs) > 1 or key in folders:
            inputs = inputs + sorted(set(folders.get(key, ())) - set(inputs))
            clashes.append((min(output for output, _ in entries), tuple(inputs)))
    return sorted(clashes)


def folder_is_case_sensitive(folder):
    """Whether ``folder`` (which must exist and be writable) tells ``a`` from ``A`` in names."""
    handle, path = tempfile.mkstemp(prefix=".pixelfade-case-check-", dir=folder)
    os.close(handle)
    try:
        directory, name = os.path.split(path)
        return not os.path.exists(os.path.join(directory, name.upper()))
    finally:
        os.remove(path)


@register_dataset("image_folder")
def build_image_folder(root):
    """Every image goes to ``gallery``; pid/camid come from Market-style names, else -1.

    The returned data set has a ``skipped`` attribute: ``[(relative path, reason), ...]`` for
    every file under the folder that was not taken (see ``describe_skipped``).
    """
    folder = resolve_root(root)
    if not os.path.isdir(folder):
        raise DatasetError(f"image_folder: no such folder {folder}; expected a folder of images")
    paths, skipped = scan_folder(folder)
    gallery = []
    for path in paths:
        pid, camid = parse_market_name(path) or (UNKNOWN, UNKNOWN)
        gallery.append(ImageRecord(path, pid, camid))
    if not gallery:
        raise DatasetError(
            f"image_folder: {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}, any case), "
            f"searched recursively" + (f"; {describe_skipped(skipped)}" if skipped else "")
        )
    dataset = ReIDDataset("image_folder", folder, "./", [], [], gallery)
    dataset.skipped = skipped
    return dataset
