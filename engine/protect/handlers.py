"""The outputs of the protection Engine, one handler each (see ``protect_engine.attach_outputs``).

Each handler is called with the engine and reads ``engine.state.output`` (the step's dict); some
add to it (statistics, stored-image features) for the handlers after them. The record writer runs
last: a record on disk means every other output of its batch is already written.
"""

import math
import os
from dataclasses import dataclass, field

import torch
from PIL import Image
from torchvision.utils import make_grid

from engine.methods.codec import PixelCodec
from evaluation.features import extract_features
from utils.errors import NonFiniteError
from utils.grids import labelled_grid, save_labelled_grid


class OutputHandler:
    """An ``ITERATION_COMPLETED`` handler: ``handle`` receives the step's output dict."""

    def __call__(self, engine):
        self.handle(engine.state.output)


@dataclass
class RandomStreamRestorer:
    """Before a batch: put the method's random stream where an uninterrupted run would have it.

    That is the state saved with the batch this process protected just before it, or the
    stream's start for its first batch; nothing to do when that batch was just protected here.
    """

    split: str
    method: object
    store: object
    schedule: object
    batch_size: int
    last: tuple = field(default=None, init=False)

    def __call__(self, engine):
        batch_index = int(engine.state.batch["index"][0]) // self.batch_size
        previous = self.schedule.predecessor(self.split, batch_index)
        if previous != self.last:
            if previous is None:
                self.method.set_rng_state(self.method.initial_state)
            else:
                self.method.set_rng_state(self.store.load_batch(*previous)["rng_state"])
        self.last = (self.split, batch_index)


class StatisticsHandler(OutputHandler):
    """The batch's mean feature MSE, for the progress bar and the non-finite check (the per-image
    statistics come from the step, ``Protector.protect_batch``)."""

    def handle(self, out):
        out["feature_mse"] = float(out["stats"]["feature_mse"].mean())


@dataclass
class NonFiniteCheck(OutputHandler):
    """Stop the run at a diverged batch; the batches finished before it stay on disk."""

    split: str

    def handle(self, out):
        if not math.isfinite(out["feature_mse"]):
            raise NonFiniteError(
                f"non-finite feature loss in {self.split} batch {out['batch_index']}; the batches finished before "
                "it are kept. Retry with a lower --beta/--beta_temp or --precision none "
                "(a new run: use another --output)."
            )


@dataclass
class EvalModelFeatures(OutputHandler):
    """Features of the original and protected images under each extra scoring model (TEST.EVAL_MODELS)."""

    models: list
    feature_chunk: int

    def handle(self, out):
        for k, model in enumerate(self.models):
            out[f"eval{k}_original_features"] = extract_features(model, out["original"], self.feature_chunk)
            out[f"eval{k}_protected_features"] = extract_features(model, out["protected"], self.feature_chunk)


@dataclass
class PngWriter(OutputHandler):
    """Store each protected image as a lossless 8-bit PNG and extract the features of what was stored."""

    store: object
    model: object
    png_paths: dict
    codec: PixelCodec
    feature_chunk: int

    def handle(self, out):
        pixels = self.codec.to_pixels(out["protected"])
        out["stored_features"] = extract_features(self.model, self.codec.to_input(pixels), self.feature_chunk)
        for image, index in zip(pixels.cpu(), out["indices"].tolist()):
            self.store.save_png(self.png_paths[index], image)


@dataclass
class PairWriter(OutputHandler):
    """The reference's ``img_npy`` original/protected pairs of the batch, for the recovery attack."""

    store: object
    split: str

    def handle(self, out):
        self.store.save_pairs(
            self.split, out["batch_index"], out["original"], out["protected"], out["pids"], out["camids"]
        )


@dataclass
class GridWriter(OutputHandler):
    """``imgs/<split>_<i>.png`` of the first ``num_grids`` batches: rows ``GRID_ROWS``, labelled on the left."""

    store: object
    split: str
    num_grids: int
    codec: PixelCodec

    def handle(self, out):
        if out["batch_index"] < self.num_grids:
            rows = [self.codec.to_pixels(out[kind]).float().cpu() / 255.0 for kind in GRID_ROWS]
            grid = make_grid(torch.cat(rows), nrow=rows[0].shape[0], padding=2, pad_value=1.0)
            pixels = torch.round(grid * 255).to(torch.uint8).permute(1, 2, 0).numpy()
            save_labelled_grid(labelled_grid(Image.fromarray(pixels), GRID_ROWS),
                               os.path.join(self.store.grid_dir, f"{self.split}_{out['batch_index']}.png"))


# The protection grid's rows, top to bottom (the reference's imgs/ grids, with their names drawn).
GRID_ROWS = ("original", "protected")
def passes_per_image(method):
    """The method's ``passes_per_image()`` dict of ints, or None for a method without one."""
    count = getattr(method, "passes_per_image", None)
    if count is None:
        return None
    try:
        return {str(name): int(value) for name, value in count().items()}
    except NotImplementedError:
        return None


@dataclass
class BatchRecordWriter(OutputHandler):
    """The batch's record: what results are computed from, the random state a resume continues from, and
    the protection's cost (seconds of the method alone, the method's passes per image)."""

    store: object
    split: str
    method: object
    item_keys: list

    def handle(self, out):
        record = {
            "indices": out["indices"].cpu(),
            "items": [self.item_keys[i] for i in out["indices"].tolist()],
            "pids": out["pids"].cpu(),
            "camids": out["camids"].cpu(),
            "original_features": out["original_features"].cpu(),
            "protected_features": out["protected_features"].cpu(),
            "rng_state": self.method.rng_state(),
            "method_seconds": float(out["method_seconds"]),
            "passes_per_image": passes_per_image(self.method),
            **{name: value.cpu() for name, value in out["stats"].items()},
        }
        for key in out:
            if key == "stored_features" or key.startswith("eval"):
                record[key] = out[key].cpu()
        self.store.save_record(self.split, out["batch_index"], record)
