"""Finding a data set's folder among the layouts that other Re-ID toolkits use."""
import os

from .bases import DatasetError


def resolve_root(root):
    """Absolute form of a user-given root; the empty string is refused rather than meaning cwd."""
    if root is None or not str(root).strip():
        raise DatasetError("dataset root is empty: set DATASETS.ROOT_DIR to the data folder")
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def layout_name(candidate):
    return "./" if candidate in ("", ".") else candidate.rstrip("/") + "/"


def find_layout(dataset_name, root, candidates, check):
    """Return ``(folder, layout)`` for the first candidate folder that ``check`` accepts.

    ``candidates`` are folders relative to ``root`` ("." is root itself); ``check(folder)``
    returns None to accept or a short reason to reject. The error lists every path tried
    with its reason, so a user sees at once which copy of the data is incomplete.
    """
    root = resolve_root(root)
    tried = []
    for candidate in candidates:
        folder = os.path.normpath(os.path.join(root, candidate))
        if not os.path.isdir(folder):
            tried.append(f"{folder} (no such folder)")
            continue
        reason = check(folder)
        if reason is None:
            return folder, layout_name(candidate)
        tried.append(f"{folder} ({reason})")
    accepted = ", ".join(f"<root>/{layout_name(c)}" for c in candidates)
    raise DatasetError(
        f"{dataset_name}: no data set found under root {root}.\n  tried:\n    "
        + "\n    ".join(tried)
        + f"\n  accepted layouts: {accepted}"
    )


def missing_entries(folder, entries):
    """Reason naming the entries (files or folders) absent from ``folder``, or None."""
    missing = [entry for entry in entries if not os.path.exists(os.path.join(folder, entry))]
    return f"missing {', '.join(missing)}" if missing else None
