"""Wall-clock timing of a piece of work on a device (shared by the benchmark scripts beside it).

CUDA runs asynchronously: the clock starts and stops only after the device's queued work is done.
"""
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    """(seconds, result) of ``function()`` on ``device``."""
    sync(device)
    started = time.perf_counter()
    result = function()
    sync(device)
    return time.perf_counter() - started, result
