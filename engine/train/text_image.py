"""Training a CLIP text-image Re-ID model on a text data set's train split (IRRA's recipe, scaled for small runs).

Data: CUHK-PEDES / ICFG-PEDES / RSTPReid layouts (``data.datasets.text_person``). Each epoch shuffles
the train images into batches and gives each image one of its captions, drawn at random; the flip
and the draws are seeded from (seed, epoch), so a run resumed after epoch e repeats epochs e+1...
exactly (same device and thread count). IRRA instead iterates over (image, caption) pairs, so an
image with two captions is seen twice per epoch.

Model: open_clip's CLIP (``modeling.clip_reid``): ``clip_tiny`` (random init, for the CPU and the
demo), ``ViT-B-16``, or the weights of ``init`` (a CLIP or IRRA file; sizes from its shapes);
nothing is downloaded. Losses (``modeling.text_image_losses``): IRRA's SDM with a fixed temperature
(IRRA's 0.02 by default), plus IRRA's ID loss through a new linear classifier (weight 1); IRRA's
third loss (masked language modelling through a cross-modal transformer) is not implemented.

Optimiser, as IRRA's: Adam (betas 0.9 / 0.999), weight decay 4e-5, biases at 2 x lr without decay,
the classifier at 5 x lr; the learning rate per epoch follows a linear warm-up from 0.1 x over the
first twelfth of the epochs (IRRA: 5 of 60) and then a cosine to 0. IRRA's lr is 1e-5 for the
pretrained CLIP (used here with ``init``); a randomly initialised model needs far more
(``DEFAULT_SCRATCH_LR``). Adam's epsilon is 1e-8 (IRRA's is 1e-3, beside its fp16 weights).
The image transform is IRRA's default: resize, random horizontal flip, CLIP's mean/std.

Outputs in the run folder: ``training_checkpoint_<epoch>.pt`` every epoch (the latest only, written
atomically; rerunning with the same settings resumes), ``results.json`` (losses per epoch,
text-to-image Rank-1/5/10, mAP and mINP on the test split at epoch 0, every ``eval_period`` epochs and
at the end), ``log.txt``, and at the end ``clip_model.pth``: the CLIP as a plain OpenAI-key state
dict that ``MODEL.FORMAT auto`` reads as ``clip`` (``protect_image.py --reid_ckpt_path``), with the
ID classifier in ``classifier.pth``; with ``irra_export``, also ``irra_model.pth`` in IRRA's layout
(``{'model': {'base_model.*', 'classifier.*'}}``).
"""
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from ignite.utils import setup_logger
from torchvision import transforms as T

from configs.checks import is_int, is_number
from data.datasets import build_dataset
from data.datasets.text_person import LAYOUTS
from data.loaders import build_loader, read_image
from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, build_clip_eval_transform
from engine.common.resume import epoch_checkpointer, find_resume_point, restore
from engine.train.loop import TrainProgress, attach_loss_tracking, create_trainer, optimizer_step
from engine.train.seeding import epoch_seed, seed_everything
from evaluation.text_to_image import evaluate_text_to_image
from modeling import read_checkpoint, resolve_device
from modeling.clip_reid import ARCHITECTURES, IRRA_PREFIX, ClipReIDModel, detect_clip, detect_irra, load_clip, load_irra
from modeling.text_image_losses import IRRA_TEMPERATURE, id_loss, identity_classifier, sdm_loss
from utils.errors import CheckpointError, ConfigError, DatasetError
from utils.file_io import FolderLock, atomic_torch_save, atomic_write_json
from utils.logs import close_log_handlers

logger = logging.getLogger("pixelfade.train_t2i")

CLIP_FILE, CLASSIFIER_FILE, IRRA_FILE = "clip_model.pth", "classifier.pth", "irra_model.pth"
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
LOSS_KEYS = ("loss", "sdm", "id")
# IRRA's solver (utils/options.py, solver/build.py).
IRRA_LR = 1e-5
DEFAULT_SCRATCH_LR = 1e-3
BIAS_LR_FACTOR = 2.0
NEW_LAYER_LR_FACTOR = 5.0
WEIGHT_DECAY = 4e-5
WARMUP_FACTOR = 0.1
WARMUP_SHARE = 5 / 60
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Settings that do not change the weights a run produces: they may differ when it resumes.
FREE_SETTINGS = ("root", "output", "device", "num_workers", "eval_period", "irra_export", "show_progress")


