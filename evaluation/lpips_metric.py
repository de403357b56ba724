"""LPIPS (AlexNet, version 0.1, the ``lpips`` package) built offline from a local AlexNet trunk file.

The lpips wheel ships its linear layers (``lpips/weights/v0.1/alex.pth``) but fetches the AlexNet
trunk through torchvision. Here the network is built with ``pnet_rand=True`` (nothing downloads),
the shipped linear layers are checked to have loaded (lpips loads them with ``strict=False``, which
would silently keep random ones), and the trunk comes from a torchvision AlexNet file such as
``alexnet-owt-7be5be79.pth`` given by ``ATTACK.LPIPS_ALEXNET``. Inputs are pixels in [0, 1], mapped
to lpips' [-1, 1] by ``normalize=True``.
"""
import inspect
import os
import pickle

import torch

from utils.errors import CheckpointError

LPIPS_KEY = "ATTACK.LPIPS_ALEXNET"
NOT_COMPUTED_NOTE = (
    "LPIPS not computed: give the torchvision AlexNet file (alexnet-owt-7be5be79.pth, from "
    "torchvision.models.alexnet's ImageNet weights) with ATTACK.LPIPS_ALEXNET <path>; nothing is downloaded")


def _read_trunk(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"{LPIPS_KEY}: file not found: {path}; expected a torchvision AlexNet state dict "
                              "(alexnet-owt-7be5be79.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{LPIPS_KEY}: cannot read {path} ({' '.join(str(err).split())[:150]}); expected a "
                              "torchvision AlexNet state dict") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{LPIPS_KEY}: {path} is not a state dict; expected torchvision AlexNet's")
    return state


def build_lpips(alexnet_path, device="cpu"):
    """lpips.LPIPS(net='alex', version='0.1') with its shipped linear layers and the trunk of ``alexnet_path``."""
    import lpips
    import torchvision

    state = _read_trunk(alexnet_path)
    alexnet = torchvision.models.alexnet(weights=None)
    try:
        alexnet.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{LPIPS_KEY}: {alexnet_path} does not fit torchvision's AlexNet "
                              f"({' '.join(str(err).split())[:150]})") from None
    metric = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    shipped_path = os.path.join(os.path.dirname(inspect.getfile(lpips.LPIPS)), "weights", "v0.1", "alex.pth")
    shipped = torch.load(shipped_path, map_location="cpu", weights_only=True)
    current = metric.state_dict()
    missing = [key for key in shipped if key not in current or not torch.equal(current[key], shipped[key])]
    if missing:
        raise CheckpointError(f"lpips' linear layers did not load from {shipped_path} (keys {missing[:3]})")
    for slice_module in (metric.net.slice1, metric.net.slice2, metric.net.slice3, metric.net.slice4,
                         metric.net.slice5):
        for name, layer in slice_module.named_children():
            layer.load_state_dict(alexnet.features[int(name)].state_dict())
    metric.eval()
    for parameter in metric.parameters():
        parameter.requires_grad_(False)
    return metric.to(device)


def lpips_distance(metric, candidate, original):
    """Per-image LPIPS of pixel images in [0, 1] (N x 3 x H x W): a 1-D tensor of N values."""
    with torch.no_grad():
        return metric(candidate, original, normalize=True).flatten()
