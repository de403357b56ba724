"""Progress output that suits where stderr goes: a live bar on a terminal, one line per epoch in a log."""
import sys
import time

from ignite.engine import Events
from ignite.handlers import ProgressBar


def attach_progress(engine, desc, metric_names=None, output_transform=None, persist=False, stream=None):
    """A ProgressBar on ``engine`` when ``stream`` (stderr) is a terminal, else one summary line per epoch.

    A bar redraws itself many times a second; written to a file it floods the log with partial lines.
    """
    stream = stream or sys.stderr
    if stream.isatty():
        ProgressBar(persist=persist, desc=desc).attach(
            engine, metric_names=metric_names, output_transform=output_transform)
        return
    started = {}

    @engine.on(Events.EPOCH_STARTED)
    def _start(_):
        started["time"] = time.perf_counter()

    @engine.on(Events.EPOCH_COMPLETED)
    def _line(_):
        print(epoch_line(engine, desc, metric_names, output_transform, time.perf_counter() - started["time"]),
              file=stream, flush=True)


def epoch_line(engine, desc, metric_names, output_transform, seconds):
    """``desc: epoch e/E, n iterations in s s, name=value, ...`` (the epoch only when there are several)."""
    state = engine.state
    epoch = f"epoch {state.epoch}/{state.max_epochs}, " if state.max_epochs and state.max_epochs > 1 else ""
    values = {name: state.metrics[name] for name in metric_names or () if name in state.metrics}
    if output_transform is not None and state.output is not None:
        values.update(output_transform(state.output))
    shown = "".join(f", {name}={_number(value)}" for name, value in values.items())
    return f"{desc}: {epoch}{state.epoch_length} iterations in {seconds:.1f} s{shown}"


def _number(value):
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)
