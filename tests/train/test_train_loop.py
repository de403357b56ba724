"""engine/train/loop.py: per-epoch means of the step outputs, and the divergence stop."""
import math

import pytest
import torch
from ignite.engine import Engine

from engine.train.loop import attach_loss_tracking, optimizer_step
from utils.errors import NonFiniteError

OUTPUTS = [{"loss": 3.0, "id": 2.0, "images": 4}, {"loss": 1.0, "id": 0.5, "images": 2}]


def _trainer(outputs):
    return Engine(lambda engine, batch: outputs[batch])


def test_epoch_record_holds_mean_losses_lr_batches_and_throughput():
    trainer, seen = _trainer(OUTPUTS), []
    attach_loss_tracking(trainer, ("loss", "id"), lambda engine: 0.1 * engine.state.epoch,
                         lambda engine, loss: "unused", lambda engine, record, seconds: seen.append((record, seconds)))
    trainer.run([0, 1], max_epochs=2)
    assert len(seen) == 2
    for epoch, (record, seconds) in enumerate(seen, start=1):
        assert record["loss"] == 2.0 and record["id"] == 1.25 and record["batches"] == 2
        assert record["lr"] == pytest.approx(0.1 * epoch)
        assert record["seconds"] == round(seconds, 3)
        assert record["images_per_s"] == pytest.approx(6 / max(seconds, 1e-9))
        assert list(record)[:3] == ["loss", "id", "lr"]


def test_a_non_finite_loss_stops_with_the_trainers_own_advice():
    outputs = [OUTPUTS[0], {"loss": math.nan, "id": 0.0, "images": 1}]
    trainer = _trainer(outputs)
    attach_loss_tracking(trainer, ("loss", "id"), lambda engine: 0.0,
                         lambda engine, loss: f"loss {loss} at epoch {engine.state.epoch}; try a lower --lr",
                         lambda engine, record, seconds: None)
    with pytest.raises(NonFiniteError, match=r"^loss nan at epoch 1; try a lower --lr$"):
        trainer.run([0, 1], max_epochs=1)


def test_optimizer_step_takes_one_step_and_reports_the_loss_and_its_parts():
    weight = torch.nn.Parameter(torch.tensor([3.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    optimizer.zero_grad()
    weight.grad = torch.tensor([100.0])  # a stale gradient must not leak into the step
    first, second = (weight - 1).pow(2).sum(), (2 * weight).sum()
    output = optimizer_step(optimizer, first + second, first=first, second=second)
    assert output == {"loss": 10.0, "first": 4.0, "second": 6.0}
    assert list(output) == ["loss", "first", "second"]
    # d/dw [(w - 1)^2 + 2w] at w = 3 is 2 * 2 + 2 = 6: one SGD step of 0.1 gives 2.4.
    assert weight.item() == pytest.approx(2.4)
