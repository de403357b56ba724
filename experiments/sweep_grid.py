"""A grid over any config keys: each point a normal protection run folder under the sweep folder.

``run_sweep`` validates every point's config (keys, values, attack settings) before anything is
written, then protects and attacks each point in turn (each resumes on its own), and collects the
points into ``sweep.md`` / ``sweep.json`` with one figure per swept key (``sweep_<key>.png``) and
the utility-privacy trade-off (``sweep_tradeoff.png``).
"""
import ast
import itertools
import os

from engine.attack.settings import ATTACKERS
from utils.errors import ConfigError
from utils.file_io import atomic_write_json

from . import plots, tables
from .points import Point, folder_name, parse_value, point_config, run_point

FORBIDDEN_KEYS = ("OUTPUT_DIR",)


def parse_axis(item):
    """``"PIXELFADE.EPSILON=0.01,0.03"`` -> ("PIXELFADE.EPSILON", [0.01, 0.03]), values checked against the key."""
    key, sep, text = str(item).partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. PIXELFADE.EPSILON=0.01,0.03)")
    if key in FORBIDDEN_KEYS:
        raise ConfigError(f"--grid {item!r}: {key} is set per point by the sweep; expected another key")
    try:
        raw = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        raw = [part.strip() for part in text.split(",")]
    if not raw:
        raise ConfigError(f"--grid {item!r}: no values")
    try:
        values = [parse_value(key, value) for value in raw]
    except ConfigError as err:
        raise ConfigError(f"--grid {item!r}: {err}") from None
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"--grid {item!r}: a value is repeated")
    return key, values


def parse_grid(items):
    """{key: [values]} in the order given; a key may appear once."""
    grid = {}
    for item in items:
        key, values = parse_axis(item)
        if key in grid:
            raise ConfigError(f"--grid: {key} is given twice; expected each key once")
        grid[key] = values
    if not grid:
        raise ConfigError("--grid: expected at least one KEY=V1,V2,...")
    return grid


def grid_points(grid):
    """Every combination of the grid's values, as Points named after their values."""
    keys = list(grid)
    points = []
    for combination in itertools.product(*(grid[key] for key in keys)):
        values = dict(zip(keys, combination))
        label = ", ".join(f"{key.split('.')[-1]} {value}" for key, value in values.items())
        points.append(Point(folder_name(values), label, tuple(values.items()), values))
    return points


def check_attackers(attackers):
    unknown = [name for name in attackers if name not in ATTACKERS]
    if unknown:
        raise ConfigError(f"--attackers: unknown {unknown}; expected names among {ATTACKERS}")


def plan_points(base, points, output):
    """{point: cfg}, every config validated; raises before anything is written."""
    check_attackers(base.attackers)
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output}: exists and is not a folder")
    return [(point, point_config(base, point, os.path.join(output, point.name))) for point in points]


def collect(planned):
    return [tables.run_row(cfg.OUTPUT_DIR, point.label, point.values) for point, cfg in planned]


def write_outputs(rows, output, name, title, keys, meta):
    """The table (Markdown + JSON), one figure per key and the trade-off figure; returns the paths."""
    paths = list(tables.write_table(rows, output, name, title, keys=keys, meta=meta))
    for key in keys:
        paths.append(plots.sweep_figure(rows, key, os.path.join(output, f"{name}_{key.split('.')[-1].lower()}.png")))
    paths.append(plots.tradeoff_figure(rows, os.path.join(output, f"{name}_tradeoff.png"), title))
    return paths


def run_sweep(base, grid, output, name="sweep", title=None):
    """Validate every point, run each (resuming finished work), write the table and figures; returns rows."""
    planned = plan_points(base, grid_points(grid), output)
    meta = {"grid": {key: list(values) for key, values in grid.items()}, "config_file": base.config_file,
            "opts": list(map(str, base.opts)), "attackers": list(base.attackers)}
    atomic_write_json(meta, os.path.join(output, f"{name}_plan.json"))
    for _, cfg in planned:
        run_point(cfg, base)
    rows = collect(planned)
    title = title or "Sweep over " + ", ".join(grid)
    write_outputs(rows, output, name, title, list(grid), meta)
    return rows
