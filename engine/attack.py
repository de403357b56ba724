"""Recovery attack on saved original/protected pairs: train a generator G(protected) -> original.

The reference protocol (README, "recovery_attack.py"): pix2pix generator with a Tanh output, L1
to the original in the normalized space, Adam lr 1e-3, one saved batch file per step, 100 epochs,
test after epoch index 2 and the last. The 'strong' attacker regresses the original in pixel
space [0, 1] without Tanh, since a Tanh output cannot reach normalized targets outside [-1, 1]
(README, "What differs from the paper's code").

Training runs on an ignite Engine whose epoch meters are ignite metrics ('loss': the epoch's L1
per image, an ``Average``; 'images_per_s': a ``Frequency``), shown by the progress bar and
written to the log. After the evaluated epochs an event-filtered handler runs an evaluator Engine
over the test split, scored by ``evaluation.image_quality.ImageQuality``. A ``Checkpoint`` of
(generator, optimizer, trainer, history) after every epoch lets a rerun with the same arguments
resume from the last finished epoch. Only the newest checkpoint is kept, and the previous one is
deleted only once the new one is complete.

Bad input never costs finished work and never shows a traceback: settings, pair files (shapes,
NaN/infinity) and existing checkpoints are checked before anything is written, the output folder
is locked while the attack trains, and every file goes through ``utils.file_io``'s atomic writes
(an OS failure is an ``OutputError`` naming the file).
"""
import dataclasses
import glob
import json
import logging
import math
import os
import pickle
import re
import sys

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, ProgressBar
from ignite.handlers.checkpoint import BaseSaveHandler
from ignite.metrics import Average, Frequency
from ignite.metrics.metric import SingleEpochRunningBatchWise, reinit__is_reduced
from ignite.utils import setup_logger
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from configs import save_config
from data.img_npy import resolve_npy_dir, run_dir_of
from data.npy_pairs import PairDataset, SavedBatches, SavedBatchOrder
from data.transforms import normalize
from evaluation.image_quality import (PROTOCOLS, PSNR_CAP_DB, SSIM_KERNEL_SIZE, ImageQuality,
                                      to_pixels)
from modeling.generators import GENERATORS, build_generator
from utils.errors import (CheckpointError, ConfigError, DatasetError, NonFiniteError,
                          RunConflictError)
from utils.file_io import (FolderLock, atomic_save_image, atomic_torch_save, atomic_write,
                           atomic_write_text, os_errors_as_output_errors)

ATTACKERS = ("reference", "strong")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9
IMAGE_KINDS = ("protected", "recovered")
# The trainer's epoch meters (engine.state.metrics), shown by the progress bar and logged.
EPOCH_METERS = ("loss", "images_per_s")
# The evaluator's metric: the whole record of evaluate_generator.
QUALITY_METRIC = "quality"
LOGGER_NAME = "pixelfade.attack"

