"""Pad inputs to a size a generator can halve repeatedly, and crop its output back.

Strided generators only give back an image of the input size when H and W are multiples of
their total stride; Re-ID crops (e.g. 128x64 with a 7-level U-Net) often are not.
"""
import torch.nn.functional as F
from torch import nn


def padding_for(size, factor):
    """(before, after) padding that brings ``size`` to the next multiple of ``factor``, centred."""
    missing = (-size) % factor
    return missing // 2, missing - missing // 2


def pad_to_multiple(images, factor):
    """Replicate-pad a B x C x H x W batch so H and W are multiples of ``factor``.

    Returns the padded batch and the (top, bottom, left, right) padding; replicate padding works
    for any pad width, unlike reflection, which needs the pad to be smaller than the side.
    """
    top, bottom = padding_for(images.shape[-2], factor)
    left, right = padding_for(images.shape[-1], factor)
    if top == bottom == left == right == 0:
        return images, (0, 0, 0, 0)
    return F.pad(images, (left, right, top, bottom), mode="replicate"), (top, bottom, left, right)


def crop_padding(images, padding):
    """Undo :func:`pad_to_multiple` on an output with the padded input's spatial size."""
    top, bottom, left, right = padding
    height, width = images.shape[-2], images.shape[-1]
    return images[..., top:height - bottom, left:width - right]


class PaddedGenerator(nn.Module):
    """A generator ``self.model`` run on its input padded to a multiple of ``size_factor``, cropped back."""

    def __init__(self, size_factor):
        super().__init__()
        self.size_factor = size_factor

    def forward(self, images):
        padded, padding = pad_to_multiple(images, self.size_factor)
        return crop_padding(self.model(padded), padding)
