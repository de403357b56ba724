"""Training the cross-modality AGW (``modeling.agw_vi.EmbedNet``) on SYSU-MM01 or RegDB with an ignite trainer.

The recipe is that of mangye16/Cross-Modal-Re-ID-baseline ``train.py`` (``--method agw``), with its
defaults in the ``VI_TRAIN`` config block:

* batches (``data.cross_modality_sampler``): P = IDS_PER_BATCH identities x NUM_POS visible + NUM_POS
  thermal images, ``int(N / (P * K)) + 1`` batches an epoch; the step runs ``net(visible, thermal, 0)``;
* train transform: the image resized to IMG_SIZE (Lanczos, as the reference stores its training arrays),
  Pad(PADDING, zeros), RandomCrop(IMG_SIZE), RandomHorizontalFlip, ToTensor, ImageNet Normalize;
* loss: plain cross-entropy on the classifier's logits + the weighted regularised triplet on the GeM
  feature of the concatenated visible + thermal batch (``modeling.losses``), weight 1 each;
* SGD, momentum 0.9, Nesterov, weight decay 5e-4, three groups: everything but ``bottleneck`` and
  ``classifier`` at 0.1 x lr, those two at lr; lr of 0-based epoch e: LR x (e + 1) / WARMUP_EPOCHS while
  e < WARMUP_EPOCHS, then LR x GAMMA ** (number of STEPS <= e); epochs 0..MAX_EPOCHS - 1;
* evaluation after epoch e when e > 0 and e % EVAL_PERIOD == 0: the BNNeck feature (L2-normalised) of
  each image through the stem of its modality, scored by ``evaluation.cross_modality`` on the selected
  trials of one protocol; the best Rank-1 so far is saved as the reference's
  ``<sysu|regdb>_agw_p<K>_n<P>_lr_<LR>_seed_<SEED>[_trial_<t>]_best.t`` holding ``{'net', 'cmc' (float32),
  'mAP', 'mINP' (float64), 'epoch'}``, which ``MODEL.FORMAT auto`` reads as ``agw_vi``.

Differences: the reference starts from ImageNet ResNet-50s (here MODEL.PRETRAIN_PATH, torchvision
format, copied into all three ResNets; random init without it); its sampler and flips draw from
global generators seeded once, here each epoch is seeded from (SEED, epoch) so a run resumed from the
checkpoint written after every epoch repeats the uninterrupted run's weights (same device and
threads); the last epoch is always evaluated and the first evaluation always writes the best file
(the reference needs a Rank-1 above 0); its ``_epoch_<e>.t`` snapshots every 20 epochs are not written.
"""
import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from ignite.utils import setup_logger
from PIL import Image
from torch import nn
from torchvision import transforms as T

from configs import save_config
from configs.checks import ConfigChecker, is_int
from data.cross_modality_sampler import CrossModalityBatchSampler
from data.datasets import build_dataset
from data.datasets.visible_infrared import INFRARED, VISIBLE, unique_records
from data.loaders import build_loader, read_image
from data.transforms import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, build_vi_eval_transform
from engine.common.resume import epoch_checkpointer, find_resume_point, restore
from engine.train import loop
from engine.train.loop import attach_loss_tracking, create_trainer, optimizer_step
from engine.train.seeding import epoch_seed, seed_everything
from evaluation.cross_modality import score_trial
from modeling import resolve_device
from modeling.agw_vi import ARCHITECTURES, EmbedNet
from modeling.checkpoint import compare_state_dicts, read_checkpoint
from modeling.losses import WeightedRegularizedTriplet
from utils.errors import CheckpointError, DatasetError
from utils.file_io import FolderLock, atomic_write, atomic_write_json
from utils.logs import close_log_handlers

logger = logging.getLogger("pixelfade.train_vi")

