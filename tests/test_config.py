"""The config tree: reference YAML files, overrides, clear errors, and saved configs that load back."""
import pytest

from configs import ConfigError, get_default_config, load_config, save_config

# The reference's values (its protect_image.py flags and AGW test settings; README, protect_image.py).
REFERENCE_DEFAULTS = {
    "MODEL.NAME": "resnet50_nl",
    "MODEL.LAST_STRIDE": 1,
    "MODEL.GENERALIZED_MEAN_POOL": "on",
    "MODEL.DEVICE": "auto",
    "INPUT.IMG_SIZE": [256, 128],
    "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406],
    "INPUT.PIXEL_STD": [0.229, 0.224, 0.225],
    "DATASETS.NAMES": "market1501",
    "DATASETS.CUHK03_LABELED": False,
    "TEST.FEAT_NORM": "on",
    "TEST.DISTANCE": "euclidean",
    "TEST.RE_RANKING": "off",
    "PIXELFADE.METHOD": "pixelfade",
    "PIXELFADE.BATCH_SIZE": 20,
    "PIXELFADE.MAX_ITER": 100,
    "PIXELFADE.FADE_NUM_ITER": 5,
    "PIXELFADE.WARMUP_ITER": 5,
    "PIXELFADE.MOMENTUM": 0.6,
    "PIXELFADE.BETA": 0.01,
    "PIXELFADE.BETA_TEMP": 0.04,
    "PIXELFADE.EPSILON": 0.03,
    "PIXELFADE.TAIL_ITERS": 5,
    "PIXELFADE.MODE": "reference",
    "PIXELFADE.PRECISION": "none",
    "PIXELFADE.CHANNELS_LAST": False,
    "PIXELFADE.SAVE_IMAGE_NPY": False,
    "ATTACK.GENERATOR": "unet_128",
    "ATTACK.NGF": 64,
    "ATTACK.OPTIMIZER": "adam",
    "ATTACK.LR": 0.001,
    "ATTACK.TOTAL_EPOCHS": 100,
    "ATTACK.EVAL_EPOCHS": [2],
    "ATTACK.MODE": "reference",
}


def _value(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, (list, tuple)) else node


@pytest.mark.parametrize("key, expected", sorted(REFERENCE_DEFAULTS.items()))
def test_defaults_are_the_reference_values(key, expected):
    for cfg in (get_default_config(), load_config("")):
        value = _value(cfg, key)
        assert value == expected and type(value) is type(expected), key


@pytest.mark.parametrize("name", ["market1501", "cuhk03", "msmt17"])
def test_reference_config_files_keep_the_evaluation_defaults(name):
    cfg = load_config(f"configs/AGW_baseline_{name}.yml")
    assert (cfg.TEST.FEAT_NORM, cfg.TEST.DISTANCE, cfg.TEST.RE_RANKING) == ("on", "euclidean", "off")
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.485, 0.456, 0.406] and list(cfg.INPUT.PIXEL_STD) == [0.229, 0.224, 0.225]
    assert cfg.PIXELFADE.CHANNELS_LAST is False and cfg.PIXELFADE.PRECISION == "none"


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
        pixelfade = cfg.PIXELFADE
        assert (pixelfade.MOMENTUM, pixelfade.BETA, pixelfade.EPSILON, pixelfade.BATCH_SIZE) == (0.6, 0.01, 0.03, 20)


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
