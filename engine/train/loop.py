"""The pieces of an ignite training loop that the cross-modality and text-image trainers share."""
import logging
import math
import time

from ignite.engine import Engine, Events

from utils.errors import NonFiniteError


class TrainProgress:
    """The run's identity, finished epochs, per-epoch losses and evaluations: saved with each checkpoint
    (a recipe's subclass adds what else it must resume)."""

    def __init__(self, identity):
        self.identity = identity
        self.epoch = 0
        self.epochs = {}
        self.evaluations = {}

    def state_dict(self):
        return {"identity": self.identity, "epoch": self.epoch,
                "epochs": {str(k): v for k, v in self.epochs.items()},
                "evaluations": {str(k): v for k, v in self.evaluations.items()}}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self.epochs = {int(k): v for k, v in state["epochs"].items()}
        self.evaluations = {int(k): v for k, v in state["evaluations"].items()}


def create_trainer(step):
    """An Engine running ``step``; its own error log is silenced (the caller reports a failing step)."""
    trainer = Engine(step)
    trainer.logger.setLevel(logging.CRITICAL)
    return trainer


def optimizer_step(optimizer, loss, **parts):
    """One optimizer step on ``loss``; the step's output: the loss, then its named ``parts``, as floats."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), **{name: float(part.detach()) for name, part in parts.items()}}


def attach_loss_tracking(trainer, loss_keys, lr_of, diverged, on_epoch):
    """Sum each step's ``loss_keys``, batches and images; at the epoch's end call ``on_epoch(engine, record,
    seconds)`` with the mean losses, ``lr_of(engine)``, batches, seconds and images/s.

    A non-finite loss stops the run with ``NonFiniteError(diverged(engine, loss))``: the step's output
    names what to change, the trainer's own setting.
    """
    sums = {}

    @trainer.on(Events.EPOCH_STARTED)
    def _reset(engine):
        sums.clear()
        sums.update({key: 0.0 for key in loss_keys}, batches=0, images=0, started=time.perf_counter())

    @trainer.on(Events.ITERATION_COMPLETED)
    def _add(engine):
        output = engine.state.output
        if not math.isfinite(output["loss"]):
            raise NonFiniteError(diverged(engine, output["loss"]))
        for key in loss_keys:
            sums[key] += output[key]
        sums["batches"] += 1
        sums["images"] += output["images"]

    @trainer.on(Events.EPOCH_COMPLETED)
    def _record(engine):
        seconds = time.perf_counter() - sums["started"]
        record = {key: sums[key] / max(1, sums["batches"]) for key in loss_keys}
        record.update(lr=lr_of(engine), batches=sums["batches"], seconds=round(seconds, 3),
                      images_per_s=sums["images"] / max(seconds, 1e-9))
        on_epoch(engine, record, seconds)
