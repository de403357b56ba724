"""One experiment point = one normal protection run folder, then its recovery attacks.

A point is a set of config overrides on a shared base (config file + KEY VALUE pairs). Its folder
is an ordinary ``protect_image.py --output`` folder: fingerprinted, locked and resumed by the
protection engine, attacked and resumed by the recovery attack, so an interrupted experiment
rerun with the same command finishes with the results of an uninterrupted one.
"""
import ast
import re
from dataclasses import dataclass, field

from configs import get_default_config
from configs.keys import get_key
from engine.attack.results import read_results
from engine.attack.run import run_recovery_attack
from engine.attack.settings import AttackSettings
from engine.protect.run import ProtectOptions, build_protect_config, run
from modeling import resolve_device
from utils.errors import ConfigError

# The key of attack_results.json that holds the privacy table (not an attacker).
PRIVACY_KEY = "privacy"


@dataclass(frozen=True)
class Base:
    """What every point of an experiment shares: the config and how the runs are made."""

    config_file: str = ""
    opts: tuple = ()
    random_init: bool = False
    attackers: tuple = ("reference",)
    show_progress: bool = False


@dataclass(frozen=True)
class Point:
    """One row of a table: a folder name, a label and the overrides ``((KEY, value), ...)``."""

    name: str
    label: str
    overrides: tuple = ()
    values: dict = field(default_factory=dict)


def parse_value(key, text):
    """A command-line value for config ``key``: a Python literal (else the string), int -> float for float keys.

    Raises ConfigError naming the key when it is unknown or the value has the wrong type.
    """
    default = key_default(key)
    if isinstance(text, str):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
    else:
        value = text
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(default)(value)
    if type(value) is not type(default):
        raise ConfigError(f"{key}: expected a {type(default).__name__} like {default!r}, got {text!r}")
    return value


def key_default(key):
    """The default of config ``key``; ConfigError naming it when there is no such key."""
    try:
        node = get_key(get_default_config(), key)
    except (KeyError, TypeError):
        raise ConfigError(f"unknown config key '{key}' (see configs/defaults.py for the valid keys)") from None
    if hasattr(node, "keys"):
        raise ConfigError(f"'{key}' is a config section, not a key; expected a key such as {key}.{next(iter(node))}")
    return node


def folder_name(values):
    """A readable, file-system-safe folder name for a point: ``epsilon-0.03_max_iter-20``."""
    parts = [f"{key.split('.')[-1].lower()}-{value}" for key, value in values.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)) or "default"


def point_config(base, point, folder):
    """The validated, frozen config of ``point`` writing into ``folder``."""
    opts = [*base.opts]
    for key, value in point.overrides:
        opts += [key, value]
    cfg = build_protect_config(base.config_file, [*opts, "OUTPUT_DIR", folder], {})
    if base.attackers:
        AttackSettings.from_config(cfg)
        if not cfg.PIXELFADE.SAVE_IMAGE_NPY:
            raise ConfigError("PIXELFADE.SAVE_IMAGE_NPY must be True when attackers are run (the attack's pairs)")
    return cfg


def attacks_done(run_dir, attackers):
    """Whether every attacker already has its results (and its privacy row, where the table exists)."""
    results = read_results(run_dir)
    if not all(attacker in results for attacker in attackers):
        return False
    privacy = results.get(PRIVACY_KEY)
    return privacy is None or all(attacker in privacy.get("rows", {}) for attacker in attackers)


def run_point(cfg, base):
    """Protect (or resume) the point's folder, then run (or resume) its attacks; returns the folder."""
    run(cfg, ProtectOptions(random_init=base.random_init, show_progress=base.show_progress))
    if base.attackers and not attacks_done(cfg.OUTPUT_DIR, base.attackers):
        run_recovery_attack(cfg, cfg.OUTPUT_DIR, list(base.attackers), resolve_device(cfg.MODEL.DEVICE),
                            show_progress=base.show_progress)
    return cfg.OUTPUT_DIR