@dataclass
class TextImageSettings:
    """One training run; ``lr`` None means IRRA's 1e-5 with ``init`` and DEFAULT_SCRATCH_LR without."""

    dataset: str
    root: str
    output: str
    epochs: int = 60
    batch_size: int = 128
    lr: float = None
    # SDM's fixed temperature (logit scale 1 / temperature), IRRA's 0.02 by default.
    temperature: float = IRRA_TEMPERATURE
    arch: str = "clip_tiny"
    image_size: tuple = (384, 128)
    device: str = "auto"
    seed: int = 0
    init: str = ""
    num_workers: int = 0
    eval_period: int = 1
    irra_export: bool = False
    # None: a progress bar when stderr is a terminal, else one log line per epoch only.
    show_progress: bool = None

    @property
    def learning_rate(self):
        return self.lr if self.lr is not None else (IRRA_LR if self.init else DEFAULT_SCRATCH_LR)


def _is_pair(value):
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) for v in value)


def validate_settings(settings):
    """ConfigError naming the first bad setting (as its command-line flag) and what is expected."""
    def fail(flag, expected, value):
        raise ConfigError(f"--{flag}: expected {expected}, got {value!r}")

    if settings.dataset not in LAYOUTS:
        fail("dataset", "one of " + ", ".join(LAYOUTS), settings.dataset)
    if not settings.output:
        fail("output", "a folder path", settings.output)
    for name, minimum in (("epochs", 1), ("batch_size", 2), ("seed", 0), ("num_workers", 0), ("eval_period", 1)):
        value = getattr(settings, name)
        if not is_int(value) or value < minimum:
            fail(name, f"a whole number >= {minimum}", value)
    for flag, value in (("lr", settings.learning_rate), ("temperature", settings.temperature)):
        if not is_number(value) or value <= 0:
            fail(flag, "a positive number", value)
    if settings.arch not in ARCHITECTURES:
        fail("arch", "one of " + ", ".join(ARCHITECTURES), settings.arch)
    patch = ARCHITECTURES[settings.arch]["patch_size"]
    size = settings.image_size
    if not _is_pair(size) or min(size) < patch or any(v % patch for v in size):
        fail("image_size", f"H W, two positive multiples of the patch size {patch} (IRRA: 384 128)",
             settings.image_size)
    if settings.init and not os.path.isfile(settings.init):
        fail("init", "an existing CLIP or IRRA checkpoint file", settings.init)
    resolve_device(settings.device)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def load_text_dataset(settings):
    dataset = build_dataset(settings.dataset, settings.root)
    if len({record.pid for record in dataset.train}) < 2:
        raise DatasetError(f"{dataset.annotation}: fewer than 2 train identities; the losses need at least 2")
    return dataset


def captions_by_image(dataset):
    """For each train image (in order), the list of its caption texts."""
    texts = [[] for _ in dataset.train]
    for caption in dataset.train_captions:
        texts[caption.image_index].append(caption.text)
    return texts


def build_train_transform(image_size):
    """IRRA's default train transform (no --img_aug): resize, horizontal flip at 0.5, CLIP normalisation."""
    return T.Compose([T.Resize(tuple(image_size)), T.RandomHorizontalFlip(0.5), T.ToTensor(),
                      T.Normalize(CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)])


class CaptionedImages(torch.utils.data.Dataset):
    """Item ``(image index, caption number)`` -> the transformed image, its caption's token ids, its label."""

    def __init__(self, records, captions, transform, tokenizer):
        self.records, self.captions = records, captions
        self.transform, self.tokenizer = transform, tokenizer

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        index, choice = item
        record = self.records[index]
        ids = self.tokenizer.tokenize([self.captions[index][choice]])[0]
        return {"image": self.transform(read_image(record.path)), "ids": ids, "pid": record.pid}