LOG_FILENAME = "log_recovery.txt"
RESULTS_JSON = "attack_results.json"
RESULTS_MARKDOWN = "attack_results.md"
CHECKPOINT_DIRNAME = "attack_ckpt"
GRID_DIRNAME = "rec_images"
# Beside, not over, the config.yaml that protect_image.py leaves in the same run folder.
CONFIG_FILENAME = "attack_config.yaml"
WEIGHT_FILENAMES = {"reference": "Generator_weight.pth", "strong": "Generator_weight_strong.pth"}
_CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")
LOCK_PURPOSE = "recovery_attack.py"


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """What defines one attacker's training (cfg.ATTACK plus the normalization of the pairs)."""

    generator: str = "unet_128"
    ngf: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    total_epochs: int = 100
    eval_epochs: tuple = (2,)
    mode: str = "reference"
    shuffle: bool = True
    seed: int = 0
    num_grids: int = 20
    pixel_mean: tuple = (0.485, 0.456, 0.406)
    pixel_std: tuple = (0.229, 0.224, 0.225)

    def __post_init__(self):
        _require(self.generator in GENERATORS, "ATTACK.GENERATOR",
                 f"one of {sorted(GENERATORS)}", self.generator)
        _require(self.optimizer in OPTIMIZERS, "ATTACK.OPTIMIZER", f"one of {OPTIMIZERS}",
                 self.optimizer)
        _require(self.mode in ATTACKERS, "ATTACK.MODE", f"one of {ATTACKERS}", self.mode)
        _require(_is_int(self.ngf) and self.ngf >= 1, "ATTACK.NGF", "a positive integer", self.ngf)
        _require(_is_int(self.total_epochs) and self.total_epochs >= 1, "ATTACK.TOTAL_EPOCHS",
                 "a positive integer", self.total_epochs)
        _require(_is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "ATTACK.LR",
                 "a positive number", self.lr)
        _require(all(_is_int(epoch) and epoch >= 0 for epoch in self.eval_epochs),
                 "ATTACK.EVAL_EPOCHS", "0-based epoch indices >= 0", list(self.eval_epochs))
        _require(_is_int(self.num_grids) and self.num_grids >= 0, "ATTACK.NUM_GRIDS",
                 "an integer >= 0", self.num_grids)
        _require(_is_int(self.seed), "ATTACK.SEED", "an integer", self.seed)
        _require(isinstance(self.shuffle, bool), "ATTACK.SHUFFLE", "True or False", self.shuffle)
        for key, values in (("INPUT.PIXEL_MEAN", self.pixel_mean),
                            ("INPUT.PIXEL_STD", self.pixel_std)):
            _require(len(values) == 3 and all(_is_number(value) for value in values), key,
                     "3 numbers", list(values))
        _require(all(value > 0 for value in self.pixel_std), "INPUT.PIXEL_STD",
                 "positive values", list(self.pixel_std))

    @classmethod
    def from_config(cls, cfg):
        attack = cfg.ATTACK
        return cls(generator=attack.GENERATOR, ngf=attack.NGF,
                   optimizer=str(attack.OPTIMIZER).lower(), lr=attack.LR,
                   total_epochs=attack.TOTAL_EPOCHS, eval_epochs=tuple(attack.EVAL_EPOCHS),
                   mode=attack.MODE, shuffle=attack.SHUFFLE, seed=attack.SEED,
                   num_grids=attack.NUM_GRIDS, pixel_mean=tuple(cfg.INPUT.PIXEL_MEAN),
                   pixel_std=tuple(cfg.INPUT.PIXEL_STD))

    @property
    def output_activation(self):
        return "tanh" if self.mode == "reference" else "none"

    def evaluated_epochs(self):
        """Sorted 0-based epoch indices scored on the test split; the last one always is."""
        wanted = {epoch for epoch in self.eval_epochs if epoch < self.total_epochs}
        return sorted(wanted | {self.total_epochs - 1})


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition, key, expected, got):
    if not condition:
        raise ConfigError(f"{key} must be {expected}, got {got!r}")


def available_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def loader_workers(configured):
    """DATALOADER.NUM_WORKERS capped at the usable CPUs (more only add processes and warnings)."""
    _require(_is_int(configured) and configured >= 0, "DATALOADER.NUM_WORKERS",
             "an integer >= 0", configured)
    return min(configured, available_cpus())


def build_optimizer(settings, parameters):
    """Adam (the reference) or SGD with momentum 0.9, at settings.lr."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=settings.lr)
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=SGD_MOMENTUM)


def attack_targets(originals, settings):
    """The generator's target: the normalized original, or its pixels for the strong attacker."""
    if settings.mode == "strong":
        return to_pixels(originals, settings.pixel_mean, settings.pixel_std)
    return originals


def recovered_normalized(outputs, settings):
    """Generator outputs as images in the normalized space, where all metrics start from.

    The strong attacker's output is a pixel image: clamped to [0, 1] as a stored image would be,
    then normalized like the originals.
    """
    if settings.mode == "strong":
        return normalize(outputs.clamp(0.0, 1.0), settings.pixel_mean, settings.pixel_std)
    return outputs


