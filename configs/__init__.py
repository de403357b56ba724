"""Configuration: yacs defaults, YAML files and ``KEY VALUE`` command-line overrides."""
import os
from ast import literal_eval

import yaml
from yacs.config import CfgNode

from utils.errors import ConfigError
from utils.file_io import atomic_write_text

from .defaults import get_default_config
from .keys import flat_items, get_key, set_key

__all__ = ["CfgNode", "ConfigError", "get_default_config", "keys_set_by_user", "load_config", "save_config"]

CONFIG_FILENAME = "config.yaml"
# What a value of each default's type must look like, for one-line type errors.
EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list"}


def load_config(config_file="", opts=()):
    """Defaults, then ``config_file``, then trailing ``KEY VALUE`` overrides; returns it frozen.

    Unlike plain yacs, an integer is accepted for a float key (``ATTACK.VAL_FRACTION 0``), and every
    refusal is one ``ConfigError`` line naming the file or override, the key and what is expected.
    """
    cfg = get_default_config()
    if config_file:
        source = f"config file {config_file}"
        for key, value in flat_items(_read_yaml(config_file)):
            _merge(cfg, key, _decode(value), source)
    opts = list(opts or ())
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
        )
    for key, text in zip(opts[0::2], opts[1::2]):
        _merge(cfg, str(key), _decode(text), "config override")
    cfg.freeze()
    return cfg


def _read_yaml(path):
    """The mapping in a YAML file; a syntax error is one line with the file, line and column."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file {path}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: cannot read it ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _decode(value):
    """A string as the Python literal it spells (numbers, lists, booleans, None), else the string; as yacs does."""
    if not isinstance(value, str):
        return value
    try:
        return literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _merge(cfg, key, value, source):
    """Set ``key`` to ``value`` after checking the key exists and the value fits the default's type."""
    parent, _, name = key.rpartition(".")
    try:
        node = get_key(cfg, parent) if parent else cfg
    except (KeyError, TypeError):
        node = None
    if not isinstance(node, CfgNode) or name not in node:
        raise ConfigError(f"{source}: unknown config key '{key}' (see configs/defaults.py for the valid keys)")
    if isinstance(node[name], CfgNode):
        raise ConfigError(f"{source} {key}: expected a mapping of its keys, got {value!r}")
    node[name] = _coerce(node[name], value, f"{source} {key}")


def _coerce(default, value, where):
    """``value`` as the default's type: yacs' rules (same type, list <-> tuple, None) plus int -> float."""
    kind = type(default)
    if value is None or default is None or type(value) is kind:
        return _floats_like(default, value)
    if kind is float and type(value) is int:
        return float(value)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        return _floats_like(default, kind(value))
    raise ConfigError(f"{where}: expected {EXPECTED.get(kind, kind.__name__)}, got {value!r}")


def _floats_like(default, value):
    """Integers in a list given for a list of floats (``INPUT.PIXEL_MEAN [0, 0, 0]``) become floats."""
    if isinstance(default, (list, tuple)) and default and all(type(item) is float for item in default):
        return type(value)(float(item) if type(item) is int else item for item in value)
    return value


def set_values(cfg, values):
    """Set ``{"SECTION.KEY": value}`` on a defrosted ``cfg``; an int given for a float key becomes a float."""
    for key, value in values.items():
        if isinstance(get_key(cfg, key), float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        set_key(cfg, key, value)
    return cfg


def config_with_flags(config_file, opts, flag_values, run_kind):
    """Defaults < ``config_file`` < trailing ``KEY VALUE`` overrides < flag values, frozen.

    An empty OUTPUT_DIR becomes ``log/<dataset>_<run_kind>`` (e.g. ``log/market1501_protect``).
    """
    cfg = load_config(config_file, opts)
    cfg.defrost()
    set_values(cfg, flag_values)
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = os.path.join("log", f"{cfg.DATASETS.NAMES}_{run_kind}")
    cfg.freeze()
    return cfg


def save_config(cfg, output_dir, filename=CONFIG_FILENAME):
    """Write the merged config into ``output_dir`` so the run can be described and repeated."""
    return atomic_write_text(cfg.dump(), os.path.join(output_dir, filename))


def keys_set_by_user(config_file, opts, flag_values):
    """The dotted keys a user set: in ``config_file`` (YAML), in trailing ``KEY VALUE`` pairs, or by a flag.

    A data set's or format's defaults (the input contract of agw_vi, irra, clip) fill only the others.
    """
    keys = set(flag_values) | {str(key) for key in list(opts)[0::2]}
    if config_file:
        keys.update(name for name, _ in flat_items(_read_yaml(config_file)))
    return keys