def epoch_batches(captions, batch_size, seed, epoch):
    """The epoch's batches of (image index, caption number): shuffled images, one random caption each."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(len(captions), generator=generator).tolist()
    draws = torch.rand(len(captions), generator=generator).tolist()
    items = [(index, int(draws[index] * len(captions[index]))) for index in order]
    return [items[start:start + batch_size] for start in range(0, len(items), batch_size)]


class EpochData:
    """The trainer's data; each ``iter`` opens a DataLoader over ``epoch``'s batches (set on EPOCH_STARTED)."""

    def __init__(self, dataset, batch_size, seed, num_workers):
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self.epoch = 1

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        def generate():
            batches = epoch_batches(self.dataset.captions, self.batch_size, self.seed, self.epoch)
            yield from torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers)

        return generate()


# ------------------------------------------------------------------------------------------------
# Model, optimiser, schedule
# ------------------------------------------------------------------------------------------------
def build_text_image_model(settings, num_classes, device):
    """(CLIP model in train mode, ID classifier), both seeded from ``seed``; ``init`` weights when given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = ClipReIDModel(ARCHITECTURES[settings.arch], list(settings.image_size), "clip",
                              architecture=settings.arch)
        if settings.init:
            load_init(model, settings.init)
        classifier = identity_classifier(model.feature_dim, num_classes)
    # IRRA's temperature is fixed: open_clip's logit_scale is kept, unused and untrained.
    model.clip.logit_scale.requires_grad_(False)
    return model.to(device).train(), classifier.to(device).train()


def load_init(model, path):
    """Copy a CLIP or IRRA file into ``model`` (its training heads ignored); CheckpointError for anything else."""
    state = read_checkpoint(path)
    if detect_irra(state):
        return load_irra(model, state, path, logger)
    if detect_clip(state):
        return load_clip(model, state, path, logger)
    raise CheckpointError(f"{path}: --init expects a CLIP state dict or an IRRA checkpoint; its keys are neither "
                          f"({', '.join(list(state)[:4])}, ...)")


def build_optimizer(model, classifier, lr):
    """Adam with IRRA's groups: weights at lr with decay, biases at 2 x lr without, the classifier at 5 x lr."""
    groups = []
    for module, factor in ((model, 1.0), (classifier, NEW_LAYER_LR_FACTOR)):
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        weights = [p for name, p in named if "bias" not in name]
        biases = [p for name, p in named if "bias" in name]
        groups.append({"params": weights, "lr": lr * factor, "weight_decay": WEIGHT_DECAY})
        groups.append({"params": biases, "lr": lr * factor * (1.0 if module is classifier else BIAS_LR_FACTOR),
                       "weight_decay": 0.0})
    return torch.optim.Adam(groups, betas=ADAM_BETAS, eps=ADAM_EPS)


class WarmupCosine:
    """IRRA's LRSchedulerWithWarmup (linear warm-up, cosine to 0) as a factor of the base lr, by 0-based epoch."""

    def __init__(self, epochs):
        self.epochs = int(epochs)
        self.warmup = min(self.epochs - 1, round(self.epochs * WARMUP_SHARE))

    def __call__(self, epoch):
        if epoch < self.warmup:
            alpha = epoch / self.warmup
            return WARMUP_FACTOR * (1 - alpha) + alpha
        return 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup) / (self.epochs - self.warmup)))


def build_scheduler(optimizer, epochs):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(epochs))


# ------------------------------------------------------------------------------------------------
# The trainer and its handlers
# ------------------------------------------------------------------------------------------------
def create_text_image_trainer(model, classifier, optimizer, device, logit_scale=1.0 / IRRA_TEMPERATURE):
    """An ignite Engine whose step is one Adam step on SDM + ID of a batch of images with one caption each."""

    def step(engine, batch):
        model.train()
        classifier.train()
        images = batch["image"].to(device, non_blocking=True)
        ids = batch["ids"].to(device, non_blocking=True)
        pids = torch.as_tensor(batch["pid"]).to(device)
        image_features = model(images)
        text_features = model.encode_token_ids(ids)
        sdm = sdm_loss(image_features, text_features, pids, logit_scale)
        identity = id_loss(classifier(image_features), classifier(text_features), pids)
        return {**optimizer_step(optimizer, sdm + identity, sdm=sdm, id=identity), "images": int(images.shape[0])}

    return create_trainer(step)


def attach_epoch_seeding(trainer, data, seed):
    """Before each epoch: the global RNGs (image flips) and the batches from (seed, epoch)."""

    @trainer.on(Events.EPOCH_STARTED)
    def _seed(engine):
        data.epoch = engine.state.epoch
        seed_everything(epoch_seed(seed, engine.state.epoch))


