"""The ignite Engine that protects a split batch by batch; every output is a handler on its events.

The step does one thing: protect the batch with the run's method and extract the original and
protected features. What happens to a protected batch (statistics, the non-finite check, PNGs,
``img_npy`` pairs, grids, the record that marks it done) is attached by ``attach_outputs`` as
``ITERATION_COMPLETED`` handlers in that order (the record last), so an output is added or
dropped without touching the step. A batch is the reference's batch: items ``i*B .. i*B+B-1`` of
the split.
"""

import time

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from engine.methods.codec import PixelCodec
from engine.protect.handlers import (
    BatchRecordWriter,
    EvalModelFeatures,
    GridWriter,
    NonFiniteCheck,
    PairWriter,
    PngWriter,
    RandomStreamRestorer,
    StatisticsHandler,
)
from engine.protect.sharding import batch_spans, shard_range
from utils.progress import attach_progress


def create_protect_engine(protector, device, batch_size):
    """An Engine whose step protects one batch with ``protector`` (the service API's own path).

    ``engine.state.output`` is a dict: split-wide ``batch_index``, global ``indices``, ``pids``,
    ``camids``, ``original`` and ``protected`` images, the method's ``noise``, the fp32
    ``original_features`` and ``protected_features``, the per-image ``stats`` (with the share of
    steps the constraint held), ``seconds`` (the step) and ``method_seconds`` (the protection alone,
    CUDA synchronised); handlers add to it.
    """
    device = torch.device(device)

    def protect_step(engine, batch):
        started = time.perf_counter()
        original = batch["image"].to(device, non_blocking=True)
        indices = batch["index"]
        result = protector.protect_batch(original, indices)
        return {
            "batch_index": int(indices[0]) // batch_size,
            "indices": indices,
            "pids": batch["pid"],
            "camids": batch["camid"],
            "original": original,
            "protected": result.protected,
            "noise": result.noise,
            "stats": result.stats,
            "original_features": result.original_features,
            "protected_features": result.protected_features,
            "seconds": time.perf_counter() - started,
            "method_seconds": result.method_seconds,
        }

    return Engine(protect_step)


def attach_outputs(
    engine, *, split, method, model, store, schedule, cfg, item_keys, png_paths, save_png, show_progress, eval_models=()
):
    """Attach the run's outputs to ``engine`` as handlers, in the order they must run."""
    codec = PixelCodec(tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD))
    pf = cfg.PIXELFADE
    engine.add_event_handler(
        Events.ITERATION_STARTED, RandomStreamRestorer(split, method, store, schedule, pf.BATCH_SIZE)
    )
    handlers = [StatisticsHandler(), NonFiniteCheck(split)]
    if eval_models:
        handlers.append(EvalModelFeatures(list(eval_models), cfg.TEST.IMS_PER_BATCH))
    if save_png:
        handlers.append(PngWriter(store, model, png_paths, codec, cfg.TEST.IMS_PER_BATCH))
    if pf.SAVE_IMAGE_NPY:
        handlers.append(PairWriter(store, split))
    if pf.NUM_GRIDS:
        handlers.append(GridWriter(store, split, pf.NUM_GRIDS, codec))
    handlers.append(BatchRecordWriter(store, split, method, item_keys))
    for handler in handlers:
        engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    if show_progress and idist.get_rank() == 0:
        attach_progress(
            engine,
            f"protect {split}",
            persist=True,
            output_transform=lambda out: {
                "feature MSE": out["feature_mse"],
                "img/s": len(out["indices"]) / max(out["seconds"], 1e-9),
            },
        )


class BatchSchedule:
    """The order in which this process protects (split, batch) pairs, and what each one follows.

    The random stream runs through the schedule; before a batch whose predecessor was finished in
    an earlier run, the stream is restored from that predecessor's record.
    """

    def __init__(self):
        self._previous = {}
        self._last = None

    def add_split(self, split, num_items, batch_size):
        spans = batch_spans(num_items, batch_size)
        shard = shard_range(len(spans), idist.get_world_size(), idist.get_rank())
        for batch_index in shard:
            self._previous[(split, batch_index)] = self._last
            self._last = (split, batch_index)
        return spans, shard

    def predecessor(self, split, batch_index):
        """The (split, batch) protected just before this one by this process, or None."""
        return self._previous[(split, batch_index)]
