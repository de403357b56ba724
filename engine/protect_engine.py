"""The ignite Engine that protects one split batch by batch and writes each batch as it finishes.

A batch is the reference's batch: items ``i*B .. i*B+B-1`` of the split. Each process takes a
contiguous shard of batches; batches whose record already exists are skipped (resume), and the
random stream is restored from the record of the batch before, so a resumed run ends with the same
results as an uninterrupted one.
"""
import logging
import math
import time

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from utils.errors import NonFiniteError
from data.loaders import ImageDataset
from evaluation.protection_stats import protection_statistics

from .distributed import batch_spans, shard_range
from .storage import dequantize, quantize_to_uint8

logger = logging.getLogger("pixelfade.protect")


def extract_features(model, images, chunk_size):
    """Eval-mode features of a batch, fp32, without building a graph, ``chunk_size`` images at a time."""
    with torch.no_grad():
        return torch.cat([model(part).float() for part in images.split(chunk_size)])


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


class SplitProtector:
    """Runs the protection Engine over the pending batches of one split."""

    def __init__(self, *, model, protector, store, cfg, device, schedule, mean, std, save_png, show_progress=True):
        self.model = model
        self.protector = protector
        self.store = store
        self.cfg = cfg
        self.device = torch.device(device)
        self.schedule = schedule
        self.mean = mean
        self.std = std
        self.save_png = save_png
        self.show_progress = show_progress
        self.last_protected = None

    def _restore_stream(self, split, batch_index):
        previous = self.schedule.predecessor(split, batch_index)
        if previous == self.last_protected:
            return
        if previous is None:
            self.protector.set_rng_state(self.protector.initial_state)
        else:
            self.protector.set_rng_state(self.store.load_batch(*previous)["rng_state"])

    def _step(self, split, png_paths, item_keys):
        pf = self.cfg.PIXELFADE

        def step(engine, batch):
            started = time.perf_counter()
            original = batch["image"].to(self.device, non_blocking=True)
            indices = batch["index"]
            batch_index = int(indices[0]) // pf.BATCH_SIZE
            self._restore_stream(split, batch_index)
            result = self.protector(original, indices)
            protected = result.protected
            original_features = extract_features(self.model, original, self.cfg.TEST.IMS_PER_BATCH)
            protected_features = result.features if result.features is not None else extract_features(self.model, protected, self.cfg.TEST.IMS_PER_BATCH)
            stats = protection_statistics(original, protected, result.noise, original_features, protected_features)
            mean_mse = float(stats["feature_mse"].mean())
            if not math.isfinite(mean_mse):
                raise NonFiniteError(
                    f"non-finite feature loss in {split} batch {batch_index}; the batches finished before "
                    "it are kept. Retry with a lower --beta/--beta_temp or --precision none (a new "
                    "run: use another --output)."
                )
            record = {
                "indices": indices.cpu(),
                "items": [item_keys[i] for i in indices.tolist()],
                "pids": batch["pid"].cpu(),
                "camids": batch["camid"].cpu(),
                "original_features": original_features.cpu(),
                "protected_features": protected_features.cpu(),
                "rng_state": self.protector.rng_state(),
                **{name: value.cpu() for name, value in stats.items()},
            }
            need_pixels = self.save_png or batch_index < pf.NUM_GRIDS
            if need_pixels:
                protected_pixels = quantize_to_uint8(protected, self.mean, self.std)
            if self.save_png:
                stored = dequantize(protected_pixels, self.mean, self.std)
                record["stored_features"] = extract_features(self.model, stored, self.cfg.TEST.IMS_PER_BATCH).cpu()
                for pixels, index in zip(protected_pixels.cpu(), indices.tolist()):
                    self.store.save_png(png_paths[index], pixels)
            if pf.SAVE_IMAGE_NPY and split in ("train", "test"):
                self.store.save_pairs(split, batch_index, original, protected, batch["pid"], batch["camid"])
            if batch_index < pf.NUM_GRIDS:
                original_pixels = quantize_to_uint8(original, self.mean, self.std)
                self.store.save_grid(split, batch_index, original_pixels, protected_pixels)
            self.store.save_record(split, batch_index, record)
            self.last_protected = (split, batch_index)
            elapsed = time.perf_counter() - started
            return {"loss": mean_mse, "img/s": original.shape[0] / max(elapsed, 1e-9)}

        return step

    def run(self, split, plan, transform, spans, shard, png_paths):
        """Protect the batches of ``shard`` not already finished; returns how many were protected now.

        A batch is finished when its record exists and names the same images (``plan.keys``); a
        record left by a data set that has since changed (a bad file deleted) is protected again.
        """
        pending = []
        for batch_index in shard:
            start, stop = spans[batch_index]
            state = self.store.batch_state(split, batch_index, plan.keys[start:stop])
            if state != "done":
                pending.append(batch_index)
            if state == "stale":
                logger.info("%s batch %d holds other images than before; protecting it again", split, batch_index)
        if len(pending) < len(shard):
            logger.info("%s: %d of %d batches of this process already done, resuming", split, len(shard) - len(pending), len(shard))
        if not pending:
            return 0
        dataset = ImageDataset(plan.records, transform, flips=plan.flips)
        batches = [list(range(*spans[i])) for i in pending]
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.cfg.DATALOADER.NUM_WORKERS,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )
        engine = Engine(self._step(split, png_paths, plan.keys))
        # A failing step reaches the caller as its exception; ignite's own error log would repeat it.
        engine.logger.setLevel(logging.CRITICAL)
        if self.show_progress and idist.get_rank() == 0:
            ProgressBar(persist=True, desc=f"protect {split}").attach(engine, output_transform=lambda out: out)
        engine.add_event_handler(
            Events.COMPLETED,
            lambda e: logger.info("%s: protected %d batches on rank %d", split, e.state.iteration, idist.get_rank()),
        )
        engine.run(loader, max_epochs=1)
        return len(pending)