def attach_epoch_records(trainer, progress, scheduler, epochs):
    """Per-epoch mean losses, lr, seconds and images/s into ``progress``; the scheduler steps after each epoch."""

    def diverged(engine, loss):
        return f"the training loss is {loss} at epoch {engine.state.epoch}: training diverged; try a lower --lr"

    def record_epoch(engine, record, seconds):
        scheduler.step()
        progress.epochs[engine.state.epoch] = record
        progress.epoch = engine.state.epoch
        logger.info("epoch %d/%d: lr %.3g, loss %.4f (sdm %.4f, id %.4f), %d batches, %.1f s, %.1f images/s",
                    engine.state.epoch, epochs, record["lr"], record["loss"], record["sdm"], record["id"],
                    record["batches"], seconds, record["images_per_s"])

    attach_loss_tracking(trainer, LOSS_KEYS, lambda engine: scheduler.get_last_lr()[0], diverged, record_epoch)


def attach_progress_bar(trainer, show):
    """ignite's bar when ``show`` (None: when stderr is a terminal); the epoch lines are logged either way."""
    if show is None:
        show = sys.stderr.isatty()
    if show:
        ProgressBar(persist=False, desc="train").attach(trainer, output_transform=lambda out: {"loss": out["loss"]})


def attach_evaluation(trainer, evaluate, progress, period, epochs):
    """Text-to-image scores on the test split before training, every ``period`` epochs and at the end."""

    def record(epoch):
        scores = evaluate()
        progress.evaluations[epoch] = scores
        logger.info("epoch %d text-to-image: Rank-1 %.2f%%, Rank-5 %.2f%%, Rank-10 %.2f%%, mAP %.2f%%, mINP %.2f%%",
                    epoch, *(100 * scores[key] for key in METRIC_KEYS))

    @trainer.on(Events.STARTED)
    def _before(engine):
        if 0 not in progress.evaluations:
            record(0)

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=lambda _, epoch: epoch % period == 0 or epoch == epochs))
    def _after(engine):
        record(engine.state.epoch)


def attach_checkpointing(trainer, to_save, output_dir, write_results):
    """The resumable checkpoint after every epoch (the latest only, replaced atomically), then results.json."""
    checkpointer = epoch_checkpointer(to_save, output_dir)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: write_results())
    return checkpointer


# ------------------------------------------------------------------------------------------------
# Evaluation, checkpoints, exports
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_test_split(model, dataset, image_size, device, batch_size=128):
    """Text-to-image Rank-1/5/10, mAP, mINP (fractions) of the test captions against the test images."""
    was_training = model.training
    model.eval()
    loader = build_loader(dataset.gallery, build_clip_eval_transform(image_size), batch_size)
    images = torch.cat([model(batch["image"].to(device)).float().cpu() for batch in loader])
    texts = model.encode_captions([caption.text for caption in dataset.query_captions]).cpu()
    model.train(was_training)
    scores = evaluate_text_to_image(texts, images, dataset.caption_pids, [r.pid for r in dataset.gallery])
    return {key: scores["text_to_image"][key] for key in METRIC_KEYS}


def run_identity(settings, dataset):
    """What must not change between an interrupted run and its resumption."""
    identity = {key: value for key, value in asdict(settings).items()
                if key not in FREE_SETTINGS and key not in ("image_size", "lr")}
    identity.update(image_size=list(settings.image_size), lr=settings.learning_rate,
                    init_bytes=os.path.getsize(settings.init) if settings.init else 0, train_images=len(dataset.train), train_captions=len(dataset.train_captions))
    return identity


def clip_state_dict(model):
    """The CLIP's weights with OpenAI's key names, fp32 on the CPU: the ``clip`` format."""
    return {key: value.detach().cpu().clone() for key, value in model.clip.state_dict().items()}


def export_weights(model, classifier, output_dir, irra_export):
    """``clip_model.pth``, ``classifier.pth`` and (``irra_export``) ``irra_model.pth``; returns their paths."""
    clip_state = clip_state_dict(model)
    head = {key: value.detach().cpu().clone() for key, value in classifier.state_dict().items()}
    paths = [atomic_torch_save(clip_state, os.path.join(output_dir, CLIP_FILE)),
             atomic_torch_save(head, os.path.join(output_dir, CLASSIFIER_FILE))]
    if irra_export:
        irra = {IRRA_PREFIX + key: value for key, value in clip_state.items() if key != "logit_scale"}
        irra.update({f"classifier.{key}": value for key, value in head.items()})
        paths.append(atomic_torch_save({"model": irra}, os.path.join(output_dir, IRRA_FILE)))
    return paths


