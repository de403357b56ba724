"""What defines one recovery attacker's training: ``ATTACK.*`` checked, the optimizer, loader workers."""
import dataclasses
import math

import torch

from configs.checks import is_int, is_number, require
from modeling.generators import GENERATORS
from utils.cpus import available_cpus

LOGGER_NAME = "pixelfade.attack"
ATTACKERS = ("reference", "strong", "identity", "inversion")
# Attackers that train a generator on the train pairs; 'inversion' optimises each image instead.
LEARNED_ATTACKERS = ("reference", "strong", "identity")
INVERSION_INITS = ("mean", "protected")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9
# ATTACK.VAL_FRACTION's default: each attacker's own protocol, DEFAULT_VAL_FRACTION[mode].
PER_ATTACKER = -1
# The reference attacker trains on every train pair, as the paper's recovery_attack.py; the privacy
# evaluation's attackers hold out a tenth of the train identities and keep their best epoch.
DEFAULT_VAL_FRACTION = {"reference": 0.0, "strong": 0.1, "identity": 0.1, "inversion": 0.0}


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
    val_fraction: float = 0.0  # resolved by from_config (resolve_val_fraction); a bare AttackSettings holds none out
    identity_weight: float = 1.0
    inversion_steps: int = 200
    inversion_lr: float = 0.01
    inversion_tv: float = 0.1
    inversion_init: str = "mean"

    def __post_init__(self):
        require(self.generator in GENERATORS, "ATTACK.GENERATOR",
                 f"one of {sorted(GENERATORS)}", self.generator)
        require(self.optimizer in OPTIMIZERS, "ATTACK.OPTIMIZER", f"one of {OPTIMIZERS}",
                 self.optimizer)
        require(self.mode in ATTACKERS, "ATTACK.MODE", f"one of {ATTACKERS}", self.mode)
        require(is_int(self.ngf) and self.ngf >= 1, "ATTACK.NGF", "a positive integer", self.ngf)
        require(is_int(self.total_epochs) and self.total_epochs >= 1, "ATTACK.TOTAL_EPOCHS",
                 "a positive integer", self.total_epochs)
        require(is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "ATTACK.LR",
                 "a positive number", self.lr)
        require(all(is_int(epoch) and epoch >= 0 for epoch in self.eval_epochs),
                 "ATTACK.EVAL_EPOCHS", "0-based epoch indices >= 0", list(self.eval_epochs))
        require(is_int(self.num_grids) and self.num_grids >= 0, "ATTACK.NUM_GRIDS",
                 "an integer >= 0", self.num_grids)
        require(is_int(self.seed), "ATTACK.SEED", "an integer", self.seed)
        require(isinstance(self.shuffle, bool), "ATTACK.SHUFFLE", "True or False", self.shuffle)
        require(is_number(self.val_fraction) and 0 <= self.val_fraction < 1, "ATTACK.VAL_FRACTION",
                 "a number in [0, 1)", self.val_fraction)
        require(is_number(self.identity_weight) and math.isfinite(self.identity_weight)
                 and self.identity_weight >= 0, "ATTACK.IDENTITY_WEIGHT", "a number >= 0", self.identity_weight)
        require(is_int(self.inversion_steps) and self.inversion_steps >= 1, "ATTACK.INVERSION_STEPS",
                 "a positive integer", self.inversion_steps)
        require(is_number(self.inversion_lr) and math.isfinite(self.inversion_lr) and self.inversion_lr > 0,
                 "ATTACK.INVERSION_LR", "a positive number", self.inversion_lr)
        require(is_number(self.inversion_tv) and math.isfinite(self.inversion_tv) and self.inversion_tv >= 0,
                 "ATTACK.INVERSION_TV", "a number >= 0", self.inversion_tv)
        require(self.inversion_init in INVERSION_INITS, "ATTACK.INVERSION_INIT", f"one of {INVERSION_INITS}",
                 self.inversion_init)
        for key, values in (("INPUT.PIXEL_MEAN", self.pixel_mean),
                            ("INPUT.PIXEL_STD", self.pixel_std)):
            require(len(values) == 3 and all(is_number(value) for value in values), key,
                     "3 numbers", list(values))
        require(all(value > 0 for value in self.pixel_std), "INPUT.PIXEL_STD",
                 "positive values", list(self.pixel_std))

    @classmethod
    def from_config(cls, cfg, mode=None):
        """The settings of attacker ``mode`` (default ATTACK.MODE), its validation share resolved."""
        attack = cfg.ATTACK
        mode = attack.MODE if mode is None else mode
        return cls(generator=attack.GENERATOR, ngf=attack.NGF,
                   optimizer=str(attack.OPTIMIZER).lower(), lr=attack.LR,
                   total_epochs=attack.TOTAL_EPOCHS, eval_epochs=tuple(attack.EVAL_EPOCHS),
                   mode=mode, shuffle=attack.SHUFFLE, seed=attack.SEED,
                   num_grids=attack.NUM_GRIDS, pixel_mean=tuple(cfg.INPUT.PIXEL_MEAN),
                   pixel_std=tuple(cfg.INPUT.PIXEL_STD),
                   val_fraction=resolve_val_fraction(attack.VAL_FRACTION, mode),
                   identity_weight=attack.IDENTITY_WEIGHT, inversion_steps=attack.INVERSION_STEPS,
                   inversion_lr=attack.INVERSION_LR, inversion_tv=attack.INVERSION_TV,
                   inversion_init=attack.INVERSION_INIT)

    @property
    def output_activation(self):
        return "tanh" if self.mode == "reference" else "none"

    @property
    def pixel_targets(self):
        """Whether the generator regresses pixels in [0, 1] (strong, identity), not normalised images."""
        return self.mode in ("strong", "identity")

    def evaluated_epochs(self):
        """Sorted 0-based epoch indices scored on the test split; the last one always is."""
        wanted = {epoch for epoch in self.eval_epochs if epoch < self.total_epochs}
        return sorted(wanted | {self.total_epochs - 1})


def resolve_val_fraction(configured, mode):
    """ATTACK.VAL_FRACTION for attacker ``mode``: ``configured``, or its protocol's default when -1."""
    if is_number(configured) and configured == PER_ATTACKER:
        return DEFAULT_VAL_FRACTION.get(mode, 0.0)
    require(is_number(configured) and 0 <= configured < 1, "ATTACK.VAL_FRACTION",
             f"a number in [0, 1), or {PER_ATTACKER} for each attacker's default {DEFAULT_VAL_FRACTION}", configured)
    return configured


def loader_workers(configured):
    """DATALOADER.NUM_WORKERS capped at the usable CPUs (more only add processes and warnings)."""
    require(is_int(configured) and configured >= 0, "DATALOADER.NUM_WORKERS",
             "an integer >= 0", configured)
    return min(configured, available_cpus())


def build_optimizer(settings, parameters):
    """Adam (the reference) or SGD with momentum 0.9, at settings.lr."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=settings.lr)
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=SGD_MOMENTUM)
