"""Recovery attack on saved original/protected pairs: train a generator G(protected) -> original.

The reference protocol (README, "recovery_attack.py"): pix2pix generator with a Tanh output, L1
to the original in the normalized space, Adam lr 1e-3, one saved batch file per step, 100 epochs,
test after epoch index 2 and the last. The 'strong' attacker regresses the original in pixel
space [0, 1] without Tanh, since a Tanh output cannot reach normalized targets outside [-1, 1]
(README, "What differs from the paper's code").

This module runs it: :func:`run_recovery_attack` (the CLI's work) checks everything once, then
runs each attacker; :func:`run_attack` trains one learned attacker on the engines of
:mod:`engine.attack.trainer` (``create_*`` plus ``attach_*``). Only the newest checkpoint is kept,
and the previous one is deleted only once the new one is complete.

Bad input never costs finished work and never shows a traceback: settings, pair files (shapes,
NaN/infinity) and existing checkpoints are checked before anything is written, the output folder
is locked while the attack trains, and every file goes through ``utils.file_io``'s atomic writes
(an OS failure is an ``OutputError`` naming the file).
"""
import dataclasses
import logging
import os
import sys

import ignite.distributed as idist
import torch
from ignite.utils import setup_logger

from configs import save_config
from configs.checks import require
from data.img_npy import resolve_npy_dir
from data.npy_pairs import SavedBatchOrder
from engine.attack.checkpoint import (
    AttackHistory,
    BestWeights,
    WeightFileCheckpointSaver,
    check_resumable,
    resume_training,
    run_identity,
)
from engine.attack.layout import (
    CONFIG_FILENAME,
    LOCK_PURPOSE,
    LOG_FILENAME,
    WEIGHT_FILENAMES,
    attack_log_dir,
    checkpoint_dir,
    grid_dir,
    weight_path,
)
from engine.attack.pairs import open_attack_pairs, train_and_validation
from engine.attack.privacy_rows import generator_row, prepare_privacy, protected_row, run_inversion
from engine.attack.results import (
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
from engine.attack.trainer import (
    EPOCH_METERS,
    attach_batch_order,
    attach_checkpoint,
    attach_epoch_log,
    attach_evaluation,
    create_attack_trainer,
    evaluate_generator,
    make_batch_loader,
)
from engine.attack.weights import build_attack_generator, publish_weights
from utils.errors import DatasetError
from utils.file_io import FolderLock, os_errors_as_output_errors
from utils.progress import attach_progress

__all__ = [
    "WEIGHT_FILENAMES",
    "create_attack_trainer",
    "get_attack_logger",
    "make_batch_loader",
    "run_attack",
    "run_recovery_attack",
]


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


@dataclasses.dataclass
class AttackStart:
    """What one learned attacker's start check found: its run identity, the checkpoint to resume
    from (or None), and its train and validation batches."""

    identity: dict
    resume_path: str
    train_batches: object
    validation_batches: object
    held_out: list


def check_attack_start(settings, train_pairs, log_dir, reference_order=False, feature_label=""):
    """An existing checkpoint of this attacker must be resumable, the validation split possible: checked
    once, before anything is written."""
    identity = run_identity(settings, train_pairs, reference_order, feature_label)
    resume_path, _ = check_resumable(checkpoint_dir(log_dir, settings.mode), identity, settings.total_epochs)
    return AttackStart(identity, resume_path, *train_and_validation(train_pairs, settings))


@dataclasses.dataclass
class AttackRun:
    """One learned attacker being trained: what the trainer's ``attach_*`` handlers read and update."""

    settings: AttackSettings
    generator: torch.nn.Module
    test_pairs: object
    device: torch.device
    log_dir: str
    history: AttackHistory
    best: BestWeights
    validation_batches: object = None

    @property
    def checkpoint_dir(self):
        return checkpoint_dir(self.log_dir, self.settings.mode)

    @property
    def grid_dir(self):
        return grid_dir(self.log_dir, self.settings.mode)

    @property
    def weight_path(self):
        return weight_path(self.log_dir, self.settings.mode)


def _start_line(run, start, train_pairs, num_workers):
    settings = run.settings
    validation_note = "; every train pair trains it, no validation split (ATTACK.VAL_FRACTION 0)"
    if start.validation_batches is not None:
        validation_note = (f"; {len(start.held_out)} identities held out for validation "
                           f"({sum(len(rows) for rows in start.validation_batches.rows.values())} images)")
    return (f"[{settings.mode}] {settings.generator} (ngf {settings.ngf}, "
            f"{settings.output_activation} output) on {len(train_pairs)} train images in "
            f"{train_pairs.num_batches} saved batches{validation_note}, {settings.optimizer} lr {settings.lr}, "
            f"{settings.total_epochs} epochs on {run.device}, {num_workers} loader workers")


def run_attack(settings, npy_dir, log_dir, device="cpu", reference_order=False, num_workers=0,
               show_progress=True, logger=None, pairs=None, feature_model=None, feature_label="", start=None):
    """Train and score one learned attacker (settings.mode); returns its entry of attack_results.json.

    ``pairs``: the (train, test) datasets of :func:`open_attack_pairs`, and ``start`` the result of
    :func:`check_attack_start`, each done here when not given. An existing checkpoint of this attacker
    under ``log_dir`` is resumed from. With a validation split, the weights of the epoch with the
    lowest validation L1 are kept too and scored on the test split at the end (entry 'best').
    ``feature_model`` (g, labelled ``feature_label``) is the identity attacker's Re-ID model.
    """
    device = torch.device(device)
    train_pairs, test_pairs = pairs or open_attack_pairs(npy_dir, settings, reference_order)
    start = start or check_attack_start(settings, train_pairs, log_dir, reference_order, feature_label)
    logger = logger or get_attack_logger(log_dir)
    if reference_order and settings.shuffle:
        logger.info("--reference_order: saved batches are visited in sorted file order, unshuffled")

    torch.manual_seed(settings.seed)
    generator = build_attack_generator(settings, train_pairs.image_shape, device)
    optimizer = build_optimizer(settings, generator.parameters())
    trainer = create_attack_trainer(generator, optimizer, settings, device,
                                    feature_model if settings.mode == "identity" else None)
    if show_progress and idist.get_rank() == 0:
        attach_progress(trainer, f"attack[{settings.mode}]", metric_names=list(EPOCH_METERS))
    run = AttackRun(settings, generator, test_pairs, device, log_dir, AttackHistory(start.identity), BestWeights(),
                    start.validation_batches)
    order = SavedBatchOrder(len(start.train_batches), start.identity["shuffle"], settings.seed)
    attach_batch_order(trainer, order)
    # Before the checkpointer (handlers fire in the order they were added): a diverged epoch stops
    # the run and the checkpoint of the last good epoch stays.
    attach_epoch_log(trainer, run, logger)
    attach_evaluation(trainer, run, logger)
    to_save = {"generator": generator, "optimizer": optimizer, "trainer": trainer, "history": run.history}
    if start.validation_batches is not None:
        to_save["best"] = run.best
    checkpointer = attach_checkpoint(trainer, to_save, WeightFileCheckpointSaver(run.checkpoint_dir))

    if start.resume_path is not None:
        resume_training(start.resume_path, {**to_save, "checkpointer": checkpointer}, start.identity)
        done = trainer.state.epoch
        logger.info(f"[{settings.mode}] resuming from {start.resume_path} after epoch {done}")
        if done == settings.total_epochs:
            logger.info(f"[{settings.mode}] training already finished; nothing left to run")
            return _finish(run, logger)

    logger.info(_start_line(run, start, train_pairs, num_workers))
    trainer.run(make_batch_loader(start.train_batches, order, device, num_workers), max_epochs=settings.total_epochs)
    logger.info(f"[{settings.mode}] generator weights: {run.weight_path}")
    return _finish(run, logger)


def _finish(run, logger):
    """Publish the last (and best) weights, score the best epoch's on the test split once, write the entry."""
    settings, best, history = run.settings, run.best, run.history
    publish_weights(run.checkpoint_dir, run.generator, best, run.weight_path)
    if best.epoch >= 0 and (history.best_evaluation or {}).get("epoch") != best.epoch:
        scored = build_attack_generator(settings, run.test_pairs.image_shape, run.device)
        scored.load_state_dict(best.weights)
        record = evaluate_generator(scored, run.test_pairs, settings, run.device)
        history.best_evaluation = {"epoch": best.epoch, "validation_l1": best.loss, **record}
        log_record(logger, f"{settings.mode}, best epoch", best.epoch, record)
    return write_results(run.log_dir, settings.mode, results_entry(settings, history))


def attacker_settings(cfg, attackers):
    """{attacker: AttackSettings}: each attacker's settings, built and checked once per run."""
    require(len(attackers) > 0, "--attacker / ATTACK.MODE", f"one or more of {ATTACKERS}", list(attackers))
    for attacker in attackers:
        require(attacker in ATTACKERS, "--attacker / ATTACK.MODE", f"one of {ATTACKERS} (or both / all)", attacker)
    return {attacker: AttackSettings.from_config(cfg, mode=attacker) for attacker in attackers}


def pair_folder(npy_path):
    """The folder holding the pairs (``--npy_path`` or its img_npy), named in the error when there is none."""
    try:
        return resolve_npy_dir(npy_path)
    except DatasetError as err:
        raise DatasetError(f"--npy_path: {err}") from None


def run_recovery_attack(cfg, npy_path, attackers, device, output=None, reference_order=False,
                        show_progress=True, print_tables=True):
    """The CLI's work: check everything, lock the output folder, run each attacker, write the privacy table.

    ``print_tables``: end with the results tables on stdout (the CLI); callers that print their own
    report of them (the demo) only get the files' paths.

    Settings, pair files, existing checkpoints of every attacker and the Re-ID models of the
    privacy table are checked once, before the first file is written (a failed start leaves no log
    file behind); a second attack on the same output folder is refused while this one runs.
    """
    settings_of = attacker_settings(cfg, attackers)
    num_workers = loader_workers(cfg.DATALOADER.NUM_WORKERS)
    npy_dir = pair_folder(npy_path)
    first = next(iter(settings_of.values()))
    pairs = open_attack_pairs(npy_dir, first, reference_order)
    log_dir = attack_log_dir(npy_dir, output)
    scorer, authorization, description, feature_model, feature_label = prepare_privacy(
        cfg, npy_dir, pairs[1], attackers, first, device)
    with FolderLock(log_dir, purpose=LOCK_PURPOSE):
        starts = {attacker: check_attack_start(settings, pairs[0], log_dir, reference_order, feature_label)
                  for attacker, settings in settings_of.items() if attacker in LEARNED_ATTACKERS}
        logger = get_attack_logger(log_dir)
        config_path = save_config(cfg, log_dir, CONFIG_FILENAME)
        logger.info(f"pairs from {npy_dir}; results, logs and checkpoints in {log_dir}; "
                    f"config saved to {config_path}; authorization model: {description}")
        results, rows = {}, {}
        if scorer is None:
            logger.info("no privacy table: the protect run folder (config.yaml) is not beside img_npy; set "
                        "ATTACK.AUTH_MODEL and ATTACK.NUM_QUERY to score identity leakage")
        else:
            rows["protected"] = protected_row(scorer)
            header = {**scorer.header(), "authorization_model": description}
            write_privacy(log_dir, header, rows)
        for attacker, settings in settings_of.items():
            if attacker == "inversion":
                results[attacker], rows[attacker] = run_inversion(settings, scorer, authorization, pairs[0],
                                                                  log_dir, device, logger)
                write_results(log_dir, attacker, results[attacker])
            else:
                results[attacker] = run_attack(settings, npy_dir, log_dir, device=device,
                                               reference_order=reference_order, num_workers=num_workers,
                                               show_progress=show_progress, logger=logger, pairs=pairs,
                                               feature_model=feature_model, start=starts[attacker])
                if scorer is None:
                    continue
                rows[attacker] = generator_row(scorer, settings, log_dir, pairs[0].image_shape, device)
            write_privacy(log_dir, header, rows)
        tables = "\n" + results_markdown(read_results(log_dir)) if print_tables else ""
        logger.info(f"results: {os.path.join(log_dir, RESULTS_JSON)} and {os.path.join(log_dir, RESULTS_MARKDOWN)}"
                    + tables)
    return results
