"""How the commands use the machine: usable CPUs, torch threads, loader workers, progress output, log stream."""
import io
import logging
import sys

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average

from engine.attack import run as attack
from utils import cpus, progress
from utils.errors import ConfigError


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cgroup(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs -> 2
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, 8),  # no quota: the affinity mask
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),
    ({"cpu.max": "1600000 100000\n"}, 8),  # a quota above the mask does not add CPUs
    ({}, 8),
])
def test_available_cpus_is_the_affinity_mask_capped_by_the_cgroup_quota(tmp_path, monkeypatch, files, expected):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpus.available_cpus(_cgroup(tmp_path, files)) == expected


def test_default_threads_follow_omp_num_threads_else_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(cpus, "available_cpus", lambda: 6)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpus.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert (cpus.default_threads(), cpus.default_threads(processes=2), cpus.default_threads(processes=12)) == (6, 3, 1)


def test_configure_threads_sets_torch_and_refuses_bad_values(monkeypatch, restore_threads):
    monkeypatch.setattr(cpus, "available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpus.configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert cpus.configure_threads(0) == 2 and torch.get_num_threads() == 2
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError) as caught:
            cpus.configure_threads(bad)
        assert str(caught.value) == ("SYSTEM.THREADS (--threads) must be an integer >= 0 (0: the CPUs this "
                                     f"process may use), got {bad!r}")


def test_loader_workers_are_capped_at_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(cpus, "available_cpus", lambda: 2)
    assert [cpus.loader_workers(n) for n in (0, 1, 2, 4)] == [0, 1, 2, 2]


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.get_num_threads()


def test_loader_workers_run_single_threaded(restore_threads):
    """torch gives each worker one thread whatever the main process has, so no worker_init_fn is needed."""
    torch.set_num_threads(2)
    loader = torch.utils.data.DataLoader(_Threads(), batch_size=1, num_workers=1)
    assert [int(batch) for batch in loader] == [1, 1]
    assert torch.get_num_threads() == 2


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _engine_with_mean(epochs_seen):
    engine = Engine(lambda engine, batch: {"loss": float(batch), "img": 2.0})
    Average(output_transform=lambda out: out["loss"]).attach(engine, "loss")
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_seen.append(e.state.epoch))
    return engine


def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal():
    stream, seen = io.StringIO(), []
    engine = _engine_with_mean(seen)
    progress.attach_progress(engine, "attack[strong]", metric_names=["loss"],
                             output_transform=lambda out: {"img/s": out["img"]}, stream=stream)
    engine.run([1.0, 2.0, 6.0], max_epochs=3)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and seen == [1, 2, 3]
    for epoch, line in enumerate(lines, start=1):
        assert line.startswith(f"attack[strong]: epoch {epoch}/3, 3 iterations in ")
        assert line.endswith(" s, loss=3, img/s=2")
    single = io.StringIO()
    engine = _engine_with_mean([])
    progress.attach_progress(engine, "protect test", output_transform=lambda out: {"feature MSE": out["loss"]},
                             stream=single)
    engine.run([0.5, 0.25], max_epochs=1)
    assert len(single.getvalue().splitlines()) == 1
    assert single.getvalue().startswith("protect test: 2 iterations in ")
    assert single.getvalue().endswith(" s, feature MSE=0.25\n")


def test_progress_is_a_bar_on_a_terminal(monkeypatch):
    attached = []

    class _Bar:
        def __init__(self, persist, desc):
            self.desc = desc

        def attach(self, engine, metric_names=None, output_transform=None):
            attached.append((self.desc, metric_names))

    monkeypatch.setattr(progress, "ProgressBar", _Bar)
    stream = _Terminal()
    engine = _engine_with_mean([])
    progress.attach_progress(engine, "train", metric_names=["loss"], stream=stream)
    engine.run([1.0], max_epochs=2)
    assert attached == [("train", ["loss"])] and stream.getvalue() == ""


def test_attack_log_goes_to_stderr_like_the_other_commands(tmp_path):
    logger = attack.get_attack_logger(str(tmp_path))
    try:
        streams = [h.stream for h in logger.handlers if type(h) is logging.StreamHandler]
        assert streams == [sys.stderr]
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