# DATASETS.NAMES -> (the reference's file-name prefix, its evaluation protocol, its default trial)
DATASET_DEFAULTS = {"sysu_mm01": ("sysu", "all_search", 0), "regdb": ("regdb", "visible_to_thermal", 1)}
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BACKBONE_LR_FACTOR = 0.1
MODALS = {VISIBLE: 1, INFRARED: 2}
# Where a refused run may start afresh instead (this trainer's API takes OUTPUT_DIR, not a flag).
ELSEWHERE = "another output folder"
LOSS_KEYS = ("loss", "id", "triplet")
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
# Settings that change the weights a run produces (with the data set's sizes): they must match to resume.
IDENTITY_KEYS = ("DATASETS.NAMES", "DATASETS.TRIALS", "MODEL.NAME", "MODEL.PRETRAIN_PATH", "VI_TRAIN.LR",
                 "VI_TRAIN.WARMUP_EPOCHS", "VI_TRAIN.STEPS", "VI_TRAIN.GAMMA", "VI_TRAIN.IDS_PER_BATCH",
                 "VI_TRAIN.NUM_POS", "VI_TRAIN.IMG_SIZE", "VI_TRAIN.PADDING", "VI_TRAIN.SEED")


@dataclass
class TrainOptions:
    """What a run needs beyond the config: the progress bar (None: when stderr is a terminal), a test hook."""

    show_progress: bool | None = None
    on_trainer: object = None


# ------------------------------------------------------------------------------------------------
# Settings and data
# ------------------------------------------------------------------------------------------------
def validate_vi_train_config(cfg, flag_of_key=None):
    """Raise ConfigError for the first bad setting of a cross-modality training run, naming its key (and flag)."""
    check = ConfigChecker(cfg, flag_of_key)
    check.choice("DATASETS.NAMES", tuple(DATASET_DEFAULTS))
    check.choice("MODEL.NAME", tuple(ARCHITECTURES))
    for key in ("VI_TRAIN.LR", "VI_TRAIN.GAMMA"):
        check.positive(key)
    for key, minimum in (("VI_TRAIN.MAX_EPOCHS", 1), ("VI_TRAIN.WARMUP_EPOCHS", 0), ("VI_TRAIN.IDS_PER_BATCH", 2),
                         ("VI_TRAIN.NUM_POS", 1), ("VI_TRAIN.PADDING", 0), ("VI_TRAIN.EVAL_PERIOD", 1),
                         ("VI_TRAIN.TEST_BATCH", 1), ("VI_TRAIN.SEED", 0), ("DATALOADER.NUM_WORKERS", 0)):
        check.integer(key, minimum)
    steps = list(cfg.VI_TRAIN.STEPS)
    if not all(is_int(v) and v >= 0 for v in steps) or steps != sorted(steps):
        check.fail("VI_TRAIN.STEPS", "increasing whole numbers of epochs")
    size = list(cfg.VI_TRAIN.IMG_SIZE)
    if len(size) != 2 or not all(is_int(v) and v >= 16 for v in size):
        check.fail("VI_TRAIN.IMG_SIZE", "[height, width], two integers >= 16")
    if cfg.VI_TRAIN.EVAL_PROTOCOL:
        protocols = ("all_search", "indoor_search") if cfg.DATASETS.NAMES == "sysu_mm01" else (
            "visible_to_thermal", "thermal_to_visible")
        check.choice("VI_TRAIN.EVAL_PROTOCOL", ("",) + protocols)
    if cfg.DATASETS.NAMES == "regdb" and len(cfg.DATASETS.TRIALS) > 1:
        check.fail("DATASETS.TRIALS", "one RegDB trial (the reference trains one model per trial), e.g. [1]")
    if cfg.MODEL.PRETRAIN_PATH and not os.path.isfile(cfg.MODEL.PRETRAIN_PATH):
        check.fail("MODEL.PRETRAIN_PATH", "an existing torchvision ImageNet ResNet file, or empty (random init)")
    if not isinstance(cfg.OUTPUT_DIR, str) or not cfg.OUTPUT_DIR:
        check.fail("OUTPUT_DIR", "a folder path")


