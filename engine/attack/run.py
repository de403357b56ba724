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
import logging
import math
import os
import sys

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.metrics import Average, Frequency
from ignite.metrics.metric import SingleEpochRunningBatchWise, reinit__is_reduced
from ignite.utils import setup_logger
from torch.utils.data import DataLoader

from configs import save_config
from data.img_npy import resolve_npy_dir, run_dir_of
from data.npy_pairs import PairDataset, SavedBatches, SavedBatchOrder, identity_rows, split_by_identity
from data.transforms import normalize
from engine.attack.inversion import invert_protected, relative_feature_error
from engine.attack.models import (
    authorization_model,
    evaluator_models,
    identity_model,
    privacy_information,
    query_count,
    scoring_config,
)
from engine.attack.results import (
    IMAGE_KINDS,
    RESULTS_JSON,
    RESULTS_MARKDOWN,
    log_record,
    read_results,
    results_entry,
    results_markdown,
    write_privacy,
    write_results,
)
from engine.attack.settings import (
    ATTACKERS,
    LEARNED_ATTACKERS,
    LOGGER_NAME,
    AttackSettings,
    build_optimizer,
    loader_workers,
)
from engine.attack.checkpoint import (
    AttackHistory,
    BestWeights,
    WeightFileCheckpointSaver,
    check_resumable,
    latest_checkpoint,
    read_checkpoint,
    resume_training,
    run_identity,
    weight_file,
)
from evaluation.image_quality import SSIM_KERNEL_SIZE, ImageQuality, to_pixels
from evaluation.privacy import PrivacyScorer
from modeling.generators import build_generator
from utils.errors import ConfigError, DatasetError, NonFiniteError
from utils.file_io import FolderLock, atomic_link, atomic_torch_save, os_errors_as_output_errors
from utils.grids import grid_image, save_labelled_grid
from utils.progress import attach_progress

# The trainer's epoch meters (engine.state.metrics), shown by the progress bar and logged.
EPOCH_METERS = ("loss", "images_per_s")
# The evaluator's metric: the whole record of evaluate_generator.
QUALITY_METRIC = "quality"

LOG_FILENAME = "log_recovery.txt"
CHECKPOINT_DIRNAME = "attack_ckpt"
GRID_DIRNAME = "rec_images"
# Beside, not over, the config.yaml that protect_image.py leaves in the same run folder.
CONFIG_FILENAME = "attack_config.yaml"
WEIGHT_FILENAMES = {"reference": "Generator_weight.pth", "strong": "Generator_weight_strong.pth",
                    "identity": "Generator_weight_identity.pth"}
LOCK_PURPOSE = "recovery_attack.py"
# The rows of a rec_images/ grid, top to bottom.


def best_weight_path(weight_path):
    """Where the weights of the epoch with the lowest validation L1 go, beside the last epoch's."""
    stem, extension = os.path.splitext(weight_path)
    return f"{stem}_best{extension}"


def attack_targets(originals, settings):
    """The generator's target: the normalized original, or its pixels (strong, identity)."""
    if settings.pixel_targets:
        return to_pixels(originals, settings.pixel_mean, settings.pixel_std)
    return originals


def recovered_normalized(outputs, settings):
    """Generator outputs as images in the normalized space, where all metrics start from.

    The strong and identity attackers' output is a pixel image: clamped to [0, 1] as a stored image
    would be, then normalized like the originals.
    """
    if settings.pixel_targets:
        return normalize(outputs.clamp(0.0, 1.0), settings.pixel_mean, settings.pixel_std)
    return outputs


