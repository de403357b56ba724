"""One learned attacker's ignite engines: ``create_*`` builds the trainer and the evaluator, ``attach_*``
adds what a run needs on top (batch order, epoch log, test-split scoring, checkpoints), as in ignite's examples.

Training runs on an ignite Engine whose epoch meters are ignite metrics ('loss': the epoch's L1
per image, an ``Average``; 'images_per_s': a ``Frequency``), shown by the progress bar and
written to the log. After the evaluated epochs an event-filtered handler runs an evaluator Engine
over the test split, scored by ``evaluation.image_quality.ImageQuality`` (per modality as well when
the pairs carry one). A ``Checkpoint`` of (generator, optimizer, trainer, history) after every
epoch lets a rerun with the same arguments resume from the last finished epoch.
"""
import logging
import math
import os

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.metrics import Average, Frequency
from ignite.metrics.metric import SingleEpochRunningBatchWise, reinit__is_reduced
from torch.utils.data import DataLoader

from data.transforms import normalize
from engine.attack.inversion import relative_feature_error
from engine.attack.results import IMAGE_KINDS, log_record, results_entry, write_results
from engine.attack.settings import LOGGER_NAME
from evaluation.image_quality import ImageQuality, to_pixels
from evaluation.privacy import routed_forward
from utils.errors import NonFiniteError
from utils.grids import grid_image, save_labelled_grid

# The trainer's epoch meters (engine.state.metrics), shown by the progress bar and logged.
EPOCH_METERS = ("loss", "images_per_s")
# The evaluator's metric: the whole record of evaluate_generator.
QUALITY_METRIC = "quality"
# What ImageQuality groups the test images by, when the pairs say it (visible-infrared runs).
QUALITY_GROUPS = "modality"


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


def identity_loss(feature_model, outputs, originals, settings, modalities=None):
    """||g(G(x_p)) - g(x)||^2 / ||g(x)||^2, averaged over the batch; g takes normalised images.

    Relative to the original's feature norm, so one ATTACK.IDENTITY_WEIGHT means the same for Re-ID
    models whose feature scales differ by orders of magnitude (an untrained AGW's squared error is
    in the tens where the L1 is below 1). The generator's pixel output is normalised unclamped, so
    the gradient reaches every pixel. ``modalities``: each image's sensor, for a model with a stem per
    modality (visible-infrared pairs).
    """
    with torch.no_grad():
        target = routed_forward(feature_model, originals, modalities).float()
    features = routed_forward(feature_model, normalize(outputs, settings.pixel_mean, settings.pixel_std),
                              modalities).float()
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
        protected, originals, *sensors = batch  # (protected, originals[, the images' sensors]), SavedBatches' item
        modalities = sensors[0] if sensors else None
        protected, originals = protected.to(device, non_blocking=True), originals.to(device, non_blocking=True)
        generator.train()
        outputs = generator(protected)
        loss = l1_loss(outputs, attack_targets(originals, settings))
        if feature_model is not None:
            loss = loss + settings.identity_weight * identity_loss(feature_model, outputs, originals, settings,
                                                                   modalities)
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


def _recover_batch(generator, test_pairs, settings, device, position):
    """(protected, recovered, originals) of one saved test batch; ``NonFiniteError`` for a diverged generator."""
    protected, originals = (tensor.to(device) for tensor in test_pairs.load_batch(position))
    outputs = generator(protected)
    if not bool(torch.isfinite(outputs).all()):
        protected_file = test_pairs.batch_files(position)[1]
        raise NonFiniteError(
            f"[{settings.mode}] the generator's output for {protected_file} "
            "holds NaN or infinity: training diverged; expected a lower learning rate "
            f"(--lr / ATTACK.LR, now {settings.lr})")
    return protected, recovered_normalized(outputs, settings), originals


def attach_eval_mode(evaluator, generator):
    """The generator in eval mode while ``evaluator`` runs, its previous mode restored after."""
    modes = {}

    @evaluator.on(Events.STARTED)
    def _eval_mode(engine):
        modes["training"] = generator.training
        generator.eval()

    @evaluator.on(Events.COMPLETED)
    def _restore_mode(engine):
        generator.train(modes["training"])


def attach_grids(evaluator, grid_dir, num_grids):
    """Rows protected / recovered / original of the first ``num_grids`` batches, each grid min-max
    normalized as a whole like the reference."""
    @evaluator.on(Events.ITERATION_COMPLETED(event_filter=lambda engine, iteration: iteration <= num_grids))
    def _save_grid(engine):
        out = engine.state.output
        candidates = out["candidates"]
        save_labelled_grid(grid_image(candidates["protected"], candidates["recovered"], out["original"]),
                           os.path.join(grid_dir, f"{out['position']}.png"))


