"""Checks and endings shared by the command-line scripts (protect_image.py, recovery_attack.py, train_reid.py, tools/)."""
import argparse
import os
import sys
from types import SimpleNamespace

from .errors import ConfigError, PixelFadeError, report_error

INTERRUPTED_STATUS = 130


def check_flags_before_overrides(parser, opts):
    """A flag after the first ``KEY VALUE`` override would be read as a config key: refuse it by name."""
    flags = {option for action in parser._actions for option in action.option_strings}
    for item in opts:
        if str(item).split("=", 1)[0] in flags:
            raise ConfigError(f"{item} comes after the KEY VALUE overrides, where it would be read "
                              "as a config key; expected every flag before them")


def attacker_list(text):
    """``--attackers reference,strong`` as a tuple of names; ``none``: no attack."""
    return () if text == "none" else tuple(name.strip() for name in text.split(",") if name.strip())


def parse_with_trailing_pairs(parser, argv=None):
    """(args, [KEY, VALUE, ...]) for a parser with positional arguments of its own, where a REMAINDER
    would swallow the flags: the pairs are what is left over, and a leftover flag is refused by argparse."""
    args, opts = parser.parse_known_args(argv)
    flags = [item for item in opts if item.startswith("--") or (item[:1] == "-" and item[1:2].isalpha())]
    if flags:
        parser.error(f"unrecognised arguments: {' '.join(flags)}")
    return args, opts


def demo_argument_parser(description, output, output_help="output directory", prog=None,
                         threads_help="torch CPU threads; 0: OMP_NUM_THREADS when set, else the usable CPUs",
                         threads=0):
    """The demos' options (demo.py, experiments/demo_vi.py): where, on what device, at which scale, threads."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--output", default=output, help=output_help)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--small", action="store_true", help="the test suite's smaller, faster scale")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)
    return parser


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


def run_command(prog, work):
    """Run ``work(state)`` and return the command's exit status (``work``'s return value, else 0).

    Bad input (``PixelFadeError``) ends as one ``<prog>: error:`` line and status 2, Ctrl-C as one
    line and status 130 naming ``state.output``, the folder the work sets once it knows it, when
    that folder exists. Anything else is a bug and keeps its traceback.
    """
    state = SimpleNamespace(output=None)
    try:
        status = work(state)
    except PixelFadeError as err:
        return report_error(prog, err)
    except KeyboardInterrupt:
        output = state.output
        return report_interrupt(prog, output if output and os.path.isdir(output) else None)
    return 0 if status is None else status
