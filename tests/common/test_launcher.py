"""engine.common.launcher: how many processes a run has, its backend, and where its work runs."""
import os

import ignite.distributed as idist
import pytest

from engine.common import launcher


@pytest.mark.parametrize("env, nproc, expected", [
    ({}, None, 1), ({}, 1, 1), ({}, 3, 3), ({"WORLD_SIZE": "1"}, 3, 3),
    ({"WORLD_SIZE": "4"}, None, 4), ({"WORLD_SIZE": "4"}, 2, 4),  # torchrun's count wins over --nproc_per_node
])
def test_world_size_is_torchruns_else_nproc_per_node(monkeypatch, env, nproc, expected):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launcher.world_size(nproc) == expected
    assert launcher.under_launcher() == (int(env.get("WORLD_SIZE", "1")) > 1)


def test_cpu_runs_use_gloo(monkeypatch):
    monkeypatch.setattr(launcher.torch.cuda, "is_available", lambda: True)
    assert (launcher.default_backend("cpu"), launcher.default_backend("auto")) == ("gloo", "nccl")
    monkeypatch.setattr(launcher.torch.cuda, "is_available", lambda: False)
    assert launcher.default_backend("cuda") == "gloo"


def _work(local_rank, folder, tag):
    path = os.path.join(folder, f"{tag}_{idist.get_rank()}_of_{idist.get_world_size()}")
    with open(path, "w") as handle:
        handle.write(str(local_rank))
    return path


def test_one_process_runs_the_work_here_and_returns_its_result(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launcher.idist, "Parallel", None)  # no ignite.distributed context is opened
    assert launcher.launch(_work, str(tmp_path), "one", nproc_per_node=1) == str(tmp_path / "one_0_of_1")


@pytest.mark.slow  # two spawned Python processes import torch and ignite (about 14 s on 2 cores)
def test_nproc_per_node_spawns_that_many_gloo_processes(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher.launch(_work, str(tmp_path), "two", nproc_per_node=2, device="cpu") is None
    assert sorted(os.listdir(tmp_path)) == ["two_0_of_2", "two_1_of_2"]
    assert [(tmp_path / name).read_text() for name in sorted(os.listdir(tmp_path))] == ["0", "1"]