def create_attack_evaluator(generator, test_pairs, settings, device, grid_dir=None):
    """ignite Engine scoring ``generator`` on the test split; run it on ``range(num_batches)``.

    Each step recovers one saved test batch; ``ImageQuality`` scores the protected and the
    recovered images against the originals into ``state.metrics['quality']``, per modality too
    when the pairs carry one. With ``grid_dir``, the first settings.num_grids batches are drawn
    (:func:`attach_grids`). A generator that outputs NaN or infinity (diverged training) raises
    ``NonFiniteError`` before any metric is computed.
    """
    device = torch.device(device)

    def eval_step(engine, position):
        with torch.no_grad():
            protected, recovered, originals = _recover_batch(generator, test_pairs, settings, device, position)
        return {"position": position, "original": originals, QUALITY_GROUPS: test_pairs.load_modalities(position),
                "candidates": {"protected": protected, "recovered": recovered}}

    evaluator = Engine(eval_step)
    # Silent: an error here reaches the trainer, whose logger reports it once.
    evaluator.logger = logging.getLogger(f"{LOGGER_NAME}.evaluator")
    evaluator.logger.setLevel(logging.CRITICAL)
    ImageQuality(IMAGE_KINDS, settings.pixel_mean, settings.pixel_std, groups=QUALITY_GROUPS).attach(
        evaluator, QUALITY_METRIC)
    attach_eval_mode(evaluator, generator)
    if grid_dir is not None:
        attach_grids(evaluator, grid_dir, settings.num_grids)
    return evaluator


def evaluate_generator(generator, test_pairs, settings, device, grid_dir=None):
    """Protected-vs-original and recovered-vs-original quality on the test split.

    Runs :func:`create_attack_evaluator` once; returns {'num_images', protocol: {image kind:
    {metric: mean}}} (and 'per_modality': {modality: such a record} when the pairs carry one).
    """
    evaluator = create_attack_evaluator(generator, test_pairs, settings, device, grid_dir)
    evaluator.run(range(test_pairs.num_batches))
    return evaluator.state.metrics[QUALITY_METRIC]


def validation_l1(generator, batches, settings, device):
    """Mean L1 per image of the generator on held-out batches, in its training target's space."""
    device = torch.device(device)
    training = generator.training
    generator.eval()
    total, images = 0.0, 0
    with torch.no_grad():
        for item in range(len(batches)):
            protected, originals = (tensor.to(device) for tensor in batches[item][:2])
            error = (generator(protected) - attack_targets(originals, settings)).abs()
            total += float(error.flatten(1).mean(dim=1).double().sum())
            images += protected.shape[0]
    generator.train(training)
    return total / images


def attach_batch_order(trainer, order):
    """Each epoch's saved-batch order (``SavedBatchOrder``) drawn from the epoch number, so a resumed run sees it."""
    @trainer.on(Events.EPOCH_STARTED)
    def _set_batch_order(engine):
        order.set_epoch(engine.state.epoch)


def attach_epoch_log(trainer, run, logger):
    """After each epoch: refuse a diverged loss, record it (and the validation L1, offering the best
    weights), log one line. ``run``: the :class:`~engine.attack.run.AttackRun` being trained."""
    settings = run.settings
    loss_name = "L1 + identity loss" if settings.mode == "identity" else "L1 loss"

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log_epoch(engine):
        epoch_index = engine.state.epoch - 1
        loss = engine.state.metrics["loss"]
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"[{settings.mode}] the {loss_name} of epoch {epoch_index} is {loss}: training "
                f"diverged; expected a lower learning rate (--lr / ATTACK.LR, now {settings.lr}); "
                f"the epochs finished before it stay in {run.checkpoint_dir}")
        run.history.train_loss[epoch_index] = loss
        message = (f"[{settings.mode}] epoch {epoch_index}/{settings.total_epochs - 1} {loss_name} {loss:.6f}, "
                   f"{engine.state.metrics['images_per_s']:.1f} images/s")
        if run.validation_batches is not None:
            value = validation_l1(run.generator, run.validation_batches, settings, run.device)
            run.history.validation_l1[epoch_index] = value
            run.best.offer(epoch_index, value, run.generator)
            message += f", validation L1 {value:.6f} (best: epoch {run.best.epoch})"
        logger.info(message)


def attach_evaluation(trainer, run, logger):
    """After each evaluated epoch: score the test split (grids after the last), log it, write the entry."""
    settings = run.settings
    evaluated = set(settings.evaluated_epochs())

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=lambda _, epoch: epoch - 1 in evaluated))
    def _evaluate(engine):
        epoch_index = engine.state.epoch - 1
        is_last = epoch_index == settings.total_epochs - 1
        record = evaluate_generator(run.generator, run.test_pairs, settings, run.device,
                                    grid_dir=run.grid_dir if is_last else None)
        run.history.evaluations[epoch_index] = record
        log_record(logger, settings.mode, epoch_index, record)
        write_results(run.log_dir, settings.mode, results_entry(settings, run.history))


def attach_checkpoint(trainer, to_save, saver):
    """A ``Checkpoint`` of ``to_save`` after every epoch (the newest only), its step the epoch count."""
    checkpointer = Checkpoint(to_save, saver, n_saved=1, include_self=True,
                              global_step_transform=lambda engine, _: engine.state.epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)
    return checkpointer
