"""The config tree: reference YAML files, overrides, clear errors, and saved configs that load back."""
import pytest

from configs import ConfigError, get_default_config, load_config, save_config
from configs.keys import get_key

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
    node = get_key(cfg, dotted)
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


@pytest.mark.parametrize("source", ["override", "file"])
def test_an_integer_is_accepted_for_a_float_key(tmp_path, source):
    if source == "file":
        path = tmp_path / "ints.yml"
        path.write_text("ATTACK:\n  VAL_FRACTION: 0\nINPUT:\n  PIXEL_MEAN: [0, 1, 0]\nPIXELFADE:\n  BETA: 1\n")
        cfg = load_config(str(path))
    else:
        cfg = load_config("", ["ATTACK.VAL_FRACTION", "0", "INPUT.PIXEL_MEAN", "[0, 1, 0]", "PIXELFADE.BETA", "1"])
    assert cfg.ATTACK.VAL_FRACTION == 0.0 and type(cfg.ATTACK.VAL_FRACTION) is float
    assert cfg.PIXELFADE.BETA == 1.0 and type(cfg.PIXELFADE.BETA) is float
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.0, 1.0, 0.0] and all(type(v) is float for v in cfg.INPUT.PIXEL_MEAN)
    assert cfg.PIXELFADE.MAX_ITER == 100 and type(cfg.PIXELFADE.MAX_ITER) is int


@pytest.mark.parametrize("key, value, message", [
    ("PIXELFADE.MAX_ITER", "abc", "config override PIXELFADE.MAX_ITER: expected an integer, got 'abc'"),
    ("PIXELFADE.MAX_ITER", "2.5", "config override PIXELFADE.MAX_ITER: expected an integer, got 2.5"),
    ("PIXELFADE.BETA", "True", "config override PIXELFADE.BETA: expected a number, got True"),
    ("PIXELFADE.CHANNELS_LAST", "1", "config override PIXELFADE.CHANNELS_LAST: expected true or false, got 1"),
    ("MODEL.NAME", "[1]", "config override MODEL.NAME: expected a string, got [1]"),
    ("INPUT.IMG_SIZE", "64", "config override INPUT.IMG_SIZE: expected a list, got 64"),
    ("PIXELFADE", "1", "config override PIXELFADE: expected a mapping of its keys, got 1"),
])
def test_a_type_error_is_one_line_with_key_expected_type_and_value(key, value, message):
    with pytest.raises(ConfigError) as caught:
        load_config("", [key, value])
    assert str(caught.value) == message


def test_a_type_error_in_a_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "typed.yml"
    path.write_text("PIXELFADE:\n  MAX_ITER: many\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"config file {path} PIXELFADE.MAX_ITER: expected an integer, got 'many'"


@pytest.mark.parametrize("text, line, column", [
    ("PIXELFADE:\n  BETA: 0.1\n   MAX_ITER: 3\n", 3, 12),
    ("MODEL:\n  NAME: 'resnet50\n", 3, 1),
])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, text, line, column):
    path = tmp_path / "broken.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    message = str(caught.value)
    assert message.startswith(f"config file {path}: YAML syntax error at line {line}, column {column}: ")
    assert "\n" not in message and "<unicode string>" not in message


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yml"
    path.write_text("- PIXELFADE.BETA\n- 0.1\n")
    with pytest.raises(ConfigError, match=r"list.yml: expected a mapping of config keys, got list"):
        load_config(str(path))
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert load_config(str(empty)) == load_config("")


def test_keys_set_by_user_come_from_the_file_the_overrides_and_the_flags(tmp_path):
    from configs import keys_set_by_user

    config_file = tmp_path / "run.yml"
    config_file.write_text("INPUT:\n  IMG_SIZE: [64, 32]\nPIXELFADE:\n  EPSILON: 0.05\n")
    keys = keys_set_by_user(str(config_file), ["MODEL.NAME", "resnet50"], {"OUTPUT_DIR": "out"})
    assert keys == {"INPUT.IMG_SIZE", "PIXELFADE.EPSILON", "MODEL.NAME", "OUTPUT_DIR"}
    assert keys_set_by_user("", [], {}) == set()