def make_batch_loader(batches, order, device, num_workers=0):
    """One saved batch (a ``SavedBatches`` item) per step, in the sampler's order; workers prefetch,
    pinned for CUDA."""
    return DataLoader(batches, batch_size=None, sampler=order,
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


def identity_loss(feature_model, outputs, originals, settings):
    """||g(G(x_p)) - g(x)||^2 / ||g(x)||^2, averaged over the batch; g takes normalised images.

    Relative to the original's feature norm, so one ATTACK.IDENTITY_WEIGHT means the same for Re-ID
    models whose feature scales differ by orders of magnitude (an untrained AGW's squared error is
    in the tens where the L1 is below 1). The generator's pixel output is normalised unclamped, so
    the gradient reaches every pixel.
    """
    with torch.no_grad():
        target = feature_model(originals).float()
    features = feature_model(normalize(outputs, settings.pixel_mean, settings.pixel_std)).float()
    return relative_feature_error(features, target).mean()


def create_attack_trainer(generator, optimizer, settings, device, feature_model=None):
    """ignite Engine of L1 steps with the epoch meters of ``EPOCH_METERS`` in ``state.metrics``.

    'loss': the loss per image of the epoch so far (L1, plus ATTACK.IDENTITY_WEIGHT times the
    feature loss of :func:`identity_loss` through ``feature_model`` for the identity attacker);
    'images_per_s': images per second since the epoch started. Both are updated after every step
    and reset when an epoch starts, so at EPOCH_COMPLETED they hold the whole epoch's values.
    """
    device = torch.device(device)
    l1_loss = torch.nn.L1Loss()

    def train_step(engine, batch):
        protected, originals = (tensor.to(device, non_blocking=True) for tensor in batch)
        generator.train()
        outputs = generator(protected)
        loss = l1_loss(outputs, attack_targets(originals, settings))
        if feature_model is not None:
            loss = loss + settings.identity_weight * identity_loss(feature_model, outputs, originals, settings)
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
            save_labelled_grid(grid_image(candidates["protected"], candidates["recovered"], out["original"]),
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


def attack_log_dir(npy_dir, output=None):
    """``output`` if given, else the run folder holding img_npy (or the pair folder itself)."""
    return output or run_dir_of(npy_dir)


def get_attack_logger(log_dir):
    """Logger 'pixelfade.attack' writing to stderr and appending to ``<log_dir>/log_recovery.txt``."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    path = os.path.join(log_dir, LOG_FILENAME)
    with os_errors_as_output_errors(path):
        os.makedirs(log_dir, exist_ok=True)
        return setup_logger(LOGGER_NAME, stream=sys.stderr, filepath=path, reset=True,
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


def validation_l1(generator, batches, settings, device):
    """Mean L1 per image of the generator on held-out batches, in its training target's space."""
    device = torch.device(device)
    training = generator.training
    generator.eval()
    total, images = 0.0, 0
    with torch.no_grad():
        for item in range(len(batches)):
            protected, originals = (tensor.to(device) for tensor in batches[item])
            error = (generator(protected) - attack_targets(originals, settings)).abs()
            total += float(error.flatten(1).mean(dim=1).double().sum())
            images += protected.shape[0]
    generator.train(training)
    return total / images


def train_and_validation(train_pairs, settings):
    """(train batches, validation batches or None, held-out identities) of the train split.

    With ATTACK.VAL_FRACTION > 0, that share of the train identities (seeded by ATTACK.SEED) is
    held out: their images form the validation part, the others the training part.
    """
    if settings.val_fraction <= 0:
        return SavedBatches(train_pairs), None, []
    pids = [pid for position in range(train_pairs.num_batches) for pid in train_pairs.load_labels(position)[0]]
    held_out = split_by_identity(pids, settings.val_fraction, settings.seed)
    train_rows, validation_rows = identity_rows(train_pairs, held_out)
    return SavedBatches(train_pairs, train_rows), SavedBatches(train_pairs, validation_rows), held_out


def _built_generator(settings, image_shape, device):
    return build_generator(settings.generator, ngf=settings.ngf, output_activation=settings.output_activation,
                           input_nc=image_shape[0], output_nc=image_shape[0]).to(device)


def run_attack(settings, npy_dir, log_dir, device="cpu", reference_order=False, num_workers=0,
               show_progress=True, logger=None, pairs=None, feature_model=None, feature_label=""):
    """Train and score one learned attacker (settings.mode); returns its entry of attack_results.json.

    ``pairs``: the (train, test) datasets of :func:`open_attack_pairs`, opened (and checked) here
    when not given. An existing checkpoint of this attacker under ``log_dir`` is checked before
    anything is written, then resumed from. With a validation split, the weights of the epoch with
    the lowest validation L1 are kept too and scored on the test split at the end (entry 'best').
    ``feature_model`` (g, labelled ``feature_label``) is the identity attacker's Re-ID model.
    """
    device = torch.device(device)
    train_pairs, test_pairs = pairs or open_attack_pairs(npy_dir, settings, reference_order)
    identity = run_identity(settings, train_pairs, reference_order, feature_label)
    checkpoint_dir = os.path.join(log_dir, CHECKPOINT_DIRNAME, settings.mode)
    resume_path, _ = check_resumable(checkpoint_dir, identity, settings.total_epochs)
    train_batches, validation_batches, held_out = train_and_validation(train_pairs, settings)
    logger = logger or get_attack_logger(log_dir)
    if reference_order and settings.shuffle:
        logger.info("--reference_order: saved batches are visited in sorted file order, unshuffled")

    torch.manual_seed(settings.seed)
    generator = _built_generator(settings, train_pairs.image_shape, device)
    optimizer = build_optimizer(settings, generator.parameters())
    trainer = create_attack_trainer(generator, optimizer, settings, device,
                                    feature_model if settings.mode == "identity" else None)
    if show_progress and idist.get_rank() == 0:
        attach_progress(trainer, f"attack[{settings.mode}]", metric_names=list(EPOCH_METERS))
    history = AttackHistory(identity)
    best = BestWeights()
    order = SavedBatchOrder(len(train_batches), identity["shuffle"], settings.seed)
    loader = make_batch_loader(train_batches, order, device, num_workers)
    evaluated = set(settings.evaluated_epochs())
    grid_dir = os.path.join(log_dir, GRID_DIRNAME, settings.mode)
    weight_path = os.path.join(log_dir, WEIGHT_FILENAMES[settings.mode])
    loss_name = "L1 + identity loss" if settings.mode == "identity" else "L1 loss"

    @trainer.on(Events.EPOCH_STARTED)
    def _set_batch_order(engine):
        order.set_epoch(engine.state.epoch)

    # These run before the checkpointer (handlers fire in the order they were added): a diverged
    # epoch stops the run and the checkpoint of the last good epoch stays.
    @trainer.on(Events.EPOCH_COMPLETED)
    def _log_epoch(engine):
        epoch_index = engine.state.epoch - 1
        loss = engine.state.metrics["loss"]
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"[{settings.mode}] the {loss_name} of epoch {epoch_index} is {loss}: training "
                f"diverged; expected a lower learning rate (--lr / ATTACK.LR, now {settings.lr}); "
                f"the epochs finished before it stay in {checkpoint_dir}")
        history.train_loss[epoch_index] = loss
        message = (f"[{settings.mode}] epoch {epoch_index}/{settings.total_epochs - 1} {loss_name} {loss:.6f}, "
                   f"{engine.state.metrics['images_per_s']:.1f} images/s")
        if validation_batches is not None:
            history.validation_l1[epoch_index] = validation_l1(generator, validation_batches, settings, device)
            best.offer(epoch_index, history.validation_l1[epoch_index], generator)
            message += f", validation L1 {history.validation_l1[epoch_index]:.6f} (best: epoch {best.epoch})"
        logger.info(message)

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=lambda _, epoch: epoch - 1 in evaluated))
    def _evaluate(engine):
        epoch_index = engine.state.epoch - 1
        is_last = epoch_index == settings.total_epochs - 1
        record = evaluate_generator(generator, test_pairs, settings, device,
                                    grid_dir=grid_dir if is_last else None)
        history.evaluations[epoch_index] = record
        log_record(logger, settings.mode, epoch_index, record)
        write_results(log_dir, settings.mode, results_entry(settings, history))

    to_save = {"generator": generator, "optimizer": optimizer, "trainer": trainer,
               "history": history}
    if validation_batches is not None:
        to_save["best"] = best
    checkpointer = Checkpoint(to_save, WeightFileCheckpointSaver(checkpoint_dir), n_saved=1,
                              include_self=True,
                              global_step_transform=lambda engine, _: engine.state.epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)

    if resume_path is not None:
        resume_training(resume_path, {**to_save, "checkpointer": checkpointer}, identity)
        done = trainer.state.epoch
        logger.info(f"[{settings.mode}] resuming from {resume_path} after epoch {done}")
        if done == settings.total_epochs:
            logger.info(f"[{settings.mode}] training already finished; nothing left to run")
            return _finish(generator, best, history, settings, test_pairs, weight_path, log_dir, device, logger)

    validation_note = "; every train pair trains it, no validation split (ATTACK.VAL_FRACTION 0)"
    if validation_batches is not None:
        validation_note = (f"; {len(held_out)} identities held out for validation "
                           f"({sum(len(rows) for rows in validation_batches.rows.values())} images)")
    logger.info(f"[{settings.mode}] {settings.generator} (ngf {settings.ngf}, "
                f"{settings.output_activation} output) on {len(train_pairs)} train images in "
                f"{train_pairs.num_batches} saved batches{validation_note}, {settings.optimizer} lr {settings.lr}, "
                f"{settings.total_epochs} epochs on {device}, {num_workers} loader workers")
    trainer.run(loader, max_epochs=settings.total_epochs)
    logger.info(f"[{settings.mode}] generator weights: {weight_path}")
    return _finish(generator, best, history, settings, test_pairs, weight_path, log_dir, device, logger)