def load_vi_dataset(cfg):
    """(dataset, evaluation protocol); the data set holds enough identities for one batch."""
    _, default_protocol, default_trial = DATASET_DEFAULTS[cfg.DATASETS.NAMES]
    trials = list(cfg.DATASETS.TRIALS) or [default_trial]
    dataset = build_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, trials=trials)
    ids = cfg.VI_TRAIN.IDS_PER_BATCH
    if dataset.num_train_pids < ids:
        raise DatasetError(f"{dataset.root}: {dataset.num_train_pids} train identities, fewer than the {ids} "
                           "of one batch (VI_TRAIN.IDS_PER_BATCH)")
    return dataset, cfg.VI_TRAIN.EVAL_PROTOCOL or default_protocol


def split_by_modality(records):
    """(visible records, infrared records), each in the given order."""
    return [r for r in records if r.modality == VISIBLE], [r for r in records if r.modality == INFRARED]


class LanczosResize:
    """PIL image -> (height, width) with Lanczos, as the reference stores its training images (picklable for workers)."""

    def __init__(self, size):
        self.height, self.width = size

    def __call__(self, image):
        return image.resize((self.width, self.height), Image.LANCZOS)


def build_vi_train_transform(size, padding):
    """The reference's training images: Lanczos resize to ``size`` (its stored arrays), Pad, RandomCrop, flip."""
    height, width = size
    return T.Compose([
        LanczosResize(size),
        T.Pad(padding),
        T.RandomCrop((height, width)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD),
    ])


class PairedImages(torch.utils.data.Dataset):
    """Items ``(visible index, thermal index)`` -> both images transformed and both labels."""

    def __init__(self, visible, thermal, transform):
        self.visible, self.thermal, self.transform = visible, thermal, transform

    def __len__(self):
        return len(self.visible)

    def __getitem__(self, pair):
        first, second = self.visible[pair[0]], self.thermal[pair[1]]
        return {"visible": self.transform(read_image(first.path)), "thermal": self.transform(read_image(second.path)),
                "visible_pid": first.pid, "thermal_pid": second.pid}


class EpochData:
    """The trainer's data: each ``iter`` opens a DataLoader over the sampler's batches of the current epoch."""

    def __init__(self, dataset, sampler, num_workers):
        self.dataset, self.sampler, self.num_workers = dataset, sampler, num_workers

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        def generate():
            yield from torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler.batches(),
                                                   num_workers=self.num_workers)

        return generate()


# ------------------------------------------------------------------------------------------------
# Model, optimiser, schedule
# ------------------------------------------------------------------------------------------------
def load_imagenet_resnets(net, path):
    """Copy a torchvision ImageNet ResNet state dict into the visible, thermal and shared ResNets (``fc`` ignored)."""
    state = read_checkpoint(path)
    for resnet in (net.visible_module.visible, net.thermal_module.thermal, net.base_resnet.base):
        report = compare_state_dicts(resnet.state_dict(), state, path, ("fc.",))
        if not report.ok:
            raise CheckpointError(f"{path}: not a torchvision ImageNet ResNet of MODEL.NAME {net.architecture}: "
                                  f"{'; '.join(report.problem_lines())}")
        resnet.load_state_dict({key: state[key] for key in report.loaded}, strict=False)


