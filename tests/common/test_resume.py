"""engine.common.resume: the trainers' one way to find, read and accept (or refuse) a resume point."""
import os

import pytest
import torch
from ignite.engine import Engine, Events

from engine.common.resume import epoch_checkpointer, find_resume_point, latest_checkpoint, restore
from utils.errors import CheckpointError, RunConflictError


class Counter:
    """A stand-in for a trainer's progress: anything with a state dict."""

    def __init__(self, identity):
        self.identity, self.epoch = identity, 0

    def state_dict(self):
        return {"identity": self.identity, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]


def save_point(folder, epoch, identity):
    torch.save({"progress": {"identity": identity, "epoch": epoch}}, folder / f"training_checkpoint_{epoch}.pt")


def test_the_highest_numbered_checkpoint_is_the_resume_point(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None and find_resume_point(str(tmp_path), {"a": 1}) is None
    for epoch in (2, 10, 9):
        save_point(tmp_path, epoch, {"a": 1})
    (tmp_path / "training_checkpoint_11.pt.tmp").write_text("half written")
    point = find_resume_point(str(tmp_path), {"a": 1})
    assert (point.path, point.epoch) == (str(tmp_path / "training_checkpoint_10.pt"), 10)
    assert point.saved["progress"] == {"identity": {"a": 1}, "epoch": 10}


def test_another_runs_checkpoint_is_refused_naming_the_first_six_changes(tmp_path):
    saved = {f"k{i}": i for i in range(8)}
    save_point(tmp_path, 3, saved)
    path = tmp_path / "training_checkpoint_3.pt"
    with pytest.raises(RunConflictError) as refused:
        find_resume_point(str(tmp_path), {**{f"k{i}": -i for i in range(1, 8)}, "k0": 0, "new": "x"})
    assert str(refused.value) == (
        f"{path} was written by a different training run (k1: 1 -> -1, k2: 2 -> -2, k3: 3 -> -3, k4: 4 -> -4, "
        "k5: 5 -> -5, k6: 6 -> -6); pass the same settings to resume it, or another --output to start afresh")
    with pytest.raises(RunConflictError, match="or another output folder to start afresh$"):
        find_resume_point(str(tmp_path), {}, "another output folder")


def test_an_unreadable_checkpoint_is_one_error_naming_it(tmp_path):
    path = tmp_path / "training_checkpoint_4.pt"
    path.write_bytes(b"not a checkpoint\n at all")
    with pytest.raises(CheckpointError) as unreadable:
        find_resume_point(str(tmp_path), {})
    message = str(unreadable.value)
    assert message.startswith(f"cannot read the training checkpoint {path} (") and "\n" not in message
    assert message.endswith("); delete it to train afresh, or pass another --output")
    torch.save({"model": {}}, path)  # readable, but no progress
    with pytest.raises(CheckpointError, match=r"\('progress'\); delete it to train afresh"):
        find_resume_point(str(tmp_path), {})


def _run_epochs(tmp_path, epochs, writes=True, resume=None):
    trainer = Engine(lambda engine, batch: None)
    progress = Counter({"a": 1})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: setattr(progress, "epoch", engine.state.epoch))
    to_save = {"progress": progress, "model": torch.nn.Linear(1, 1)}  # two objects: the trainers' file name
    checkpointer = epoch_checkpointer(to_save, str(tmp_path), writes)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpointer)
    if resume is not None:
        restore(resume, to_save, checkpointer)
        trainer.load_state_dict({"epoch": resume.epoch, "epoch_length": 1, "max_epochs": epochs})
    trainer.run([0], max_epochs=epochs)
    return progress


def test_the_epoch_checkpointer_keeps_the_latest_only_and_restores_where_it_stopped(tmp_path):
    _run_epochs(tmp_path / "quiet", 2, writes=False)
    assert not (tmp_path / "quiet").exists()  # ranks other than 0 write nothing
    _run_epochs(tmp_path, 2)
    assert sorted(os.listdir(tmp_path)) == ["training_checkpoint_2.pt"]
    point = find_resume_point(str(tmp_path), {"a": 1})
    assert point.epoch == 2
    assert _run_epochs(tmp_path, 3, resume=point).epoch == 3
    assert sorted(os.listdir(tmp_path)) == ["training_checkpoint_3.pt"]
