"""Dotted config keys (``"PIXELFADE.EPSILON"``): the one way every command reads, writes and lists them."""
import os

import yaml


def get_key(cfg, key):
    """The value at a dotted key of a config node (KeyError naming the missing part)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def set_key(cfg, key, value):
    """Set the value at a dotted key; the node must be mutable (not frozen)."""
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def flat_items(cfg, prefix=""):
    """(dotted key, value) of every leaf, depth first in the node's order; lists and tuples become lists."""
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from flat_items(value, name + ".")
        else:
            yield name, list(value) if isinstance(value, (list, tuple)) else value


def keys_set_by_user(config_file, opts, flag_values):
    """The dotted keys a user set: in ``config_file`` (YAML), in trailing ``KEY VALUE`` pairs, or by a flag.

    A data set's or format's defaults (the input contract of agw_vi, irra, clip) fill only the others.
    """
    keys = set(flag_values) | {str(key) for key in list(opts)[0::2]}
    if config_file and os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            keys.update(name for name, _ in flat_items(yaml.safe_load(handle) or {}))
    return keys