def build_vi_model(cfg, num_classes):
    """EmbedNet of MODEL.NAME with ``num_classes`` outputs, initialised from VI_TRAIN.SEED (and PRETRAIN_PATH)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.VI_TRAIN.SEED)
        net = EmbedNet(num_classes, cfg.MODEL.NAME)
    if cfg.MODEL.PRETRAIN_PATH:
        load_imagenet_resnets(net, cfg.MODEL.PRETRAIN_PATH)
    return net


def build_optimizer(net, lr):
    """The reference's SGD: backbone (all but bottleneck and classifier) at 0.1 x lr, those two at lr."""
    heads = {id(p) for module in (net.bottleneck, net.classifier) for p in module.parameters()}
    base = [p for p in net.parameters() if id(p) not in heads]
    groups = [{"params": base, "lr": BACKBONE_LR_FACTOR * lr}, {"params": list(net.bottleneck.parameters()), "lr": lr},
              {"params": list(net.classifier.parameters()), "lr": lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)


def lr_at_epoch(cfg, epoch):
    """The reference's ``adjust_learning_rate`` for 0-based ``epoch``: linear warm-up, then steps of GAMMA."""
    solver = cfg.VI_TRAIN
    if epoch < solver.WARMUP_EPOCHS:
        return solver.LR * (epoch + 1) / solver.WARMUP_EPOCHS
    return solver.LR * solver.GAMMA ** sum(1 for step in solver.STEPS if step <= epoch)


def set_learning_rate(optimizer, lr):
    optimizer.param_groups[0]["lr"] = BACKBONE_LR_FACTOR * lr
    for group in optimizer.param_groups[1:]:
        group["lr"] = lr


def create_cross_modality_trainer(net, optimizer, device):
    """An ignite Engine whose step is one SGD step on CE + WRT of a visible + thermal batch (``net(v, t, 0)``)."""
    cross_entropy = nn.CrossEntropyLoss()
    triplet = WeightedRegularizedTriplet()

    def step(engine, batch):
        net.train()
        visible = batch["visible"].to(device, non_blocking=True)
        thermal = batch["thermal"].to(device, non_blocking=True)
        labels = torch.cat((torch.as_tensor(batch["visible_pid"]), torch.as_tensor(batch["thermal_pid"]))).to(device)
        feature, logits = net(visible, thermal, 0)
        identity, metric = cross_entropy(logits, labels), triplet(feature, labels)
        return {**optimizer_step(optimizer, identity + metric, id=identity, triplet=metric),
                "images": int(labels.shape[0])}

    return create_trainer(step)


# ------------------------------------------------------------------------------------------------
# Evaluation and the reference's best file
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def extract_vi_features(net, records, size, batch_size, num_workers, device):
    """``{path: L2-normalised BNNeck feature}``, each image through the stem of its own modality."""
    was_training = net.training
    net.eval()
    transform = build_vi_eval_transform(size)
    features = {}
    for group in split_by_modality(records):
        if not group:
            continue
        modal = MODALS[group[0].modality]
        for batch in build_loader(group, transform, batch_size, num_workers):
            images = batch["image"].to(device)
            features.update(zip(batch["path"], net(images, images, modal)[1].float().cpu().numpy()))
    net.train(was_training)
    return features


def evaluate_trials(net, dataset, protocol, cfg, device):
    """Mean over the protocol's trials: ``cmc`` (float32, Rank-1..20), ``mAP`` and ``mINP`` (float64)."""
    trials = dataset.protocols[protocol]
    records = unique_records([trial.query for trial in trials] + [trial.gallery for trial in trials])
    features = extract_vi_features(net, records, tuple(cfg.VI_TRAIN.IMG_SIZE), cfg.VI_TRAIN.TEST_BATCH,
                                   cfg.DATALOADER.NUM_WORKERS, device)
    scores = [score_trial(dataset.metric, trial, features, features) for trial in trials]
    return {"cmc": np.mean([s.cmc for s in scores], axis=0).astype(np.float32),
            "mAP": np.float64(np.mean([s.mAP for s in scores])), "mINP": np.float64(np.mean([s.mINP for s in scores]))}


def summarize_scores(scores):
    """Rank-1/5/10/20, mAP, mINP as plain floats (ranks past a short list's end take its last value)."""
    cmc = scores["cmc"]
    summary = {f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10, 20)}
    summary.update(mAP=float(scores["mAP"]), mINP=float(scores["mINP"]))
    return summary


