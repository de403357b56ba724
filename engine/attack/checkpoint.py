"""The recovery attack's checkpoints: its identity, safe replacement on disk, and resuming from it.

Only the newest checkpoint is kept; the previous one is deleted once the new one is complete. It is
read on the CPU and handed to ignite as a dict, and a rerun with other settings is refused.

Each set of weights is on disk once: the checkpoint holds the optimizer, the trainer and the history
and names two plain state-dict files beside it, ``generator_<epoch>.pth`` (the current weights) and
``best_<epoch>.pth`` (the best epoch's, a hard link to the generator file of that epoch). The run
folder's ``Generator_weight.pth`` and ``Generator_weight_best.pth`` are hard links to them at the end.
Checkpoints written before, with the weights inside, still resume.
"""
import contextlib
import glob
import math
import os
import pickle
import re

import torch
from ignite.handlers import Checkpoint

from engine.common.checkpoint import AtomicCheckpointSaver, identity_changes
from utils.errors import CheckpointError, RunConflictError
from utils.file_io import atomic_link, atomic_write, latest_numbered_file, os_errors_as_output_errors

_CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")
_WEIGHT_FILE_PATTERN = re.compile(r"^(generator|best)_(\d+)\.pth$")
# The checkpoint's entry naming its weight files: {'generator': name, 'best': name (with a best epoch)}.
WEIGHT_FILES_KEY = "weight_files"


class AttackHistory:
    """Per-epoch training loss, validation L1 and test scores, and the test scores of the best epoch's
    weights; checkpointed so a resumed run keeps them."""

    def __init__(self, identity):
        self.identity = identity
        self.train_loss = {}
        self.validation_l1 = {}
        self.evaluations = {}
        self.best_evaluation = None

    def state_dict(self):
        return {"identity": dict(self.identity), "train_loss": dict(self.train_loss),
                "validation_l1": dict(self.validation_l1), "evaluations": dict(self.evaluations),
                "best_evaluation": self.best_evaluation}

    def load_state_dict(self, state):
        self.identity = dict(state["identity"])
        self.train_loss = {int(epoch): loss for epoch, loss in state["train_loss"].items()}
        self.validation_l1 = {int(epoch): loss for epoch, loss in state.get("validation_l1", {}).items()}
        self.evaluations = {int(epoch): record for epoch, record in state["evaluations"].items()}
        self.best_evaluation = state.get("best_evaluation")


class BestWeights:
    """The generator weights of the epoch with the lowest validation L1 (checkpointed for resuming)."""

    def __init__(self):
        self.epoch = -1
        self.loss = math.inf
        self.weights = {}

    def offer(self, epoch, loss, module):
        """Keep ``module``'s weights if ``loss`` is lower than the best so far (ties keep the earlier)."""
        if loss < self.loss:
            self.epoch, self.loss = epoch, float(loss)
            self.weights = {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}

    def state_dict(self):
        return {"epoch": self.epoch, "loss": self.loss, "weights": self.weights}

    def load_state_dict(self, state):
        self.epoch, self.loss, self.weights = int(state["epoch"]), float(state["loss"]), dict(state["weights"])


def run_identity(settings, train_pairs, reference_order, feature_model=""):
    """What must not change between an interrupted run and its resumption.

    The validation split and the identity loss appear only when used, so a checkpoint of an
    attack without them (an earlier version's) still resumes.
    """
    identity = {"generator": settings.generator, "ngf": settings.ngf, "optimizer": settings.optimizer,
                "lr": float(settings.lr), "mode": settings.mode, "seed": settings.seed,
                "shuffle": settings.shuffle and not reference_order,
                "reference_order": bool(reference_order),
                "train_batches": train_pairs.num_batches, "train_images": len(train_pairs),
                "image_shape": list(train_pairs.image_shape)}
    if settings.val_fraction > 0:
        identity["val_fraction"] = float(settings.val_fraction)
    if settings.mode == "identity":
        identity.update(identity_weight=float(settings.identity_weight), feature_model=feature_model)
    return identity


def _torch_save(obj, path):
    return atomic_write(path, lambda handle: torch.save(obj, handle))