def make_batch_loader(pairs, order, device, num_workers=0):
    """One saved batch per step, in the sampler's order; workers prefetch, pinned for CUDA."""
    return DataLoader(SavedBatches(pairs), batch_size=None, sampler=order,
                      num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")


class ImageWeightedAverage(Average):
    """ignite's ``Average`` of per-batch means weighted by image count: ``update((mean, images))``.

    Sums ``mean * images`` in float64 on the metric's device, so the value is the mean per image
    however the saved batches differ in size.
    """

    @reinit__is_reduced
    def update(self, output):
        mean, images = output
        self.accumulator = self.accumulator + mean.detach().to(self.accumulator) * images
        self.num_examples += images


class ImagesPerSecond(Frequency):
    """ignite's ``Frequency`` of images since the epoch started, kept as a float (not an int)."""

    def completed(self, engine, name):
        engine.state.metrics[name] = float(self.compute())


def create_attack_trainer(generator, optimizer, settings, device):
    """ignite Engine of L1 steps with the epoch meters of ``EPOCH_METERS`` in ``state.metrics``.

    'loss': the L1 loss per image of the epoch so far; 'images_per_s': images per second since
    the epoch started. Both are updated after every step and reset when an epoch starts, so at
    EPOCH_COMPLETED they hold the whole epoch's values.
    """
    device = torch.device(device)
    l1_loss = torch.nn.L1Loss()

    def train_step(engine, batch):
        protected, originals = (tensor.to(device, non_blocking=True) for tensor in batch)
        generator.train()
        loss = l1_loss(generator(protected), attack_targets(originals, settings))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "batch_size": protected.shape[0]}

    trainer = Engine(train_step)
    # The engine's own messages go to the attack's log (stdout and log file), warnings and errors
    # only: its "terminating due to exception" line is kept in the log, never added to stderr.
    trainer.logger = logging.getLogger(f"{LOGGER_NAME}.trainer")
    trainer.logger.setLevel(logging.WARNING)
    ImageWeightedAverage(output_transform=lambda output: (output["loss"], output["batch_size"]),
                         device=device, skip_unrolling=True).attach(
        trainer, "loss", usage=SingleEpochRunningBatchWise())
    ImagesPerSecond(output_transform=lambda output: output["batch_size"]).attach(
        trainer, "images_per_s")
    return trainer


def grid_image(protected, recovered, originals):
    """Rows protected / recovered / original, min-max scaled as a whole (the reference's grid)."""
    rows = torch.cat([protected, recovered, originals]).detach().float().cpu()
    grid = make_grid(rows, nrow=protected.shape[0], padding=0, normalize=True)
    pixels = grid.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def create_attack_evaluator(generator, test_pairs, settings, device, grid_dir=None):
    """ignite Engine scoring ``generator`` on the test split; run it on ``range(num_batches)``.

    Each step recovers one saved test batch; ``ImageQuality`` scores the protected and the
    recovered images against the originals into ``state.metrics['quality']``. With ``grid_dir``,
    the first settings.num_grids batches are drawn as rows protected / recovered / original, each
    grid min-max normalized as a whole like the reference. A generator that outputs NaN or
    infinity (diverged training) raises ``NonFiniteError`` before any metric is computed.
    """
    device = torch.device(device)

    def eval_step(engine, position):
        with torch.no_grad():
            protected, originals = (tensor.to(device) for tensor in test_pairs.load_batch(position))
            outputs = generator(protected)
            if not bool(torch.isfinite(outputs).all()):
                protected_file = test_pairs.batch_files(position)[1]
                raise NonFiniteError(
                    f"[{settings.mode}] the generator's output for {protected_file} "
                    "holds NaN or infinity: training diverged; expected a lower learning rate "
                    f"(--lr / ATTACK.LR, now {settings.lr})")
            recovered = recovered_normalized(outputs, settings)
        return {"position": position, "original": originals,
                "candidates": {"protected": protected, "recovered": recovered}}

    evaluator = Engine(eval_step)
    # Silent: an error here reaches the trainer, whose logger reports it once.
    evaluator.logger = logging.getLogger(f"{LOGGER_NAME}.evaluator")
    evaluator.logger.setLevel(logging.CRITICAL)
    ImageQuality(IMAGE_KINDS, settings.pixel_mean, settings.pixel_std).attach(evaluator,
                                                                              QUALITY_METRIC)
    modes = {}

    @evaluator.on(Events.STARTED)
    def _eval_mode(engine):
        modes["training"] = generator.training
        generator.eval()

    @evaluator.on(Events.COMPLETED)
    def _restore_mode(engine):
        generator.train(modes["training"])

    if grid_dir is not None:
        @evaluator.on(Events.ITERATION_COMPLETED(
            event_filter=lambda engine, iteration: iteration <= settings.num_grids))
        def _save_grid(engine):
            out = engine.state.output
            candidates = out["candidates"]
            atomic_save_image(grid_image(candidates["protected"], candidates["recovered"],
                                         out["original"]),
                              os.path.join(grid_dir, f"{out['position']}.png"))

    return evaluator


