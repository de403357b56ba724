"""A checkpoint is data: loading one must never run code named in its pickle."""
import builtins
import os
import pickle
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from modeling import CheckpointError, read_checkpoint
from modeling.safe_unpickle import ModuleRecord, load_untrusted


class Payload:
    """Pickles as a call of ``function(*args)``: what a malicious checkpoint smuggles in."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": (Payload(os.system, f"touch {marker}"), r"(posix|os)\.system"),
        "builtins.exec": (Payload(builtins.exec, code), r"builtins\.exec"),
        "builtins.eval": (Payload(builtins.eval, code), r"builtins\.eval"),
        "subprocess.call": (Payload(subprocess.call, ["touch", str(marker)]), r"subprocess\.call"),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.exec", "builtins.eval", "subprocess.call"])
def test_reduce_payload_is_refused_and_never_runs(tmp_path, legacy, attack):
    marker = tmp_path / "marker.txt"
    payload, refused_name = _payloads(marker)[attack]
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": payload}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=rf"{path}: refused to load: .*'{refused_name}'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_handwritten_protocol0_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "raw.pth"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(CheckpointError, match=r"refused to load: .*'os\.system'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_payload_hidden_in_a_pickled_module_is_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    module = nn.Sequential(nn.Linear(2, 2))
    module.note = Payload(os.system, f"touch {marker}")
    path = tmp_path / "module.pth"
    torch.save(module, path)
    with pytest.raises(CheckpointError, match=r"refused to load: .*system'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_reference_module_names_become_inert_records_without_import(tmp_path):
    fake = types.ModuleType("modeling.evil_layer")
    Trap = type("Trap", (nn.Module,), {"__module__": "modeling.evil_layer", "__qualname__": "Trap"})
    fake.Trap = Trap
    sys.modules["modeling.evil_layer"] = fake
    try:
        trap = Trap()
        trap.weight = nn.Parameter(torch.arange(3.0))
        path = tmp_path / "trap.pth"
        torch.save(trap, path)
    finally:
        del sys.modules["modeling.evil_layer"]
    record = load_untrusted(path)
    assert isinstance(record, ModuleRecord) and record.pickled_name == "modeling.evil_layer.Trap"
    assert "modeling.evil_layer" not in sys.modules
    assert torch.equal(read_checkpoint(path)["weight"], torch.arange(3.0))


def test_refusal_names_only_the_first_forbidden_global(tmp_path):
    path = tmp_path / "two.pth"
    with open(path, "wb") as handle:
        pickle.dump([Payload(os.getcwd), Payload(os.system, "true")], handle, protocol=2)
    with pytest.raises(CheckpointError, match=r"'(posix|os)\.getcwd'"):
        read_checkpoint(path)


def test_legacy_file_saved_from_gpu_reads_on_cpu(tmp_path):
    """The released files were written from CUDA: their storages are torch.cuda.*Storage."""
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor([4])}
    path = tmp_path / "gpu.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert raw.count(b"ctorch\nFloatStorage\n") == 1
    path.write_bytes(raw.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
                     .replace(b"ctorch\nLongStorage\n", b"ctorch.cuda\nLongStorage\n"))
    loaded = load_untrusted(path)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["n"], state["n"])
    assert loaded["w"].device.type == "cpu"
