"""One checkpoint per trial: ``{trial}`` in TEST.WEIGHT (RegDB's practice: each trial is its own train split).

Shared by the protection run (one model per trial) and the attack (the first selected trial's model,
the one whose train split gave the attack's training pairs).
"""
import os

from data.datasets import regdb, sysu_mm01
from data.datasets.visible_infrared import select_trials
from data.splits import TRIAL_FIELD, per_trial
from utils.errors import CheckpointError

TRIALS = {"sysu_mm01": sysu_mm01.TRIALS, "regdb": regdb.TRIALS}
__all__ = ["per_trial", "trial_checkpoints", "trial_checkpoints_identity", "trial_numbers"]


def trial_numbers(cfg):
    return select_trials(cfg.DATASETS.NAMES, list(cfg.DATASETS.TRIALS), TRIALS[cfg.DATASETS.NAMES])


def trial_checkpoints(cfg):
    """``{trial: checkpoint path}`` of ``{trial}`` in TEST.WEIGHT; a missing file names the trial and the path."""
    paths = {}
    for trial in trial_numbers(cfg):
        path = cfg.TEST.WEIGHT.replace(TRIAL_FIELD, str(trial))
        if not os.path.isfile(path):
            raise CheckpointError(
                f"Re-ID checkpoint of trial {trial} not found: {path} (--reid_ckpt_path / TEST.WEIGHT with "
                f"{TRIAL_FIELD}; DATASETS.TRIALS selects fewer trials)"
            )
        paths[trial] = path
    return paths


def trial_checkpoints_identity(cfg, digest):
    """What identifies the per-trial weights: each file's name and ``digest`` (sha256 hex)."""
    return "; ".join(f"trial {trial}: {os.path.basename(path)} sha256={digest(path)[:16]}"
                     for trial, path in trial_checkpoints(cfg).items())