def evaluate_generator(generator, test_pairs, settings, device, grid_dir=None):
    """Protected-vs-original and recovered-vs-original quality on the test split.

    Runs :func:`create_attack_evaluator` once; returns {'num_images', protocol: {image kind:
    {metric: mean}}}.
    """
    evaluator = create_attack_evaluator(generator, test_pairs, settings, device, grid_dir)
    evaluator.run(range(test_pairs.num_batches))
    return evaluator.state.metrics[QUALITY_METRIC]


class AttackHistory:
    """Per-epoch training loss and test scores; checkpointed so a resumed run keeps them."""

    def __init__(self, identity):
        self.identity = identity
        self.train_loss = {}
        self.evaluations = {}

    def state_dict(self):
        return {"identity": dict(self.identity), "train_loss": dict(self.train_loss),
                "evaluations": dict(self.evaluations)}

    def load_state_dict(self, state):
        self.identity = dict(state["identity"])
        self.train_loss = {int(epoch): loss for epoch, loss in state["train_loss"].items()}
        self.evaluations = {int(epoch): record for epoch, record in state["evaluations"].items()}


def run_identity(settings, train_pairs, reference_order):
    """What must not change between an interrupted run and its resumption."""
    return {"generator": settings.generator, "ngf": settings.ngf, "optimizer": settings.optimizer,
            "lr": float(settings.lr), "mode": settings.mode, "seed": settings.seed,
            "shuffle": settings.shuffle and not reference_order,
            "reference_order": bool(reference_order),
            "train_batches": train_pairs.num_batches, "train_images": len(train_pairs),
            "image_shape": list(train_pairs.image_shape)}


class AtomicCheckpointSaver(BaseSaveHandler):
    """ignite save handler: atomic writes through utils.file_io, deletions deferred.

    ignite's ``Checkpoint`` deletes the checkpoint it drops *before* writing the new one; a full
    disk or a kill in between would leave none. Here a deletion waits until the next checkpoint
    is complete, so the folder always holds a whole one.
    """

    def __init__(self, dirname):
        self.dirname = dirname
        self._pending_removal = []

    def __call__(self, checkpoint, filename, metadata=None):
        atomic_write(os.path.join(self.dirname, filename),
                     lambda handle: torch.save(checkpoint, handle))
        for old in self._pending_removal:
            if old != filename:
                path = os.path.join(self.dirname, old)
                with os_errors_as_output_errors(path):
                    if os.path.exists(path):
                        os.remove(path)
        self._pending_removal = []

    def remove(self, filename):
        self._pending_removal.append(filename)


def latest_checkpoint(checkpoint_dir):
    """Path of the highest-epoch ``checkpoint_<epoch>.pt`` in the folder, or None."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(checkpoint_dir), "checkpoint_*.pt")):
        match = _CHECKPOINT_PATTERN.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


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
    Checkpoint.load_objects(to_load, saved)


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
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
        raise RunConflictError(
            f"{checkpoint_path} was written by a different attack ({details}); pass the same "
            f"settings to resume it, or delete {os.path.dirname(checkpoint_path)} or pass another "
            "--output to start afresh")


def attack_log_dir(npy_dir, output=None):
    """``output`` if given, else the run folder holding img_npy (or the pair folder itself)."""
    return output or run_dir_of(npy_dir)


def get_attack_logger(log_dir):
    """Logger 'pixelfade.attack' writing to stdout and appending to ``<log_dir>/log_recovery.txt``."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    path = os.path.join(log_dir, LOG_FILENAME)
    with os_errors_as_output_errors(path):
        os.makedirs(log_dir, exist_ok=True)
        return setup_logger(LOGGER_NAME, stream=sys.stdout, filepath=path, reset=True,
                            distributed_rank=idist.get_rank())


