"""Market-1501: three folders of ``PPPP_cCsS_FFFFFF_NN.jpg`` crops (also DukeMTMC-style names)."""
import os
import re

from .bases import DatasetError, ImageRecord, ReIDDataset, relabel_train
from .layouts import find_layout, missing_entries
from .registry import register_dataset

SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
# torchreid nests the release folder inside market1501/, fast-reid uses the release name.
CANDIDATES = ("market1501/Market-1501-v15.09.15", "market1501", "Market-1501-v15.09.15", ".")
JUNK_PID = -1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def parse_market_name(filename):
    """``(pid, camid)`` from a Market-style name (camid 0-based), or None when it is not one."""
    match = _NAME.match(os.path.basename(filename))
    if match is None or int(match.group(2)) < 1:
        return None
    return int(match.group(1)), int(match.group(2)) - 1


def read_market_folder(folder, keep_distractors):
    """Records of one split folder in sorted name order; junk (pid -1) is always skipped."""
    records = []
    for filename in sorted(os.listdir(folder)):
        if not filename.lower().endswith(IMAGE_SUFFIXES):
            continue
        path = os.path.join(folder, filename)
        parsed = parse_market_name(filename)
        if parsed is None:
            raise DatasetError(
                f"image name {path} does not follow the Market-1501 form PPPP_cC..."
            )
        pid, camid = parsed
        if pid == JUNK_PID or (pid == 0 and not keep_distractors):
            continue
        records.append(ImageRecord(path, pid, camid))
    return records


@register_dataset("market1501")
def build_market1501(root):
    """Train ids relabelled 0..P-1; gallery keeps the pid-0 distractors as real search noise."""
    folder, layout = find_layout(
        "market1501", root, CANDIDATES, lambda path: missing_entries(path, SPLIT_FOLDERS)
    )
    train_dir, query_dir, gallery_dir = (os.path.join(folder, name) for name in SPLIT_FOLDERS)
    train, original_pids = relabel_train(read_market_folder(train_dir, keep_distractors=True))
    dataset = ReIDDataset(
        "market1501",
        folder,
        layout,
        train,
        read_market_folder(query_dir, keep_distractors=False),
        read_market_folder(gallery_dir, keep_distractors=True),
        original_pids,
    )
    dataset.require_eval_splits(query_dir, gallery_dir)
    return dataset
