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


def test_a_reference_style_config_file_loads(tmp_path):
    """The reference's YAML files set AGW-trainer keys and machine paths; they must load unchanged."""
    path = tmp_path / "AGW_reference.yml"
    path.write_text(
        "MODEL:\n  PRETRAIN_CHOICE: 'imagenet'\n  PRETRAIN_PATH: '/somewhere/resnet50-19c8e357.pth'\n"
        "  CENTER_LOSS: 'on'\n  CENTER_FEAT_DIM: 2048\n  NAME: 'resnet50_nl'\n  WEIGHT_REGULARIZED_TRIPLET: 'on'\n"
        "  GENERALIZED_MEAN_POOL: 'on'\n"
        "INPUT:\n  IMG_SIZE: [256, 128]\n  PROB: 0.5\n  RE_PROB: 0.0\n  PADDING: 0\n"
        "DATASETS:\n  NAMES: ('cuhk03')\n  ROOT_DIR: ('/mnt/Datasets/reid_dataset/')\n"
        "DATALOADER:\n  PK_SAMPLER: 'on'\n  NUM_INSTANCE: 4\n  NUM_WORKERS: 8\n"
        "SOLVER:\n  OPTIMIZER_NAME: 'Adam'\n  MAX_EPOCHS: 120\n  BASE_LR: 0.00035\n  STEPS: [40, 70]\n"
        "  WARMUP_FACTOR: 0.01\n  IMS_PER_BATCH: 20\n"
        "TEST:\n  IMS_PER_BATCH: 128\n  RE_RANKING: 'off'\n  WEIGHT: \"path\"\n  FEAT_NORM: 'on'\n"
        "  EVALUATE_ONLY: 'off'\n  PARTIAL_REID: 'off'\n"
        "OUTPUT_DIR: \"./log/market1501/Experiment-AGW-baseline\"\n"
    )
    cfg = load_config(str(path), ["DATASETS.ROOT_DIR", "/data"])
    assert cfg.DATASETS.NAMES == "cuhk03" and cfg.DATASETS.ROOT_DIR == "/data"
    assert tuple(cfg.SOLVER.STEPS) == (40, 70) and cfg.TEST.IMS_PER_BATCH == 128
