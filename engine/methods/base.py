"""The protection-method interface and registry: one registered class per method, one way to build it.

A method is built from (model, cfg, device, rank) and called on a batch of normalised originals
with their global image indices; it returns a ``ProtectedBatch``. Its random numbers come from
one CPU ``torch.Generator`` (identical numbers to ``torch.manual_seed`` on the CPU, the same on
every device) whose state is saved with each finished batch, so a resumed run continues the
stream exactly. A new method registers itself with ``@METHODS.register("name")`` in its own module,
which ``engine/methods/__init__.py`` imports.

Every method reports its cost with ``passes_per_image()``: forward and backward passes of the
authorization model per protected image (and of AVIH's key model), counted from its loop.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from utils.registry import Registry

METHODS = Registry("protection method", config_key="PIXELFADE.METHOD")


@dataclass
class ProtectedBatch:
    protected: torch.Tensor
    noise: Optional[torch.Tensor]
    # fp32 features of ``protected`` when the method already computed them, else None.
    features: Optional[torch.Tensor] = None
    # Per image, the share of steps in which the feature constraint held (PixelFade only).
    constraint_held: Optional[torch.Tensor] = None


def rank_seed(seed, rank):
    """Each process of a multi-process reference-mode run gets its own stream (no shared noise)."""
    return seed if rank == 0 else seed * 1_000_003 + rank


class ProtectionMethod:
    """The interface: ``method(original, indices) -> ProtectedBatch`` and a saved random stream."""

    def __init__(self, model, cfg, device, rank=0):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(rank_seed(cfg.PIXELFADE.SEED, rank))
        self.initial_state = None

    def _stream_ready(self):
        """Call at the end of ``__init__``: the state a run starts from (after any set-up draws)."""
        self.initial_state = self.generator.get_state()

    def rng_state(self):
        return self.generator.get_state()

    def set_rng_state(self, state):
        self.generator.set_state(state)

    def __call__(self, original, indices):
        raise NotImplementedError

    def passes_per_image(self):
        """{"forward": n, "backward": m}: the authorization model's passes per protected image."""
        raise NotImplementedError


def build_method(cfg, model, device, rank=0):
    """The method named by PIXELFADE.METHOD, bound to ``model`` and this process's random stream."""
    return METHODS.get(cfg.PIXELFADE.METHOD)(model, cfg, device, rank)
