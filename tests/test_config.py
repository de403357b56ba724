"""The config tree: reference YAML files, overrides, clear errors, and saved configs that load back."""
import pytest

from configs import ConfigError, load_config, save_config


def test_reference_config_files_load_with_their_values():
    market = load_config("configs/AGW_baseline_market1501.yml")
    cuhk = load_config("configs/AGW_baseline_cuhk03.yml")
    msmt = load_config("configs/AGW_baseline_msmt17.yml")
    assert (market.DATASETS.NAMES, cuhk.DATASETS.NAMES, msmt.DATASETS.NAMES) == ("market1501", "cuhk03", "msmt17")
    assert market.PIXELFADE.BETA_TEMP == 0.04 and msmt.PIXELFADE.BETA_TEMP == 0.04
    assert cuhk.PIXELFADE.BETA_TEMP == 0.02
    for cfg in (market, cuhk, msmt):
        assert cfg.MODEL.NAME == "resnet50_nl" and list(cfg.INPUT.IMG_SIZE) == [256, 128]
        assert (cfg.PIXELFADE.MAX_ITER, cfg.PIXELFADE.FADE_NUM_ITER, cfg.PIXELFADE.WARMUP_ITER) == (100, 5, 5)
        assert (cfg.PIXELFADE.MOMENTUM, cfg.PIXELFADE.BETA, cfg.PIXELFADE.EPSILON, cfg.PIXELFADE.BATCH_SIZE) == (0.6, 0.01, 0.03, 20)


def test_trailing_overrides_win_and_unknown_keys_are_named():
    cfg = load_config("configs/AGW_baseline_cuhk03.yml", ["PIXELFADE.BETA_TEMP", "0.05", "INPUT.IMG_SIZE", "[64, 32]"])
    assert cfg.PIXELFADE.BETA_TEMP == 0.05 and list(cfg.INPUT.IMG_SIZE) == [64, 32]
    with pytest.raises(ConfigError, match="unknown config key 'PIXELFADE.NOPE'"):
        load_config("", ["PIXELFADE.NOPE", "1"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config("", ["PIXELFADE.BETA"])
    with pytest.raises(ConfigError, match="config file not found: missing.yml"):
        load_config("missing.yml")


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yml: unknown config key 'MODEL.NOT_A_KEY'"):
        load_config(str(path))


def test_a_saved_config_loads_back_identically(tmp_path):
    cfg = load_config("configs/AGW_baseline_cuhk03.yml", ["OUTPUT_DIR", "log/x", "TEST.WEIGHT", "ckpt/a.pth"])
    path = save_config(cfg, str(tmp_path))
    assert load_config(path) == cfg
    other = save_config(cfg, str(tmp_path), "attack_config.yaml")
    assert other.endswith("attack_config.yaml") and load_config(other) == cfg
