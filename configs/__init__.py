"""Configuration: yacs defaults, YAML files and ``KEY VALUE`` command-line overrides."""
import os

from yacs.config import CfgNode

from utils.errors import ConfigError
from utils.file_io import atomic_write_text

from .defaults import get_default_config

__all__ = ["ConfigError", "get_default_config", "load_config", "save_config", "CfgNode"]

CONFIG_FILENAME = "config.yaml"


def load_config(config_file="", opts=()):
    """Defaults, then ``config_file``, then trailing ``KEY VALUE`` overrides; returns it frozen."""
    cfg = get_default_config()
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, ValueError, AssertionError) as err:
            raise ConfigError(f"config file {config_file}: {_explain(err)}") from None
    opts = list(opts or ())
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(f"command-line override: {_explain(err)}") from None
    cfg.freeze()
    return cfg


def set_values(cfg, values):
    """Set ``{"SECTION.KEY": value}`` on a defrosted ``cfg``; an int given for a float key becomes a float."""
    for key, value in values.items():
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        if isinstance(node[name], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[name] = value
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


def _explain(err):
    message = err.args[0] if err.args else str(err)
    if "Non-existent" in str(message):
        key = str(message).split(":", 1)[-1].strip()
        return f"unknown config key '{key}' (see configs/defaults.py for the valid keys)"
    return str(message)