def results_summary(settings, dataset, device, progress):
    results = {"run": {**asdict(settings), "lr": settings.learning_rate, "device": str(device),
                       "train_ids": len({r.pid for r in dataset.train}), "train_images": len(dataset.train),
                       "test_images": len(dataset.gallery), "test_captions": len(dataset.query_captions)},
               "epochs": [{"epoch": e, **progress.epochs[e]} for e in sorted(progress.epochs)],
               "evaluations": [{"epoch": e, **progress.evaluations[e]} for e in sorted(progress.evaluations)]}
    results["run"]["image_size"] = list(settings.image_size)
    if results["evaluations"]:
        results["final"] = results["evaluations"][-1]
    return results


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def run(settings, on_trainer=None):
    """Check everything, train (or resume), export; returns the results dict.

    Settings, the data set, a checkpoint to resume and the ``init`` file are all checked before the
    output folder is touched. ``on_trainer(trainer, objects)`` (tests) sees the trainer with every
    handler attached and the model, classifier, optimizer, scheduler and progress by name.
    """
    validate_settings(settings)
    setup_logger("pixelfade", reset=True)
    dataset = load_text_dataset(settings)
    identity = run_identity(settings, dataset)
    resume = find_resume_point(settings.output, identity)
    device = resolve_device(settings.device)
    model, classifier = build_text_image_model(settings, len({record.pid for record in dataset.train}), device)
    with FolderLock(settings.output, "train_text_image.py"):
        setup_logger("pixelfade", filepath=os.path.join(settings.output, "log.txt"), reset=True)
        try:
            return _train(settings, dataset, identity, (model, classifier, device, resume), on_trainer)
        finally:
            close_log_handlers()


def _train(settings, dataset, identity, built, on_trainer):
    model, classifier, device, resume = built
    done = resume.epoch if resume is not None else 0
    optimizer = build_optimizer(model, classifier, settings.learning_rate)
    scheduler = build_scheduler(optimizer, settings.epochs)
    progress = TrainProgress(identity)
    data = EpochData(CaptionedImages(dataset.train, captions_by_image(dataset),
                                     build_train_transform(list(settings.image_size)), model.tokenizer),
                     settings.batch_size, settings.seed, settings.num_workers)

    def write_results():
        results = results_summary(settings, dataset, device, progress)
        atomic_write_json(results, os.path.join(settings.output, "results.json"))
        return results

    trainer = create_text_image_trainer(model, classifier, optimizer, device, 1.0 / settings.temperature)
    attach_epoch_seeding(trainer, data, settings.seed)
    attach_epoch_records(trainer, progress, scheduler, settings.epochs)
    attach_progress_bar(trainer, settings.show_progress)
    attach_evaluation(trainer, lambda: evaluate_test_split(model, dataset, list(settings.image_size), device),
                      progress, settings.eval_period, settings.epochs)
    to_save = {"model": model, "classifier": classifier, "optimizer": optimizer, "scheduler": scheduler,
               "progress": progress}
    checkpointer = attach_checkpointing(trainer, to_save, settings.output, write_results)
    if on_trainer is not None:
        on_trainer(trainer, to_save)
    logger.info("%s", dataset.summary())
    if resume is not None:
        restore(resume, to_save, checkpointer)
        logger.info("resuming %s after epoch %d", settings.output, done)
    if done < settings.epochs:
        logger.info("training %s (%d-d embedding, %d identities) for %d epochs on %s: batch %d, lr %g, "
                    "SDM (temperature %g) + ID",
                    model.architecture, model.feature_dim, classifier.out_features, settings.epochs, device,
                    settings.batch_size, settings.learning_rate, settings.temperature)
        if resume is not None:
            trainer.load_state_dict({"epoch": done, "epoch_length": len(data), "max_epochs": settings.epochs})
        trainer.run(data, max_epochs=settings.epochs, epoch_length=len(data))
    if progress.epoch < settings.epochs:
        logger.info("stopped after epoch %d of %d; rerun the same command to resume", progress.epoch, settings.epochs)
        return write_results()
    for path in export_weights(model, classifier, settings.output, settings.irra_export):
        logger.info("weights: %s", path)
    return write_results()