def open_attack_pairs(npy_dir, settings, reference_order=False):
    """(train, test) PairDatasets, checked for what the attack needs, before anything is written.

    Every file of both splits must hold finite C x H x W images of one shape, with C the number
    of INPUT.PIXEL_MEAN values and H, W at least SSIM's window; ``DatasetError`` or
    ``NonFiniteError`` names the first file that does not.
    """
    train = PairDataset(npy_dir, "train", reference_order=reference_order, check_values=False)
    channels, height, width = train.image_shape
    first = train.batch_files(0)[0]
    if channels != len(settings.pixel_mean):
        raise DatasetError(f"{first} holds images with {channels} channels; expected "
                           f"{len(settings.pixel_mean)} (one per INPUT.PIXEL_MEAN value)")
    if min(height, width) < SSIM_KERNEL_SIZE:
        raise DatasetError(f"{first} holds {height} x {width} images; expected at least "
                           f"{SSIM_KERNEL_SIZE} x {SSIM_KERNEL_SIZE} pixels (SSIM's window)")
    test = PairDataset(npy_dir, "test", reference_order=reference_order,
                       image_shape=train.image_shape, check_values=False)
    train.check_values()
    test.check_values()
    return train, test


def run_attack(settings, npy_dir, log_dir, device="cpu", reference_order=False, num_workers=0,
               show_progress=True, logger=None, pairs=None):
    """Train and score one attacker (settings.mode); returns its entry of attack_results.json.

    ``pairs``: the (train, test) datasets of :func:`open_attack_pairs`, opened (and checked) here
    when not given. An existing checkpoint of this attacker under ``log_dir`` is checked before
    anything is written, then resumed from.
    """
    device = torch.device(device)
    train_pairs, test_pairs = pairs or open_attack_pairs(npy_dir, settings, reference_order)
    identity = run_identity(settings, train_pairs, reference_order)
    checkpoint_dir = os.path.join(log_dir, CHECKPOINT_DIRNAME, settings.mode)
    resume_path, _ = check_resumable(checkpoint_dir, identity, settings.total_epochs)
    logger = logger or get_attack_logger(log_dir)
    if reference_order and settings.shuffle:
        logger.info("--reference_order: saved batches are visited in sorted file order, unshuffled")

    torch.manual_seed(settings.seed)
    generator = build_generator(settings.generator, ngf=settings.ngf,
                                output_activation=settings.output_activation,
                                input_nc=train_pairs.image_shape[0],
                                output_nc=train_pairs.image_shape[0]).to(device)
    optimizer = build_optimizer(settings, generator.parameters())
    trainer = create_attack_trainer(generator, optimizer, settings, device)
    if show_progress and idist.get_rank() == 0:
        ProgressBar(persist=False, desc=f"attack[{settings.mode}]").attach(
            trainer, metric_names=list(EPOCH_METERS))
    history = AttackHistory(identity)
    order = SavedBatchOrder(train_pairs.num_batches, identity["shuffle"], settings.seed)
    loader = make_batch_loader(train_pairs, order, device, num_workers)
    evaluated = set(settings.evaluated_epochs())
    grid_dir = os.path.join(log_dir, GRID_DIRNAME, settings.mode)
    weight_path = os.path.join(log_dir, WEIGHT_FILENAMES[settings.mode])

    @trainer.on(Events.EPOCH_STARTED)
    def _set_batch_order(engine):
        order.set_epoch(engine.state.epoch)

    # Both run before the checkpointer (handlers fire in the order they were added): a diverged
    # epoch stops the run and the checkpoint of the last good epoch stays.
    @trainer.on(Events.EPOCH_COMPLETED)
    def _log_epoch(engine):
        epoch_index = engine.state.epoch - 1
        loss = engine.state.metrics["loss"]
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"[{settings.mode}] the L1 loss of epoch {epoch_index} is {loss}: training "
                f"diverged; expected a lower learning rate (--lr / ATTACK.LR, now {settings.lr}); "
                f"the epochs finished before it stay in {checkpoint_dir}")
        history.train_loss[epoch_index] = loss
        logger.info(f"[{settings.mode}] epoch {epoch_index}/{settings.total_epochs - 1} "
                    f"L1 loss {loss:.6f}, {engine.state.metrics['images_per_s']:.1f} images/s")

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=lambda _, epoch: epoch - 1 in evaluated))
    def _evaluate(engine):
        epoch_index = engine.state.epoch - 1
        is_last = epoch_index == settings.total_epochs - 1
        record = evaluate_generator(generator, test_pairs, settings, device,
                                    grid_dir=grid_dir if is_last else None)
        history.evaluations[epoch_index] = record
        _log_record(logger, settings.mode, epoch_index, record)
        atomic_torch_save(_cpu_state_dict(generator), weight_path)
        write_results(log_dir, settings.mode, _results_entry(settings, history))

    to_save = {"generator": generator, "optimizer": optimizer, "trainer": trainer,
               "history": history}
    checkpointer = Checkpoint(to_save, AtomicCheckpointSaver(checkpoint_dir), n_saved=1,
                              include_self=True,
                              global_step_transform=lambda engine, _: engine.state.epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)

    if resume_path is not None:
        resume_training(resume_path, {**to_save, "checkpointer": checkpointer}, identity)
        done = trainer.state.epoch
        logger.info(f"[{settings.mode}] resuming from {resume_path} after epoch {done}")
        if done == settings.total_epochs:
            logger.info(f"[{settings.mode}] training already finished; nothing left to run")
            atomic_torch_save(_cpu_state_dict(generator), weight_path)
            return write_results(log_dir, settings.mode, _results_entry(settings, history))

    logger.info(f"[{settings.mode}] {settings.generator} (ngf {settings.ngf}, "
                f"{settings.output_activation} output) on {len(train_pairs)} train images in "
                f"{train_pairs.num_batches} saved batches, {settings.optimizer} lr {settings.lr}, "
                f"{settings.total_epochs} epochs on {device}, {num_workers} loader workers")
    trainer.run(loader, max_epochs=settings.total_epochs)
    atomic_torch_save(_cpu_state_dict(generator), weight_path)
    logger.info(f"[{settings.mode}] generator weights: {weight_path}")
    return write_results(log_dir, settings.mode, _results_entry(settings, history))


