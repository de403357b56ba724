"""Where the recovery attack writes: the file and folder names of its output folder, in one place."""
import os

from data.img_npy import run_dir_of

LOG_FILENAME = "log_recovery.txt"
CHECKPOINT_DIRNAME = "attack_ckpt"
GRID_DIRNAME = "rec_images"
# Beside, not over, the config.yaml that protect_image.py leaves in the same run folder.
CONFIG_FILENAME = "attack_config.yaml"
WEIGHT_FILENAMES = {"reference": "Generator_weight.pth", "strong": "Generator_weight_strong.pth",
                    "identity": "Generator_weight_identity.pth"}
LOCK_PURPOSE = "recovery_attack.py"


def attack_log_dir(npy_dir, output=None):
    """``output`` if given, else the run folder holding img_npy (or the pair folder itself)."""
    return output or run_dir_of(npy_dir)


def checkpoint_dir(log_dir, mode):
    return os.path.join(log_dir, CHECKPOINT_DIRNAME, mode)


def grid_dir(log_dir, mode):
    return os.path.join(log_dir, GRID_DIRNAME, mode)


def weight_path(log_dir, mode):
    """The published weights of attacker ``mode``'s last epoch."""
    return os.path.join(log_dir, WEIGHT_FILENAMES[mode])


def best_weight_path(path):
    """Where the weights of the epoch with the lowest validation L1 go, beside the last epoch's."""
    stem, extension = os.path.splitext(path)
    return f"{stem}_best{extension}"