def _publish_weights(checkpoint_dir, generator, best, weight_path):
    """``Generator_weight*.pth`` (and ``*_best.pth``): hard links to the last checkpoint's weight files.

    Written once, at the end, and never a second copy of the same weights; a checkpoint of an earlier
    version (weights inside) or a file system without links gets the weights saved from memory.
    """
    saved = read_checkpoint(latest_checkpoint(checkpoint_dir), mmap=True)
    targets = [("generator", weight_path, lambda: _cpu_state_dict(generator))]
    if best.epoch >= 0:
        targets.append(("best", best_weight_path(weight_path), lambda: best.weights))
    for role, path, in_memory in targets:
        source = weight_file(checkpoint_dir, saved, role)
        if source is not None and os.path.isfile(source):
            atomic_link(source, path)
        else:
            atomic_torch_save(in_memory(), path)


def _finish(generator, best, history, settings, test_pairs, weight_path, log_dir, device, logger):
    """Publish the last (and best) weights, score the best epoch's on the test split once, write the entry."""
    _publish_weights(os.path.join(log_dir, CHECKPOINT_DIRNAME, settings.mode), generator, best, weight_path)
    if best.epoch >= 0 and (history.best_evaluation or {}).get("epoch") != best.epoch:
        scored = _built_generator(settings, test_pairs.image_shape, device)
        scored.load_state_dict(best.weights)
        record = evaluate_generator(scored, test_pairs, settings, device)
        history.best_evaluation = {"epoch": best.epoch, "validation_l1": best.loss, **record}
        log_record(logger, f"{settings.mode}, best epoch", best.epoch, record)
    return write_results(log_dir, settings.mode, results_entry(settings, history))