def run_recovery_attack(cfg, npy_path, attackers, device, output=None, reference_order=False,
                        show_progress=True):
    """The CLI's work: check everything, lock the output folder, run each attacker in turn.

    Settings, pair files and existing checkpoints of every attacker are checked before the first
    file is written (a failed start leaves no log file behind); a second attack on the same
    output folder is refused while this one runs.
    """
    unknown = [attacker for attacker in attackers if attacker not in ATTACKERS]
    if unknown or not attackers:
        raise ConfigError(f"--attacker / ATTACK.MODE: expected attackers among {ATTACKERS}, "
                          f"got {list(attackers)}")
    base_settings = AttackSettings.from_config(cfg)
    num_workers = loader_workers(cfg.DATALOADER.NUM_WORKERS)
    npy_dir = resolve_npy_dir(npy_path)
    pairs = open_attack_pairs(npy_dir, base_settings, reference_order)
    log_dir = attack_log_dir(npy_dir, output)
    settings_of = {attacker: dataclasses.replace(base_settings, mode=attacker)
                   for attacker in attackers}
    with FolderLock(log_dir, purpose=LOCK_PURPOSE):
        for attacker, settings in settings_of.items():
            check_resumable(os.path.join(log_dir, CHECKPOINT_DIRNAME, attacker),
                            run_identity(settings, pairs[0], reference_order),
                            settings.total_epochs)
        logger = get_attack_logger(log_dir)
        config_path = save_config(cfg, log_dir, CONFIG_FILENAME)
        logger.info(f"pairs from {npy_dir}; results, logs and checkpoints in {log_dir}; "
                    f"config saved to {config_path}")
        results = {}
        for attacker, settings in settings_of.items():
            results[attacker] = run_attack(settings, npy_dir, log_dir, device=device,
                                           reference_order=reference_order,
                                           num_workers=num_workers, show_progress=show_progress,
                                           logger=logger, pairs=pairs)
        logger.info(f"results: {os.path.join(log_dir, RESULTS_JSON)} and "
                    f"{os.path.join(log_dir, RESULTS_MARKDOWN)}\n"
                    + results_markdown(read_results(log_dir)))
    return results


def _cpu_state_dict(module):
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


