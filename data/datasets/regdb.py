"""RegDB (visible-thermal): ``Visible/``, ``Thermal/`` and ``idx/{train,test}_{visible,thermal}_<t>.txt``.

Each idx line is ``<path relative to RegDB/> <integer label>`` (split on one space), as the AGW
cross-modality code reads it (mangye16/Cross-Modal-Re-ID-baseline, ``data_manager.py``,
``data_loader.py``). Trials 1..10 are ten train/test splits of the identities; the reference trains
one model per trial. Protocols, per trial t: ``visible_to_thermal`` (query ``test_visible_t``,
gallery ``test_thermal_t``; the reference's default) and ``thermal_to_visible`` (the roles swapped).
Visible images have camid 0, thermal ones camid 1. See ``visible_infrared`` for how the protection
engine consumes the trials.
"""
import os
import re

from .bases import DatasetError, relabel_train
from .layouts import find_layout, missing_entries
from .registry import register_dataset
from .visible_infrared import INFRARED, VISIBLE, Trial, VIImageRecord, VisibleInfraredDataset, select_trials

TRIALS = tuple(range(1, 11))
CANDIDATES = ("RegDB", ".")
ENTRIES = ("Visible", "Thermal", "idx")
SIDES = {"visible": (VISIBLE, 0), "thermal": (INFRARED, 1)}

_LINE = re.compile(r"^(\S+) (\d+)$")


def idx_name(split, side, trial):
    return os.path.join("idx", f"{split}_{side}_{trial}.txt")


def read_idx_file(folder, split, side, trial):
    """Records of ``idx/<split>_<side>_<trial>.txt``; a bad line or a missing image is an error naming the line."""
    path = os.path.join(folder, idx_name(split, side, trial))
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path}: idx file not found; expected trials {TRIALS[0]}..{TRIALS[-1]} in {folder}/idx "
            "(DATASETS.TRIALS selects fewer)"
        )
    modality, camid = SIDES[side]
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle.read().splitlines(), start=1):
            match = _LINE.match(line)
            if match is None:
                raise DatasetError(
                    f"{path} line {number}: expected '<path relative to RegDB/> <integer label>' "
                    f"separated by one space, got {line[:60]!r}"
                )
            image = os.path.normpath(os.path.join(folder, match.group(1)))
            if not os.path.isfile(image):
                raise DatasetError(f"{path} line {number}: image {image} not found")
            records.append(VIImageRecord(image, int(match.group(2)), camid, modality))
    if not records:
        raise DatasetError(f"{path}: expected one '<path> <label>' line per image, the file is empty")
    return records


def read_trial(folder, trial):
    """The Trial objects of both protocols for one trial (train relabelled 0..P-1 in sorted label order)."""
    splits = {(split, side): read_idx_file(folder, split, side, trial)
              for split in ("train", "test") for side in SIDES}
    train, _ = relabel_train(splits["train", "visible"] + splits["train", "thermal"])
    train = tuple(VIImageRecord(r.path, r.pid, r.camid, VISIBLE if r.camid == 0 else INFRARED) for r in train)
    visible, thermal = tuple(splits["test", "visible"]), tuple(splits["test", "thermal"])
    return {
        "visible_to_thermal": Trial(trial, visible, thermal, train),
        "thermal_to_visible": Trial(trial, thermal, visible, train),
    }


@register_dataset("regdb")
def build_regdb(root, trials=None):
    """RegDB with both search directions; ``trials``: DATASETS.TRIALS (1..10, default all)."""
    folder, layout = find_layout("regdb", root, CANDIDATES, lambda path: missing_entries(path, ENTRIES))
    chosen = select_trials("regdb", trials, TRIALS)
    per_trial = [read_trial(folder, trial) for trial in chosen]
    protocols = {protocol: [trial[protocol] for trial in per_trial] for protocol in per_trial[0]}
    first = per_trial[0]["visible_to_thermal"]
    dataset = VisibleInfraredDataset("regdb", folder, layout, first.train, protocols, "regdb")
    dataset.require_eval_splits(f"{folder}/idx/test_visible_*.txt", f"{folder}/idx/test_thermal_*.txt")
    return dataset
