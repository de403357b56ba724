"""Training folders written before engine/ was split by pipeline still resume: each trainer's run identity
is, value for value, what the old code saved in its checkpoints, and the shared resume finder accepts it.

tests/fixtures/pre_move_identities.json was computed by the code before the move (commit f148d6a).
"""
import json
import os
from types import SimpleNamespace

import pytest
import torch
from helpers import FIXTURES

from configs import load_config
from engine.common.resume import find_resume_point
from engine.train import cross_modality, reid, reid_settings, text_image
from utils.errors import RunConflictError

FIXTURE = os.path.join(FIXTURES, "pre_move_identities.json")


def before(name):
    with open(FIXTURE) as handle:
        return json.load(handle)[name]


def resumes_old_folder(folder, saved_identity, identity, defaults=None):
    """An old run folder holding ``saved_identity`` after 2 epochs: the resume point found for ``identity``."""
    torch.save({"progress": {"identity": saved_identity, "epoch": 2}}, folder / "training_checkpoint_2.pt")
    return find_resume_point(str(folder), identity, defaults=defaults)


def reid_identity(cfg):
    return reid.run_identity(cfg, SimpleNamespace(train=[0] * 12, num_train_pids=3), 1)


def test_the_reid_trainer_identity_is_the_one_old_folders_hold(tmp_path):
    now, old = reid_identity(load_config()), before("train_reid")
    assert {key: now[key] for key in old} == old
    # Keys added since are settings old runs did not have: each at its default, as those runs ran.
    defaults = reid_settings.identity_defaults()
    assert all(now[key] == defaults[key] for key in set(now) - set(old))
    assert resumes_old_folder(tmp_path, old, now, defaults).epoch == 2


def test_an_old_folder_refuses_a_run_that_sets_a_newer_key_otherwise(tmp_path):
    old = {key: value for key, value in before("train_reid").items() if key != "MODEL.INIT_SEED"}
    now = reid_identity(load_config("", ["MODEL.INIT_SEED", "7"]))
    assert resumes_old_folder(tmp_path, old, reid_identity(load_config()), reid_settings.identity_defaults())
    with pytest.raises(RunConflictError, match=r"MODEL\.INIT_SEED: 0 -> 7"):
        resumes_old_folder(tmp_path, old, now, reid_settings.identity_defaults())


def test_the_cross_modality_trainer_identity_is_the_one_old_folders_hold(tmp_path):
    now = cross_modality.run_identity(load_config(), [0] * 10, [0] * 8, 4)
    assert now == before("train_vi")
    assert resumes_old_folder(tmp_path, before("train_vi"), now).epoch == 2


def test_the_text_image_trainer_identity_is_the_one_old_folders_hold(tmp_path):
    settings = text_image.TextImageSettings(dataset="rstpreid", root="/data", output="/out")
    now = text_image.run_identity(settings, SimpleNamespace(train=[0] * 9, train_captions=[0] * 18))
    assert now == before("train_t2i")
    assert resumes_old_folder(tmp_path, before("train_t2i"), now).epoch == 2
