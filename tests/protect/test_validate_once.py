"""Each run checks its settings once: the protect path validates the config a single time."""
import pytest
from helpers import protect_argv

import protect_image
from data.synthetic import make_market1501
from engine.protect import protector, run


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = run.validate_protect_config

    def counting(cfg, flag_of_key=None):
        calls.append(cfg.OUTPUT_DIR)
        return original(cfg, flag_of_key)

    monkeypatch.setattr(run, "validate_protect_config", counting)
    monkeypatch.setattr(protector, "validate_protect_config", counting)
    return calls


def test_a_protect_run_validates_its_config_once(tmp_path, counted):
    make_market1501(str(tmp_path / "data"), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=1)
    argv = protect_argv(str(tmp_path / "data"), str(tmp_path / "out"), "--fade_num_iter", "2", "--warmup_iter", "1")
    assert protect_image.main(argv + ["PIXELFADE.NUM_GRIDS", "0"]) == 0
    assert counted == [str(tmp_path / "out")]


def test_the_service_api_validates_once_per_protector(counted):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 16, 4))
    protector.Protector(model, overrides={"INPUT.IMG_SIZE": [32, 16], "PIXELFADE.MAX_ITER": 2})
    assert len(counted) == 1
