"""Run folders written before engine/ was split by pipeline still resume: the values a resume
compares (the protection fingerprint, the attack's run identity) are what the old code wrote.

tests/fixtures/pre_move_identities.json was computed by the code before the move (commit f148d6a).
"""
import json
import os

import pytest
from helpers import FIXTURES

from configs import load_config
from engine.attack.checkpoint import run_identity as attack_identity
from engine.attack.settings import AttackSettings
from engine.protect.run import run_fingerprint
from engine.protect.run_store import RunStore

FIXTURE = os.path.join(FIXTURES, "pre_move_identities.json")


@pytest.fixture(scope="module")
def before():
    with open(FIXTURE) as handle:
        return json.load(handle)


PROTECT_CASES = {
    "protect_default": ([], "ckpt.pth sha256=0"),
    "protect_blur": (["PIXELFADE.METHOD", "blur", "PIXELFADE.MODE", "per_image"], "c"),
    "protect_sysu": (["DATASETS.NAMES", "sysu_mm01", "MODEL.FORMAT", "agw_vi"], "c"),
}


@pytest.mark.parametrize("name", sorted(PROTECT_CASES))
def test_the_protection_fingerprint_is_the_one_old_folders_hold(name, before, tmp_path):
    opts, digest = PROTECT_CASES[name]
    now = run_fingerprint(load_config("", opts), digest)
    assert now == before[name]
    with open(tmp_path / "manifest.json", "w") as handle:  # an old run folder's manifest
        json.dump({"fingerprint": before[name]}, handle)
    assert RunStore(str(tmp_path)).open_run(now) is False  # resumes, nothing refused


class _Pairs:
    num_batches = 7
    image_shape = (3, 256, 128)

    def __len__(self):
        return 200


@pytest.mark.parametrize("mode", ["reference", "strong", "identity"])
def test_the_attack_identity_is_the_one_old_checkpoints_hold(mode, before):
    settings = AttackSettings.from_config(load_config(), mode=mode)
    feature_model = "feat.pth" if mode == "identity" else ""
    assert attack_identity(settings, _Pairs(), False, feature_model) == before[f"attack_{mode}"]
