"""The AGW warm-up multi-step learning rate (ReID-Survey's WarmupMultiStepLR), stepped once per epoch.

lr(e) = base * w(e) * gamma ** bisect_right(milestones, e), with w(e) = factor * (1 - e/W) + e/W
('linear') or factor ('constant') for e < W = WARMUP_ITERS, and 1 afterwards. The scheduler is
stepped on EPOCH_STARTED and its constructor's implicit step sets e = 0, so epoch n (1-based)
trains with e = n: for the AGW defaults epoch 1 gets 3.815e-5, epochs 10-39 3.5e-4, 40-69 3.5e-5
and 70-120 3.5e-6.
"""
from bisect import bisect_right

from torch.optim.lr_scheduler import LRScheduler

from utils.errors import ConfigError

WARMUP_METHODS = ("linear", "constant")


def warmup_multistep_factor(epoch, milestones, gamma, warmup_factor, warmup_iters, warmup_method):
    """The multiplier of the base learning rate at scheduler step ``epoch``."""
    milestones = list(milestones)
    if milestones != sorted(milestones):
        raise ConfigError(f"SOLVER.STEPS must be increasing, got {milestones}")
    if warmup_method not in WARMUP_METHODS:
        raise ConfigError(f"SOLVER.WARMUP_METHOD must be one of {', '.join(WARMUP_METHODS)}, got {warmup_method!r}")
    warmup = 1.0
    if epoch < warmup_iters:
        if warmup_method == "constant":
            warmup = warmup_factor
        else:
            alpha = epoch / warmup_iters
            warmup = warmup_factor * (1 - alpha) + alpha
    return warmup * gamma ** bisect_right(milestones, epoch)


def lr_at_epoch(cfg, epoch):
    """Learning rate that epoch ``epoch`` (1-based) trains with under cfg.SOLVER."""
    s = cfg.SOLVER
    return s.BASE_LR * warmup_multistep_factor(epoch, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS,
                                               s.WARMUP_METHOD)


class WarmupMultiStepLR(LRScheduler):
    """torch scheduler computing ``warmup_multistep_factor`` in closed form from ``last_epoch``."""

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 3, warmup_iters=500,
                 warmup_method="linear", last_epoch=-1):
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        warmup_multistep_factor(0, self.milestones, gamma, warmup_factor, warmup_iters, warmup_method)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        factor = warmup_multistep_factor(self.last_epoch, self.milestones, self.gamma, self.warmup_factor,
                                         self.warmup_iters, self.warmup_method)
        return [base_lr * factor for base_lr in self.base_lrs]

    @classmethod
    def from_config(cls, optimizer, cfg):
        s = cfg.SOLVER
        return cls(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD)
