"""Command-line flags that set config keys: one flag table, one parser builder, one flags -> config path.

The shape of fast-reid's ``default_argument_parser`` + ``default_setup``: every command takes
``--config_file``, its table's flags and trailing ``KEY VALUE`` overrides, and merges them as
defaults < config file < overrides < flags. The table also names the flag of each key, so that a
settings validator can say ``PIXELFADE.EPSILON (--epsilon) must be ...``.

Nothing here imports torch: a command builds its parser and parses before its heavy imports, so
``--help`` and argument errors are instant.
"""
import argparse
from dataclasses import dataclass

from utils.cli import check_flags_before_overrides
from utils.errors import ConfigError

from . import config_with_flags
from .defaults import get_default_config
from .keys import get_key

SETTINGS_TITLE = "settings (each sets a config key; default shown is configs/defaults.py's)"
CONFIG_FILE_HELP = "yacs YAML file (configs/*.yml) merged over the defaults"
OPTS_HELP = "trailing config overrides: KEY VALUE ..."


def parse_bool(text):
    """A flag's true/false word (true/false, 1/0, on/off, yes/no, any case)."""
    lowered = str(text).lower()
    if lowered in ("true", "1", "on", "yes"):
        return True
    if lowered in ("false", "0", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Flag:
    """``--name`` sets the config ``key``.

    ``kind`` is str, int, float or bool (a bool flag takes a true/false word). A ``switch`` takes no
    value and sets the key to True when given. ``help`` gets `` [KEY, default: VALUE]`` appended
    (the configs/defaults.py value), unless it places ``{key}`` / ``{default}`` itself.
    """

    name: str
    key: str
    kind: type = str
    help: str = ""
    choices: tuple = None
    switch: bool = False

    @property
    def option(self):
        return f"--{self.name}"

    def help_text(self, defaults):
        default = get_key(defaults, self.key)
        shown = default if default != "" else "empty"
        if "{key}" in self.help or "{default}" in self.help:
            return self.help.replace("{key}", self.key).replace("{default}", str(shown))
        if self.switch:
            return self.help
        return f"{self.help} [{self.key}, default: {shown}]"


class FlagTable:
    """The flags of one command, in help order; flags left unset keep the config's value."""

    def __init__(self, flags):
        self.flags = tuple(flags)
        self.by_name = {flag.name: flag for flag in self.flags}
        if len(self.by_name) != len(self.flags):
            raise ValueError(f"flag table names a flag twice: {[flag.name for flag in self.flags]}")

    @property
    def flag_of_key(self):
        """{config key: "--flag"}, for validators' error messages."""
        return {flag.key: flag.option for flag in self.flags}

    def add_flag(self, container, name, defaults=None):
        """Add one flag to a parser or argument group (for commands that interleave their own options)."""
        flag = self.by_name[name]
        text = flag.help_text(defaults or get_default_config())
        if flag.switch:
            container.add_argument(flag.option, action="store_true", help=text)
            return
        container.add_argument(flag.option, type=parse_bool if flag.kind is bool else flag.kind,
                               choices=flag.choices, metavar=None if flag.choices else flag.key.split(".")[-1],
                               help=text)

    def add_to(self, parser, title=SETTINGS_TITLE):
        """Switches straight on ``parser``, the valued flags in a group titled ``title`` (None: no group).

        Flags the command already placed itself (with ``add_flag``) are left where they are.
        """
        defaults = get_default_config()
        group = parser.add_argument_group(title) if title else parser
        for flag in self.flags:
            if flag.option not in parser._option_string_actions:
                self.add_flag(parser if flag.switch else group, flag.name, defaults)

    def values(self, args):
        """{config key: value} of every flag given (a switch only when set)."""
        values = {}
        for flag in self.flags:
            value = getattr(args, flag.name)
            if (value is True) if flag.switch else (value is not None):
                values[flag.key] = value
        return values


def add_launch_options(parser):
    """The options of a command that may run several processes (protect_image.py, train_reid.py)."""
    parser.add_argument("--nproc_per_node", type=int, help="spawn this many processes (ignite.distributed)")
    parser.add_argument("--backend", choices=["gloo", "nccl"],
                        help="distributed backend (default: nccl on CUDA, else gloo)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are ``ConfigError`` (one line, exit status 2 in the command), not usage dumps."""

    def error(self, message):
        raise ConfigError(message)


def default_argument_parser(description, table=None, add_options=None, prog=None, parser_class=None,
                            config_help=CONFIG_FILE_HELP, opts_help=OPTS_HELP, settings_title=SETTINGS_TITLE,
                            **parser_args):
    """``--config_file``, the command's own options (``add_options(parser)``), the table's flags, ``KEY VALUE ...``."""
    parser = (parser_class or argparse.ArgumentParser)(prog=prog, description=description, **parser_args)
    parser.add_argument("--config_file", default="", help=config_help)
    if add_options is not None:
        add_options(parser)
    if table is not None:
        table.add_to(parser, settings_title)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help=opts_help)
    return parser


def default_setup(parser, args, table, run_kind, extra_values=None, build=None):
    """The frozen config of parsed ``args`` and the table's ``flag_of_key``.

    Defaults < ``--config_file`` < trailing overrides < flags (``extra_values`` last, for options
    that set several keys). ``build(config_file, opts, values, flag_of_key)`` replaces the plain merge
    for a pipeline that adds its own steps (protect: input defaults, then its validator); without it
    an empty OUTPUT_DIR becomes ``log/<dataset>_<run_kind>``.
    """
    check_flags_before_overrides(parser, args.opts)
    values = {**table.values(args), **(extra_values or {})}
    flag_of_key = table.flag_of_key
    if build is not None:
        return build(args.config_file, list(args.opts), values, flag_of_key), flag_of_key
    return config_with_flags(args.config_file, list(args.opts), values, run_kind), flag_of_key