def scored_generator(settings, log_dir, image_shape, device):
    """(generator, epoch, selection): the best epoch's weights with a validation split, else the last's."""
    weight_path = os.path.join(log_dir, WEIGHT_FILENAMES[settings.mode])
    entry = read_results(log_dir).get(settings.mode, {})
    best = entry.get("best")
    if best is not None and os.path.isfile(best_weight_path(weight_path)):
        path, epoch, selection = best_weight_path(weight_path), best["epoch"], "best_validation"
    else:
        path, epoch, selection = weight_path, settings.total_epochs - 1, "last"
    generator = _built_generator(settings, image_shape, device)
    generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    generator.eval()
    return generator, epoch, selection


def generator_recovery(generator, settings):
    """protected -> recovered (normalised) through a trained generator, as the privacy scorer calls it."""
    return lambda protected: recovered_normalized(generator(protected), settings)


def dataset_mean_image(train_pairs, settings):
    """The train split's mean original image in pixel space (1 x C x H x W): the inversion's start."""
    total, count = 0.0, 0
    for position in range(train_pairs.num_batches):
        _, originals = train_pairs.load_batch(position)
        total = total + to_pixels(originals, settings.pixel_mean, settings.pixel_std).double().sum(dim=0)
        count += originals.shape[0]
    return (total / count).float().unsqueeze(0)