class WeightFileCheckpointSaver(AtomicCheckpointSaver):
    """The attack's checkpoints, each set of weights in its own file (module docstring), written atomically.

    The generator's weights go to ``generator_<epoch>.pth``; the best epoch's to ``best_<epoch>.pth``,
    a hard link to that epoch's generator file when it is this epoch, kept from the earlier save
    otherwise; then the checkpoint, naming them, replaces the previous one, and only then are the
    weight files it no longer names deleted.
    """

    def __call__(self, checkpoint, filename, metadata=None):
        epoch = int(_CHECKPOINT_PATTERN.match(filename).group(1))
        rest = dict(checkpoint)
        names = {"generator": f"generator_{epoch}.pth"}
        generator_path = os.path.join(self.dirname, names["generator"])
        written = []  # removed again if the checkpoint cannot be completed: the previous one stays whole
        try:
            # On the CPU, so the published Generator_weight.pth (a link to this file) loads without a GPU.
            weights = {key: value.detach().cpu() for key, value in rest.pop("generator").items()}
            written.append(_torch_save(weights, generator_path))
            best = rest.get("best")
            if best is not None and best["epoch"] >= 0:
                best = dict(best)
                weights = best.pop("weights")
                names["best"] = f"best_{best['epoch'] + 1}.pth"  # ignite's epoch count, as the generator files
                best_path = os.path.join(self.dirname, names["best"])
                if best["epoch"] + 1 == epoch:  # the best is the epoch just finished
                    written.append(atomic_link(generator_path, best_path))
                elif not os.path.isfile(best_path):
                    written.append(_torch_save(weights, best_path))
                rest["best"] = best
            rest[WEIGHT_FILES_KEY] = names
            super().__call__(rest, filename, metadata)
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        for path in glob.glob(os.path.join(glob.escape(self.dirname), "*.pth")):
            name = os.path.basename(path)
            if _WEIGHT_FILE_PATTERN.match(name) and name not in names.values():
                with os_errors_as_output_errors(path), contextlib.suppress(FileNotFoundError):
                    os.remove(path)


def weight_file(checkpoint_dir, saved, role):
    """Path of the ``role`` ('generator' or 'best') weight file a checkpoint names, or None (inline weights)."""
    name = (saved.get(WEIGHT_FILES_KEY) or {}).get(role)
    return None if name is None else os.path.join(checkpoint_dir, name)


def attach_weight_files(saved, checkpoint_dir, path):
    """Put the weights a checkpoint names back into it, as ignite's ``load_objects`` expects them."""
    for role in ("generator", "best"):
        weights_path = weight_file(checkpoint_dir, saved, role)
        if weights_path is None:
            continue
        try:
            weights = torch.load(weights_path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
            reason = " ".join(str(err).split())[:200]
            raise CheckpointError(f"cannot read {weights_path}, the {role} weights of the attack checkpoint {path} "
                                  f"({reason}); delete {checkpoint_dir} to train afresh, or pass another "
                                  "--output") from None
        if role == "generator":
            saved["generator"] = weights
        else:
            saved["best"] = {**saved["best"], "weights": weights}
    saved.pop(WEIGHT_FILES_KEY, None)
    return saved


def latest_checkpoint(checkpoint_dir):
    """Path of the highest-epoch ``checkpoint_<epoch>.pt`` in the folder, or None."""
    return latest_numbered_file(checkpoint_dir, "checkpoint_", ".pt")


def read_checkpoint(path, mmap=False):
    """An attack checkpoint: a dict of tensors and containers; ``CheckpointError`` if unreadable."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        identity = saved["history"]["identity"]
        trained_epochs(saved)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError,
            ZeroDivisionError, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"cannot read the attack checkpoint {path} ({reason}); expected a "
                              "checkpoint written by recovery_attack.py: delete it to train "
                              "afresh, or pass another --output") from None
    if not isinstance(identity, dict):
        raise CheckpointError(f"the attack checkpoint {path} has no run description; delete it "
                              "to train afresh, or pass another --output")
    return saved


def resume_training(path, to_load, identity):
    """Load the checkpoint at ``path`` into the objects of ``to_load`` (ignite ``Checkpoint``).

    The file is read here, on the CPU and as weights only (``read_checkpoint``), and handed to
    ``Checkpoint.load_objects`` as a dict: given a path, ignite would ``torch.load`` it without
    ``map_location``. ``RunConflictError`` if it belongs to another attack than ``identity``.
    """
    saved = read_checkpoint(path)
    _check_identity(saved["history"]["identity"], identity, path)
    Checkpoint.load_objects(to_load, attach_weight_files(saved, os.path.dirname(path), path))
    return saved


def trained_epochs(saved):
    """Finished epochs of a checkpoint (ignite keeps iterations and the epoch length)."""
    trainer = saved["trainer"]
    return int(trainer["iteration"]) // int(trainer["epoch_length"])


def check_resumable(checkpoint_dir, identity, total_epochs):
    """(path, trained epochs) of the checkpoint a run would resume from, or (None, 0).

    ``RunConflictError`` when that checkpoint belongs to another attack or holds more epochs than
    ``total_epochs``; reads the file memory-mapped, so checking is cheap.
    """
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return None, 0
    saved = read_checkpoint(path, mmap=True)
    _check_identity(saved["history"]["identity"], identity, path)
    done = trained_epochs(saved)
    if done > total_epochs:
        raise RunConflictError(
            f"{path} holds a generator trained for {done} epochs, more than --total_epochs / "
            f"ATTACK.TOTAL_EPOCHS = {total_epochs}; pass --total_epochs {done} (or more) to "
            "finish from it, or another --output to train afresh")
    return path, done


def _check_identity(saved, current, checkpoint_path):
    details = identity_changes(saved, current)
    if details:
        raise RunConflictError(
            f"{checkpoint_path} was written by a different attack ({details}); pass the same "
            f"settings to resume it, or delete {os.path.dirname(checkpoint_path)} or pass another "
            "--output to start afresh")
