"""Non-local block of AGW, with the released code's single inter channel."""
import torch
from torch import nn


class Non_local(nn.Module):
    """Embedded-dot-product non-local block: out = W((theta^T phi / N) g) + x.

    The released AGW weights use ``inter_channels=1`` (the reference computes
    ``reduc_ratio // reduc_ratio``). The BatchNorm inside ``W`` starts at zero weight and bias,
    so a fresh block is the identity and does not disturb a pretrained backbone.
    """

    def __init__(self, in_channels, inter_channels=1):
        super().__init__()
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.g = nn.Conv2d(in_channels, inter_channels, kernel_size=1)
        self.theta = nn.Conv2d(in_channels, inter_channels, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inter_channels, kernel_size=1)
        self.W = nn.Sequential(
            nn.Conv2d(inter_channels, in_channels, kernel_size=1),
            nn.BatchNorm2d(in_channels),
        )
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x):
        batch, _, height, width = x.shape
        g_x = self.g(x).flatten(2).transpose(1, 2)  # (B, N, inter)
        theta_x = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, inter)
        phi_x = self.phi(x).flatten(2)  # (B, inter, N)
        affinity = torch.matmul(theta_x, phi_x)  # (B, N, N)
        affinity = affinity / affinity.shape[-1]
        y = torch.matmul(affinity, g_x).transpose(1, 2)  # (B, inter, N)
        y = y.reshape(batch, self.inter_channels, height, width)
        return self.W(y) + x