def run_inversion(settings, scorer, model, train_pairs, log_dir, device, logger):
    """The white-box attacker over the query images: (entry, privacy row with its per-image cost)."""
    start = dataset_mean_image(train_pairs, settings) if settings.inversion_init == "mean" else None
    totals = {"seconds": 0.0, "images": 0, "forward": 0, "backward": 0, "error_start": 0.0, "error_end": 0.0}

    def recover(protected):
        recovered, stats = invert_protected(model, protected, start, settings, device)
        totals["seconds"] += stats["seconds"]
        totals["images"] += protected.shape[0]
        totals["forward"], totals["backward"] = stats["forward"], stats["backward"]
        totals["error_start"] += float(stats["feature_error_start"].sum())
        totals["error_end"] += float(stats["feature_error_end"].sum())
        return recovered

    logger.info(f"[inversion] {settings.inversion_steps} steps per image from the "
                f"{'train mean image' if start is not None else 'protected image'}, lr {settings.inversion_lr}, "
                f"TV weight {settings.inversion_tv}, on {scorer.num_query} query images")
    row = scorer.score(recover, grid_dir=os.path.join(log_dir, GRID_DIRNAME, "inversion"),
                       num_grids=settings.num_grids)
    images = totals["images"]
    cost = {"ms_per_image": 1000.0 * totals["seconds"] / images, "forward": totals["forward"],
            "backward": totals["backward"], "device": str(device)}
    entry = {"settings": dataclasses.asdict(settings), "cost": cost,
             "feature_error": {"start": totals["error_start"] / images, "end": totals["error_end"] / images}}
    logger.info(f"[inversion] relative feature error {entry['feature_error']['start']:.4f} -> "
                f"{entry['feature_error']['end']:.4f}; {cost['ms_per_image']:.1f} ms per image "
                f"({cost['forward']} forward, {cost['backward']} backward passes)")
    return entry, {**row, "epoch": None, "selection": "none", "cost": cost}


def prepare_privacy(cfg, npy_dir, attackers, settings, device, logger=None):
    """The models and scorer of the privacy table, built (and so checked) before anything is written.

    Returns (scorer, authorization model, its description, identity model and label or (None, '')).
    The scorer is None when only the reference and strong attackers run on pairs whose protect run
    is unknown (no config.yaml beside img_npy, no ATTACK.AUTH_MODEL and ATTACK.NUM_QUERY): then
    there is no privacy table, as before this table existed.
    """
    run_dir = run_dir_of(npy_dir)
    if not privacy_information(cfg, run_dir) and set(attackers) <= {"reference", "strong"}:
        return None, None, "not identified", None, ""
    test_pairs = PairDataset(npy_dir, "test", check_values=False)
    num_query = query_count(cfg, run_dir, len(test_pairs))
    authorization, description = authorization_model(cfg, run_dir, device, logger)
    evaluators = evaluator_models(cfg, run_dir, authorization, device, logger)
    feature_model, feature_label = None, ""
    if "identity" in attackers:
        feature_model, feature_label = identity_model(cfg, run_dir, authorization, device, logger)
    scoring = scoring_config(cfg, run_dir)
    scorer = PrivacyScorer(test_pairs, num_query, evaluators, settings, device, cfg.ATTACK.LPIPS_ALEXNET,
                           reid_kwargs={"metric": scoring.TEST.DISTANCE, "feat_norm": scoring.TEST.FEAT_NORM == "on",
                                        "rerank": scoring.TEST.RE_RANKING == "on"})
    return scorer, authorization, description, feature_model, feature_label


