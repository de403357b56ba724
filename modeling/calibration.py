"""BatchNorm statistics for an untrained model.

A freshly initialised network's BatchNorm layers hold identity statistics, so its features have
an arbitrary scale (feature MSEs in the hundreds) and PixelFade's epsilon means nothing for it.
Measuring the statistics on real images gives features scaled like a trained model's BNNeck
output; the weights stay untrained.
"""
import torch
from torch import nn


def calibrate_batchnorm(model, batches):
    """Replace every BatchNorm's running mean/var by the cumulative statistics over ``batches``.

    ``batches`` yields image tensors already on the model's device. The model is left in eval
    mode with its parameters untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("calibrate_batchnorm: the model has no BatchNorm layer")
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    seen = 0
    with torch.no_grad():
        for images in batches:
            model(images)
            seen += images.shape[0]
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()
    if seen == 0:
        raise ValueError("calibrate_batchnorm: no images were given")
    return seen
