"""MSMT17 (v1 and v2): image folders plus ``list_*.txt`` files of ``relative/path.jpg pid``."""
import os

from .bases import DatasetError, ImageRecord, ReIDDataset, relabel_train
from .layouts import find_layout
from .registry import register_dataset

# Version name -> (train folder, test folder); v1 first, as the paper used it.
VERSIONS = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}
CANDIDATES = (
    "msmt17_v1",
    "MSMT17_V1",
    "msmt17/MSMT17_V1",
    "msmt17_v2",
    "MSMT17_V2",
    "msmt17/MSMT17_V2",
    ".",
)
LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def msmt_camid(relative_path):
    """0-based camera from the third ``_`` field of the file name (1-based there)."""
    fields = os.path.basename(relative_path).split("_")
    if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
        return None
    return int(fields[2]) - 1


def read_list(list_path, image_folder):
    """Records of one list file; a malformed line is an error naming the file and line."""
    records = []
    with open(list_path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.split()
            camid = msmt_camid(parts[0]) if len(parts) == 2 else None
            if camid is None or not parts[1].lstrip("-").isdigit():
                raise DatasetError(
                    f"{list_path} line {number}: expected 'relative/PPPP_NNN_CC_....jpg pid', "
                    f"got {line.strip()!r}"
                )
            records.append(ImageRecord(os.path.join(image_folder, parts[0]), int(parts[1]), camid))
    return records


def detect_version(folder):
    """``(version, None)`` for the first complete version in ``folder``, else ``(None, reason)``."""
    reasons = []
    for version, (train_dir, test_dir) in VERSIONS.items():
        required = (train_dir, test_dir) + LISTS
        missing = [e for e in required if not os.path.exists(os.path.join(folder, e))]
        if not missing:
            return version, None
        reasons.append(f"{version}: missing {', '.join(missing)}")
    return None, "; ".join(reasons)


@register_dataset("msmt17")
def build_msmt17(root):
    """Train + val lists form the training set (relabelled 0..P-1), as in the reference."""
    folder, layout = find_layout("msmt17", root, CANDIDATES, lambda path: detect_version(path)[1])
    version = detect_version(folder)[0]
    train_dir, test_dir = (os.path.join(folder, name) for name in VERSIONS[version])
    list_paths = [os.path.join(folder, name) for name in LISTS]
    train, original_pids = relabel_train(
        read_list(list_paths[0], train_dir) + read_list(list_paths[1], train_dir)
    )
    dataset = ReIDDataset(
        "msmt17",
        folder,
        layout,
        train,
        read_list(list_paths[2], test_dir),
        read_list(list_paths[3], test_dir),
        original_pids,
    )
    dataset.require_eval_splits(list_paths[2], list_paths[3])
    return dataset
