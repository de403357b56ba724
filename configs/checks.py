"""Type checks and the one-line error style shared by every settings validator.

A run that starts writing and then trips over a bad value leaves a folder that refuses the
corrected rerun, so each command checks all of its settings first. Every failure reads
``KEY (--flag) must be EXPECTED, got VALUE``: the config key, the flag that sets it where one
exists, what is expected and what was given.
"""
import math

from utils.errors import ConfigError

from .keys import get_key


def is_int(value):
    """An int that is not a bool (YAML's ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(condition, label, expected, got):
    """ConfigError ``LABEL must be EXPECTED, got GOT`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{label} must be {expected}, got {got!r}")


class ConfigChecker:
    """Checks the values of one config node by dotted key, naming the flag of each key that has one."""

    def __init__(self, cfg, flag_of_key=None):
        self.cfg = cfg
        self.flag_of_key = flag_of_key or {}

    def value(self, key):
        return get_key(self.cfg, key)

    def label(self, key):
        flag = self.flag_of_key.get(key)
        return f"{key} ({flag})" if flag else key

    def fail(self, key, expected):
        raise ConfigError(f"{self.label(key)} must be {expected}, got {self.value(key)!r}")

    def integer(self, key, minimum):
        value = self.value(key)
        if not is_int(value) or value < minimum:
            self.fail(key, f"an integer >= {minimum}")

    def positive(self, key):
        value = self.value(key)
        if not is_number(value) or value <= 0:
            self.fail(key, "a positive finite number")

    def non_negative(self, key):
        value = self.value(key)
        if not is_number(value) or value < 0:
            self.fail(key, "a finite number >= 0")

    def choice(self, key, choices):
        if self.value(key) not in choices:
            self.fail(key, f"one of {', '.join(map(str, choices))}")

    def boolean(self, key):
        if not isinstance(self.value(key), bool):
            self.fail(key, "True or False")
