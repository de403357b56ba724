"""Generalized-mean (GeM) pooling with a learnable exponent, as in the AGW head."""
import torch
from torch import nn
from torch.nn import functional as F


def generalized_mean(x, p, eps):
    """(mean over H, W of clamp(x, eps)^p)^(1/p) per channel: p=1 is average, p->inf is max."""
    return F.adaptive_avg_pool2d(x.clamp(min=eps).pow(p), 1).pow(1.0 / p)


class GeneralizedMeanPooling(nn.Module):
    """GeM over the spatial dimensions; ``p`` is one learnable scalar (state-dict key ``p``, shape [1])."""

    def __init__(self, initial_p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(initial_p)))
        self.eps = eps

    def forward(self, x):
        return generalized_mean(x, self.p, self.eps)

    def extra_repr(self):
        return f"p={self.p.item():.4f}, eps={self.eps}"