def reference_stem(cfg, dataset):
    """The reference's ``suffix``: ``<sysu|regdb>_agw_p<K>_n<P>_lr_<LR>_seed_<SEED>[_trial_<t>]``."""
    prefix = DATASET_DEFAULTS[cfg.DATASETS.NAMES][0]
    solver = cfg.VI_TRAIN
    stem = f"{prefix}_agw_p{solver.NUM_POS}_n{solver.IDS_PER_BATCH}_lr_{float(solver.LR)}_seed_{solver.SEED}"
    if cfg.DATASETS.NAMES == "regdb":
        stem += f"_trial_{dataset.trials[0]}"
    return stem


def best_filename(cfg, dataset):
    return reference_stem(cfg, dataset) + "_best.t"


def reference_state(net, scores, epoch):
    """What the reference's ``train.py`` saves as its best model (the state dict on the CPU, no wrapper prefix)."""
    state = {key: value.detach().cpu().clone() for key, value in net.state_dict().items()}
    return {"net": state, "cmc": scores["cmc"], "mAP": scores["mAP"], "mINP": scores["mINP"], "epoch": int(epoch)}


# ------------------------------------------------------------------------------------------------
# Progress and handlers
# ------------------------------------------------------------------------------------------------
class TrainProgress(loop.TrainProgress):
    """Identity, finished epochs, losses, evaluations and the best Rank-1 (saved in each checkpoint)."""

    def __init__(self, identity):
        super().__init__(identity)
        self.best = {"epoch": -1, "rank1": -1.0}

    def state_dict(self):
        return {**super().state_dict(), "best": dict(self.best)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.best = dict(state["best"])


def reference_epoch(engine):
    """The reference's 0-based number of the epoch ignite is in (ignite counts from 1)."""
    return engine.state.epoch - 1


def attach_epoch_setup(trainer, sampler, optimizer, cfg):
    """Before each epoch: its learning rate, the global RNGs (crops, flips) and the sampler from (SEED, epoch)."""

    @trainer.on(Events.EPOCH_STARTED)
    def _setup(engine):
        sampler.set_epoch(engine.state.epoch)
        seed_everything(epoch_seed(cfg.VI_TRAIN.SEED, engine.state.epoch))
        set_learning_rate(optimizer, lr_at_epoch(cfg, reference_epoch(engine)))


def attach_epoch_records(trainer, progress, cfg):
    """Per-epoch mean losses, lr, batches, seconds and images/s into ``progress`` (keyed by 0-based epoch)."""

    def diverged(engine, loss):
        return (f"the training loss is {loss} at epoch {reference_epoch(engine)}: "
                f"training diverged; try a lower VI_TRAIN.LR (now {cfg.VI_TRAIN.LR})")

    def record_epoch(engine, record, seconds):
        epoch = reference_epoch(engine)
        progress.epochs[epoch] = record
        progress.epoch = engine.state.epoch
        logger.info("epoch %d: lr %.3g, loss %.4f (id %.4f, triplet %.4f), %d batches, %.1f s, %.1f images/s",
                    epoch, record["lr"], record["loss"], record["id"], record["triplet"], record["batches"], seconds,
                    record["images_per_s"])

    attach_loss_tracking(trainer, LOSS_KEYS, lambda engine: lr_at_epoch(cfg, reference_epoch(engine)), diverged,
                         record_epoch)


def should_evaluate(epoch, period, max_epochs):
    """The reference's test epochs (0-based e > 0 with e % period == 0), and the last one."""
    return (epoch > 0 and epoch % period == 0) or epoch == max_epochs - 1


def attach_evaluation(trainer, evaluate, progress, cfg, save_best):
    """Score the test protocol on the reference's epochs; ``save_best(scores, epoch)`` on a better Rank-1."""

    @trainer.on(Events.EPOCH_COMPLETED)
    def _evaluate(engine):
        epoch = reference_epoch(engine)
        if not should_evaluate(epoch, cfg.VI_TRAIN.EVAL_PERIOD, cfg.VI_TRAIN.MAX_EPOCHS):
            return
        with torch.random.fork_rng(devices=[]):
            scores = evaluate()
        summary = summarize_scores(scores)
        progress.evaluations[epoch] = summary
        logger.info("epoch %d evaluation: Rank-1 %.2f%%, Rank-5 %.2f%%, Rank-10 %.2f%%, Rank-20 %.2f%%, mAP %.2f%%, "
                    "mINP %.2f%%", epoch, *(100 * summary[key] for key in METRIC_KEYS))
        if summary["rank1"] > progress.best["rank1"]:
            progress.best = {"epoch": epoch, "rank1": summary["rank1"]}
            save_best(scores, epoch)


def attach_checkpointing(trainer, to_save, output_dir, write_results):
    """The resumable checkpoint after every epoch (the latest only, replaced atomically), then results.json."""
    checkpointer = epoch_checkpointer(to_save, output_dir)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: write_results())
    return checkpointer


