"""Dotted config keys (``"PIXELFADE.EPSILON"``): the one way every command reads, writes and lists them."""


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

