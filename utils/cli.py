"""Checks and endings shared by the command-line scripts (protect_image.py, recovery_attack.py, train_reid.py)."""
import sys

from .errors import ConfigError

INTERRUPTED_STATUS = 130


def check_flags_before_overrides(parser, opts):
    """A flag after the first ``KEY VALUE`` override would be read as a config key: refuse it by name."""
    flags = {option for action in parser._actions for option in action.option_strings}
    for item in opts:
        if str(item).split("=", 1)[0] in flags:
            raise ConfigError(f"{item} comes after the KEY VALUE overrides, where it would be read "
                              "as a config key; expected every flag before them")


def check_nproc(nproc_per_node):
    """--nproc_per_node, when given, must be at least 1 (0 would silently mean one process)."""
    if nproc_per_node is not None and nproc_per_node < 1:
        raise ConfigError(f"--nproc_per_node must be >= 1, got {nproc_per_node}")


def report_interrupt(prog, output):
    """One line for Ctrl-C instead of a traceback: what is kept and how to go on; returns exit status 130."""
    if output:
        kept = f"finished work is kept in {output}; rerun the same command to resume"
    else:
        kept = "nothing was written"
    print(f"{prog}: interrupted: {kept}", file=sys.stderr)
    return INTERRUPTED_STATUS