def attach_progress_bar(trainer, show):
    if show is None:
        show = sys.stderr.isatty()
    if show:
        ProgressBar(persist=False, desc="train").attach(trainer, output_transform=lambda out: {"loss": out["loss"]})


# ------------------------------------------------------------------------------------------------
# Resuming
# ------------------------------------------------------------------------------------------------
def run_identity(cfg, visible, thermal, num_classes):
    """What must not change between an interrupted run and its resumption."""
    identity = {}
    for key in IDENTITY_KEYS:
        section, name = key.split(".")
        value = cfg[section][name]
        identity[key] = list(value) if isinstance(value, (list, tuple)) else value
    identity.update(visible_images=len(visible), thermal_images=len(thermal), classes=num_classes)
    return identity


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def train_cross_modality(cfg, options=None):
    """Check the settings, data and any checkpoint to resume, then train; returns the results dict.

    ``cfg``: the yacs tree (DATASETS.NAMES sysu_mm01 or regdb, VI_TRAIN, MODEL.NAME, MODEL.DEVICE,
    MODEL.PRETRAIN_PATH, DATALOADER.NUM_WORKERS, OUTPUT_DIR). Writes into OUTPUT_DIR the reference's
    best file, ``training_checkpoint_<n>.pt``, ``results.json``, ``config.yaml`` and ``log.txt``.
    """
    options = options or TrainOptions()
    validate_vi_train_config(cfg)
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset, protocol = load_vi_dataset(cfg)
    visible, thermal = split_by_modality(dataset.train)
    try:
        sampler = CrossModalityBatchSampler([r.pid for r in visible], [r.pid for r in thermal],
                                            cfg.VI_TRAIN.IDS_PER_BATCH, cfg.VI_TRAIN.NUM_POS, cfg.VI_TRAIN.SEED)
    except ValueError as err:
        raise DatasetError(f"{dataset.root}: training split: {err}") from None
    identity = run_identity(cfg, visible, thermal, dataset.num_train_pids)
    resume = find_resume_point(cfg.OUTPUT_DIR, identity, ELSEWHERE)
    lock = FolderLock(cfg.OUTPUT_DIR, "train_cross_modality").acquire()
    try:
        setup_logger("pixelfade", filepath=os.path.join(cfg.OUTPUT_DIR, "log.txt"), reset=True)
        save_config(cfg, cfg.OUTPUT_DIR)
        return _train(cfg, options, dataset, protocol, (visible, thermal, sampler), identity, device, resume)
    finally:
        lock.release()
        close_log_handlers()


