"""SYSU-MM01 (visible-infrared): ``cam1``..``cam6/<4-digit id>/<image>`` and ``exp/{train,val,test}_id.txt``.

RGB cameras 1, 2, 4, 5; infrared cameras 3, 6. Read as the AGW cross-modality code reads it
(mangye16/Cross-Modal-Re-ID-baseline, ``pre_process_sysu.py`` and ``data_manager.py``):

* train: the train + val identities, visible images then infrared ones (identity-major, camera-minor,
  files sorted), labels 0..P-1 in sorted id order;
* query (both protocols): every infrared image of the test identities;
* gallery of trial t (0..9): ``random.seed(t)``, then for each test identity in sorted 4-digit order
  and each RGB camera of the protocol (all-search: 1, 2, 4, 5; indoor-search: 1, 2) whose folder
  exists, one ``random.choice`` over that folder's sorted file list (single-shot).

``camid`` is 0-based like every reader here (camera number - 1); the scoring rule's "cam3 queries
ignore cam2 images" is applied on camera numbers by ``evaluation.cross_modality``. See
``visible_infrared`` for how the protection engine consumes the trials.
"""
import os
import random
import re

from .bases import DatasetError, relabel_train
from .layouts import find_layout, missing_entries
from .registry import register_dataset
from .visible_infrared import INFRARED, VISIBLE, Trial, VIImageRecord, VisibleInfraredDataset, select_trials

VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
PROTOCOL_CAMERAS = {"all_search": (1, 2, 4, 5), "indoor_search": (1, 2)}
TRIALS = tuple(range(10))
SPLIT_FILES = tuple(f"exp/{split}_id.txt" for split in ("train", "val", "test"))
ENTRIES = tuple(f"cam{camera}" for camera in range(1, 7)) + SPLIT_FILES
# The official release unpacks to SYSU-MM01/; the reference's own scripts point at SYSU-MM01/ori_data/.
CANDIDATES = ("SYSU-MM01", "SYSU-MM01/ori_data", ".")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

_ID_LIST = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*$")
_IDENTITY_FOLDER = re.compile(r"^\d{4}$")


def read_id_file(path):
    """The identities of one ``exp/*_id.txt``: ONE line of comma-separated integers."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    if len(lines) != 1 or not _ID_LIST.match(lines[0]):
        shown = repr(lines[0][:40]) if lines else "an empty file"
        raise DatasetError(
            f"{path}: expected one line of comma-separated integer identities (e.g. 1,2,4), "
            f"got {len(lines)} line(s) starting with {shown}"
        )
    ids = [int(item) for item in lines[0].split(",")]
    if not all(1 <= pid <= 9999 for pid in ids):
        raise DatasetError(f"{path}: identities must lie in 1..9999 (4-digit folder names)")
    return ids


def identity_folders(camera_dir):
    """``{4-digit name: sorted file names}`` of one camera folder; anything else there is an error."""
    folders = {}
    for name in sorted(os.listdir(camera_dir)):
        path = os.path.join(camera_dir, name)
        if not os.path.isdir(path) or not _IDENTITY_FOLDER.match(name):
            raise DatasetError(
                f"{path}: expected only identity folders named with 4 digits (e.g. 0001) in {camera_dir}"
            )
        files = sorted(os.listdir(path))
        strays = [name for name in files
                  if not name.lower().endswith(IMAGE_SUFFIXES) or not os.path.isfile(os.path.join(path, name))]
        if strays or not files:
            found = f"{strays[0]!r}" if strays else "nothing"
            raise DatasetError(f"{path}: expected one or more image files (.jpg) in an identity folder, found {found}")
        folders[name] = files
    return folders


class _Cameras:
    """The identity folders of cam1..cam6, listed once."""

    def __init__(self, folder):
        self.folder = folder
        self.listing = {camera: identity_folders(os.path.join(folder, f"cam{camera}")) for camera in range(1, 7)}

    def records(self, identity, camera):
        """Every image of ``identity`` (4-digit string) in ``camera``, sorted; empty when it has no folder there."""
        names = self.listing[camera].get(identity, [])
        return [self.record(identity, camera, name) for name in names]

    def record(self, identity, camera, name):
        modality = INFRARED if camera in INFRARED_CAMERAS else VISIBLE
        path = os.path.join(self.folder, f"cam{camera}", identity, name)
        return VIImageRecord(path, int(identity), camera - 1, modality)

    def draw_gallery(self, identities, cameras, trial):
        """The reference's single-shot gallery: seed ``trial``, one ``random.choice`` per existing folder."""
        draw = random.Random(trial)
        gallery = []
        for identity in identities:
            for camera in cameras:
                names = self.listing[camera].get(identity)
                if names is not None:
                    gallery.append(self.record(identity, camera, draw.choice(names)))
        return gallery


def four_digits(ids):
    """Identities as the reference orders them: 4-digit strings, sorted."""
    return sorted(f"{pid:04d}" for pid in ids)


@register_dataset("sysu_mm01")
def build_sysu_mm01(root, trials=None):
    """SYSU-MM01 with the all-search and indoor-search protocols; ``trials``: DATASETS.TRIALS (0..9, default all)."""
    folder, layout = find_layout("sysu_mm01", root, CANDIDATES, lambda path: missing_entries(path, ENTRIES))
    chosen = select_trials("sysu_mm01", trials, TRIALS)
    train_ids, val_ids, test_ids = (read_id_file(os.path.join(folder, name)) for name in SPLIT_FILES)
    cameras = _Cameras(folder)
    train_identities = four_digits(train_ids + val_ids)
    train = [r for ident in train_identities for cam in VISIBLE_CAMERAS for r in cameras.records(ident, cam)]
    train += [r for ident in train_identities for cam in INFRARED_CAMERAS for r in cameras.records(ident, cam)]
    train, original_pids = relabel_train(train)
    train = [VIImageRecord(r.path, r.pid, r.camid, cameras_modality(r.camid)) for r in train]
    test_identities = four_digits(test_ids)
    query = tuple(r for ident in test_identities for cam in INFRARED_CAMERAS for r in cameras.records(ident, cam))
    protocols = {
        protocol: [Trial(t, query, tuple(cameras.draw_gallery(test_identities, cams, t))) for t in chosen]
        for protocol, cams in PROTOCOL_CAMERAS.items()
    }
    dataset = VisibleInfraredDataset("sysu_mm01", folder, layout, train, protocols, "sysu", original_pids)
    dataset.require_eval_splits(f"{folder}/cam3, cam6", f"{folder}/cam1, cam2, cam4, cam5")
    return dataset


def cameras_modality(camid):
    """Modality of a 0-based SYSU-MM01 camera id."""
    return INFRARED if camid + 1 in INFRARED_CAMERAS else VISIBLE
