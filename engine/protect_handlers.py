"""The outputs of the protection Engine, one handler each (see ``protect_engine.attach_outputs``).

Each handler is called with the engine and reads ``engine.state.output`` (the step's dict); some
add to it (statistics, stored-image features) for the handlers after them. The record writer runs
last: a record on disk means every other output of its batch is already written.
"""
import math

from evaluation.protection_stats import protection_statistics
from utils.errors import NonFiniteError

from .features import extract_features
from .storage import dequantize, quantize_to_uint8


class RandomStreamRestorer:
    """Before a batch: put the method's random stream where an uninterrupted run would have it.

    That is the state saved with the batch this process protected just before it, or the
    stream's start for its first batch; nothing to do when that batch was just protected here.
    """

    def __init__(self, split, method, store, schedule, batch_size):
        self.split = split
        self.method = method
        self.store = store
        self.schedule = schedule
        self.batch_size = batch_size
        self.last = None

    def __call__(self, engine):
        batch_index = int(engine.state.batch["index"][0]) // self.batch_size
        previous = self.schedule.predecessor(self.split, batch_index)
        if previous != self.last:
            if previous is None:
                self.method.set_rng_state(self.method.initial_state)
            else:
                self.method.set_rng_state(self.store.load_batch(*previous)["rng_state"])
        self.last = (self.split, batch_index)


class StatisticsHandler:
    """Per-image feature MSE and cosine, and how noise-like each protected image is."""

    def __call__(self, engine):
        out = engine.state.output
        out["stats"] = protection_statistics(out["original"], out["protected"], out["noise"],
                                             out["original_features"], out["protected_features"])
        out["feature_mse"] = float(out["stats"]["feature_mse"].mean())


class NonFiniteCheck:
    """Stop the run at a diverged batch; the batches finished before it stay on disk."""

    def __init__(self, split):
        self.split = split

    def __call__(self, engine):
        out = engine.state.output
        if not math.isfinite(out["feature_mse"]):
            raise NonFiniteError(
                f"non-finite feature loss in {self.split} batch {out['batch_index']}; the batches finished before "
                "it are kept. Retry with a lower --beta/--beta_temp or --precision none (a new run: use another --output)."
            )


class PngWriter:
    """Store each protected image as a lossless 8-bit PNG and extract the features of what was stored."""

    def __init__(self, store, model, png_paths, mean, std, feature_chunk):
        self.store = store
        self.model = model
        self.png_paths = png_paths
        self.mean = mean
        self.std = std
        self.feature_chunk = feature_chunk

    def __call__(self, engine):
        out = engine.state.output
        pixels = quantize_to_uint8(out["protected"], self.mean, self.std)
        stored = dequantize(pixels, self.mean, self.std)
        out["stored_features"] = extract_features(self.model, stored, self.feature_chunk)
        for image, index in zip(pixels.cpu(), out["indices"].tolist()):
            self.store.save_png(self.png_paths[index], image)


class PairWriter:
    """The reference's ``img_npy`` original/protected pairs of the batch, for the recovery attack."""

    def __init__(self, store, split):
        self.store = store
        self.split = split

    def __call__(self, engine):
        out = engine.state.output
        self.store.save_pairs(self.split, out["batch_index"], out["original"], out["protected"], out["pids"], out["camids"])


class GridWriter:
    """An original (top) / protected (bottom) grid of each of the first ``num_grids`` batches."""

    def __init__(self, store, split, num_grids, mean, std):
        self.store = store
        self.split = split
        self.num_grids = num_grids
        self.mean = mean
        self.std = std

    def __call__(self, engine):
        out = engine.state.output
        if out["batch_index"] < self.num_grids:
            self.store.save_grid(self.split, out["batch_index"], quantize_to_uint8(out["original"], self.mean, self.std),
                                 quantize_to_uint8(out["protected"], self.mean, self.std))


class BatchRecordWriter:
    """The batch's record: what results are computed from, and the random state a resume continues from."""

    def __init__(self, store, split, method, item_keys):
        self.store = store
        self.split = split
        self.method = method
        self.item_keys = item_keys

    def __call__(self, engine):
        out = engine.state.output
        record = {
            "indices": out["indices"].cpu(),
            "items": [self.item_keys[i] for i in out["indices"].tolist()],
            "pids": out["pids"].cpu(),
            "camids": out["camids"].cpu(),
            "original_features": out["original_features"].cpu(),
            "protected_features": out["protected_features"].cpu(),
            "rng_state": self.method.rng_state(),
            **{name: value.cpu() for name, value in out["stats"].items()},
        }
        if "stored_features" in out:
            record["stored_features"] = out["stored_features"].cpu()
        self.store.save_record(self.split, out["batch_index"], record)
