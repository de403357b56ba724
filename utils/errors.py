"""The toolkit's one error family: bad input that a user can fix, as opposed to a bug.

The command-line scripts catch ``PixelFadeError`` only, print its message on one line and exit
with status 2; anything else is a bug and keeps its traceback. Every message names the file,
flag or config key at fault and what is expected.
"""
import sys


class PixelFadeError(Exception):
    """Base of every bad-input error of this toolkit."""


class ConfigError(PixelFadeError, ValueError):
    """A config file, flag or ``KEY VALUE`` override that does not fit the defaults tree."""


class DatasetError(PixelFadeError):
    """A data set folder, file or image that is missing or does not have the expected form."""


class CheckpointError(PixelFadeError):
    """A checkpoint file that cannot be read safely, or whose weights do not fit the model."""


class RunConflictError(PixelFadeError):
    """An output folder that holds another run's files, or that another process is writing."""


class NonFiniteError(PixelFadeError):
    """NaN or infinity in a loss or in saved images; what was finished before it is kept."""


class OutputError(PixelFadeError):
    """An output file or folder that cannot be written (permissions, full disk, ...)."""


def report_error(prog, err):
    """Print ``err`` as the one ``<prog>: error: ...`` line on stderr that every command uses; returns exit status 2."""
    message = " ".join(str(err).splitlines())
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