def _results_entry(settings, history):
    return {"settings": dataclasses.asdict(settings),
            "train_loss": {str(epoch): loss for epoch, loss in sorted(history.train_loss.items())},
            "evaluations": {str(epoch): {"epoch": epoch, **record}
                            for epoch, record in sorted(history.evaluations.items())}}


def _log_record(logger, attacker, epoch_index, record):
    for protocol in PROTOCOLS:
        for kind in IMAGE_KINDS:
            values = record[protocol][kind]
            logger.info(f"[{attacker}] epoch {epoch_index} {protocol} {kind} vs original: "
                        f"psnr:{values['psnr']:.2f}  mse:{values['mse']:.4f}  "
                        f"ssim:{values['ssim']:.2f}")


def read_results(log_dir):
    """The attackers' entries of ``<log_dir>/attack_results.json`` ({} if absent or invalid)."""
    json_path = os.path.join(log_dir, RESULTS_JSON)
    if not os.path.isfile(json_path):
        return {}
    try:
        with open(json_path) as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        logging.getLogger(LOGGER_NAME).warning(f"{json_path} cannot be read as JSON; rewriting it")
        return {}
    return results if isinstance(results, dict) else {}


def write_results(log_dir, attacker, entry):
    """Put one attacker's entry into attack_results.json (others kept) and redraw the Markdown."""
    results = read_results(log_dir)
    results[attacker] = entry
    atomic_write_text(json.dumps(results, indent=2, sort_keys=True) + "\n",
                      os.path.join(log_dir, RESULTS_JSON))
    atomic_write_text(results_markdown(results), os.path.join(log_dir, RESULTS_MARKDOWN))
    return entry


PROTOCOL_TITLES = {
    "reference_normalisation": "Reference protocol: each batch min-max scaled to [0, 1]",
    "pixel_space": "Pixel space: ImageNet normalisation undone, pixels clamped to [0, 1]",
}
PROTOCOL_NOTES = {
    "reference_normalisation": (
        "As the reference script computes it: each batch tensor (protected, recovered and "
        "original, each on its own) is min-max scaled to [0, 1] as a whole, then piq PSNR and "
        "SSIM (data_range 1) and the MSE are taken per batch and averaged over batches weighted "
        "by their image counts."),
    "pixel_space": (
        "What a viewer of the stored images sees: the ImageNet normalisation (INPUT.PIXEL_MEAN, "
        "INPUT.PIXEL_STD) is undone and pixels are clamped to [0, 1]; piq PSNR (capped at "
        f"{PSNR_CAP_DB:.0f} dB for identical images), SSIM (data_range 1) and MSE per image, "
        "averaged over the images."),
}
ROWS_NOTE = (
    "Rows: `protected` = the stored protected test image vs its original (what the protection "
    "leaves); `recovered` = the attacker's generator output from the protected image vs the "
    "original (what an attacker gets back). Higher PSNR/SSIM and lower MSE mean closer to the "
    "original, i.e. less privacy. `attacker`: reference = the paper's (Tanh output, L1 to the "
    "normalised original); strong = no Tanh, L1 to the original's pixels, output clamped to "
    "[0, 1]. `epoch`: 0-based index of the epoch after which the test split was scored; "
    "`images`: test images scored.")


def results_markdown(results):
    """One Markdown table per protocol, each followed by what its rows and columns mean."""
    lines = ["# Recovery attack results", ""]
    for protocol in PROTOCOLS:
        lines += [f"## {PROTOCOL_TITLES[protocol]}", "",
                  "| attacker | epoch | images | image vs original | PSNR (dB) | SSIM | MSE |",
                  "|---|---|---|---|---|---|---|"]
        for attacker in sorted(results):
            evaluations = results[attacker].get("evaluations", {})
            for epoch in sorted(evaluations, key=int):
                record = evaluations[epoch]
                for kind in IMAGE_KINDS:
                    values = record[protocol][kind]
                    lines.append(f"| {attacker} | {epoch} | {record['num_images']} | {kind} | "
                                 f"{values['psnr']:.2f} | {values['ssim']:.4f} | "
                                 f"{values['mse']:.4f} |")
        lines += ["", f"{ROWS_NOTE} {PROTOCOL_NOTES[protocol]}", ""]
    return "\n".join(lines)