def run_recovery_attack(cfg, npy_path, attackers, device, output=None, reference_order=False,
                        show_progress=True, print_tables=True):
    """The CLI's work: check everything, lock the output folder, run each attacker, write the privacy table.

    ``print_tables``: end with the results tables on stdout (the CLI); callers that print their own
    report of them (the demo) only get the files' paths.

    Settings, pair files, existing checkpoints of every attacker and the Re-ID models of the
    privacy table are checked before the first file is written (a failed start leaves no log file
    behind); a second attack on the same output folder is refused while this one runs.
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
    settings_of = {attacker: AttackSettings.from_config(cfg, mode=attacker) for attacker in attackers}
    scorer, authorization, description, feature_model, feature_label = prepare_privacy(
        cfg, npy_dir, attackers, base_settings, device)
    with FolderLock(log_dir, purpose=LOCK_PURPOSE):
        for attacker, settings in settings_of.items():
            if attacker in LEARNED_ATTACKERS:
                check_resumable(os.path.join(log_dir, CHECKPOINT_DIRNAME, attacker),
                                run_identity(settings, pairs[0], reference_order, feature_label),
                                settings.total_epochs)
                train_and_validation(pairs[0], settings)
        logger = get_attack_logger(log_dir)
        config_path = save_config(cfg, log_dir, CONFIG_FILENAME)
        logger.info(f"pairs from {npy_dir}; results, logs and checkpoints in {log_dir}; "
                    f"config saved to {config_path}; authorization model: {description}")
        results = {}
        if scorer is None:
            logger.info("no privacy table: the protect run folder (config.yaml) is not beside img_npy; set "
                        "ATTACK.AUTH_MODEL and ATTACK.NUM_QUERY to score identity leakage")
        else:
            rows = {"protected": {**scorer.score(lambda protected: protected), "epoch": None,
                                  "selection": "none", "cost": None}}
            header = {**scorer.header(), "authorization_model": description}
            write_privacy(log_dir, header, rows)
        for attacker, settings in settings_of.items():
            if attacker == "inversion":
                results[attacker], rows[attacker] = run_inversion(settings, scorer, authorization, pairs[0],
                                                                  log_dir, device, logger)
                write_results(log_dir, attacker, results[attacker])
            else:
                results[attacker] = run_attack(settings, npy_dir, log_dir, device=device,
                                               reference_order=reference_order,
                                               num_workers=num_workers, show_progress=show_progress,
                                               logger=logger, pairs=pairs, feature_model=feature_model,
                                               feature_label=feature_label)
                if scorer is None:
                    continue
                generator, epoch, selection = scored_generator(settings, log_dir, pairs[0].image_shape, device)
                with torch.no_grad():
                    recovered = scorer.score(generator_recovery(generator, settings))
                rows[attacker] = {**recovered, "epoch": epoch, "selection": selection, "cost": None}
            write_privacy(log_dir, header, rows)
        tables = "\n" + results_markdown(read_results(log_dir)) if print_tables else ""
        logger.info(f"results: {os.path.join(log_dir, RESULTS_JSON)} and {os.path.join(log_dir, RESULTS_MARKDOWN)}"
                    + tables)
    return results


def _cpu_state_dict(module):
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}
