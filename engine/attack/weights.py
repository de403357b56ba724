"""The learned attackers' generator weights: building the generator, publishing its weights, loading the scored ones."""
import os

import torch

from engine.attack.checkpoint import latest_checkpoint, read_checkpoint, weight_file
from engine.attack.layout import best_weight_path, weight_path
from engine.attack.results import read_results
from engine.attack.trainer import recovered_normalized
from modeling.generators import build_generator
from utils.file_io import atomic_link, atomic_torch_save


def build_attack_generator(settings, image_shape, device):
    """The attacker's generator for C x H x W images (C in and out), on ``device``."""
    return build_generator(settings.generator, ngf=settings.ngf, output_activation=settings.output_activation,
                           input_nc=image_shape[0], output_nc=image_shape[0]).to(device)


def cpu_state_dict(module):
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


def publish_weights(checkpoint_dir, generator, best, path):
    """``Generator_weight*.pth`` (and ``*_best.pth``): hard links to the last checkpoint's weight files.

    Written once, at the end, and never a second copy of the same weights; a checkpoint of an earlier
    version (weights inside) or a file system without links gets the weights saved from memory.
    """
    saved = read_checkpoint(latest_checkpoint(checkpoint_dir), mmap=True)
    targets = [("generator", path, lambda: cpu_state_dict(generator))]
    if best.epoch >= 0:
        targets.append(("best", best_weight_path(path), lambda: best.weights))
    for role, target, in_memory in targets:
        source = weight_file(checkpoint_dir, saved, role)
        if source is not None and os.path.isfile(source):
            atomic_link(source, target)
        else:
            atomic_torch_save(in_memory(), target)


def scored_generator(settings, log_dir, image_shape, device):
    """(generator, epoch, selection): the best epoch's weights with a validation split, else the last's."""
    last = weight_path(log_dir, settings.mode)
    entry = read_results(log_dir).get(settings.mode, {})
    best = entry.get("best")
    if best is not None and os.path.isfile(best_weight_path(last)):
        path, epoch, selection = best_weight_path(last), best["epoch"], "best_validation"
    else:
        path, epoch, selection = last, settings.total_epochs - 1, "last"
    generator = build_attack_generator(settings, image_shape, device)
    generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    generator.eval()
    return generator, epoch, selection


def generator_recovery(generator, settings):
    """protected -> recovered (normalised) through a trained generator, as the privacy scorer calls it."""
    return lambda protected, modalities=None: recovered_normalized(generator(protected), settings)