def _train(cfg, options, dataset, protocol, data, identity, device, resume):
    visible, thermal, sampler = data
    net = build_vi_model(cfg, dataset.num_train_pids).to(device)
    if not cfg.MODEL.PRETRAIN_PATH:
        logger.warning("MODEL.PRETRAIN_PATH is empty: the ResNets start from random weights, not ImageNet "
                       "(the reference's); expect far lower accuracy on real data")
    optimizer = build_optimizer(net, cfg.VI_TRAIN.LR)
    trainer = create_cross_modality_trainer(net, optimizer, device)
    progress = TrainProgress(identity)
    transform = build_vi_train_transform(tuple(cfg.VI_TRAIN.IMG_SIZE), cfg.VI_TRAIN.PADDING)
    train_data = EpochData(PairedImages(visible, thermal, transform), sampler, cfg.DATALOADER.NUM_WORKERS)
    best_path = os.path.join(cfg.OUTPUT_DIR, best_filename(cfg, dataset))

    def save_best(scores, epoch):
        state = reference_state(net, scores, epoch)
        atomic_write(best_path, lambda handle: torch.save(state, handle))
        logger.info("best Rank-1 so far (epoch %d): %s", epoch, best_path)

    def write_results():
        return atomic_write_json(results_summary(cfg, dataset, protocol, progress, best_path, device),
                                 os.path.join(cfg.OUTPUT_DIR, "results.json"))

    attach_epoch_setup(trainer, sampler, optimizer, cfg)
    attach_epoch_records(trainer, progress, cfg)
    attach_progress_bar(trainer, options.show_progress)
    attach_evaluation(trainer, lambda: evaluate_trials(net, dataset, protocol, cfg, device), progress, cfg, save_best)
    to_save = {"model": net, "optimizer": optimizer, "progress": progress}
    checkpointer = attach_checkpointing(trainer, to_save, cfg.OUTPUT_DIR, write_results)
    if options.on_trainer is not None:
        options.on_trainer(trainer)
    if resume is not None:
        restore(resume, to_save, checkpointer)
        finished = resume.epoch
        logger.info("resuming after epoch %d", finished - 1)
        if finished >= cfg.VI_TRAIN.MAX_EPOCHS:
            logger.info("training already finished (VI_TRAIN.MAX_EPOCHS %d)", cfg.VI_TRAIN.MAX_EPOCHS)
            write_results()
            return results_json(cfg.OUTPUT_DIR)
        trainer.load_state_dict({"epoch": finished, "epoch_length": len(sampler), "max_epochs": cfg.VI_TRAIN.MAX_EPOCHS})
    logger.info("%s", dataset.summary())
    logger.info("training %s (%d classes) for %d epochs on %s: %d ids x (%d visible + %d thermal) images, %d batches "
                "an epoch; evaluating %s, trials %s", cfg.MODEL.NAME, dataset.num_train_pids, cfg.VI_TRAIN.MAX_EPOCHS,
                device, cfg.VI_TRAIN.IDS_PER_BATCH, cfg.VI_TRAIN.NUM_POS, cfg.VI_TRAIN.NUM_POS, len(sampler), protocol,
                ", ".join(str(t) for t in dataset.trials))
    trainer.run(train_data, max_epochs=cfg.VI_TRAIN.MAX_EPOCHS)
    write_results()
    return results_json(cfg.OUTPUT_DIR)


def results_summary(cfg, dataset, protocol, progress, best_path, device):
    return {
        "run": {"model": cfg.MODEL.NAME, "dataset": cfg.DATASETS.NAMES, "protocol": protocol,
                "trials": list(dataset.trials), "train_ids": dataset.num_train_pids,
                "train_images": len(dataset.train), "device": str(device), "max_epochs": cfg.VI_TRAIN.MAX_EPOCHS,
                "pretrain_path": cfg.MODEL.PRETRAIN_PATH},
        "epochs": [{"epoch": e, **progress.epochs[e]} for e in sorted(progress.epochs)],
        "evaluations": [{"epoch": e, **progress.evaluations[e]} for e in sorted(progress.evaluations)],
        "best": {**progress.best, "file": os.path.basename(best_path) if progress.best["epoch"] >= 0 else None},
    }


def results_json(output_dir):
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as handle:
        return json.load(handle)
