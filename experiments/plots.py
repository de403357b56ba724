"""Figures (matplotlib, Agg): metrics against a swept value, the utility-privacy trade-off, training curves."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from utils.file_io import atomic_write

from .tables import AUTHORISED_MODE, attackers_of, worst_leakage


def _save(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return path


def _percent(value):
    return None if value is None else 100 * value


def _series(rows, key):
    """Rows grouped by the values of every other swept key, each group sorted by ``key``'s value."""
    groups = {}
    for row in rows:
        if key not in row["values"]:
            continue
        rest = tuple((k, v) for k, v in row["values"].items() if k != key)
        groups.setdefault(rest, []).append(row)
    return {rest: sorted(group, key=lambda r: r["values"][key]) for rest, group in groups.items()}


def sweep_figure(rows, key, path):
    """Authorised mAP, recovered PSNR (each attacker) and leakage Rank-1 against the value of ``key``."""
    attackers = attackers_of(rows)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for rest, group in _series(rows, key).items():
        suffix = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in rest)
        xs = [row["values"][key] for row in group]
        positions = xs if all(isinstance(x, (int, float)) for x in xs) else list(range(len(xs)))
        axes[0].plot(positions, [_percent(r["reid"][AUTHORISED_MODE]["mAP"]) for r in group], "o-", label=suffix or None)
        for name in attackers:
            axes[1].plot(positions, [r["images"].get(name, {}).get("psnr") for r in group], "o-",
                         label=f"{name} {suffix}".strip())
            axes[2].plot(positions, [_percent(r["images"].get(name, {}).get("leakage_rank1")) for r in group], "o-",
                         label=f"{name} {suffix}".strip())
        if positions is not xs:
            for axis in axes:
                axis.set_xticks(positions, [str(x) for x in xs])
        elif min(xs) > 0 and max(xs) / min(xs) >= 20:
            for axis in axes:
                axis.set_xscale("log")
    chance = next((row["chance"]["rank1"] for row in rows if row.get("chance")), None)
    if chance is not None:
        axes[2].axhline(100 * chance, color="grey", linestyle="--", label="chance")
    titles = ("authorised mAP (%)", "recovered PSNR (dB)", "leakage Rank-1 (%)")
    for axis, title in zip(axes, titles):
        axis.set_title(title)
        axis.set_xlabel(key)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return _save(figure, path)


def tradeoff_figure(rows, path, title="utility vs privacy"):
    """Authorised mAP against the worst leakage Rank-1 over the attackers (recovered PSNR when no leakage)."""
    leakage = [worst_leakage(row) for row in rows]
    use_leakage = any(value is not None for value in leakage)
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for row, leak in zip(rows, leakage):
        if use_leakage:
            x = _percent(leak)
        else:
            psnrs = [image["psnr"] for name, image in row["images"].items() if name != "protected"]
            x = max(psnrs) if psnrs else None
        if x is None:
            continue
        y = 100 * row["reid"][AUTHORISED_MODE]["mAP"]
        axis.scatter([x], [y])
        axis.annotate(row["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    chance = next((row["chance"]["rank1"] for row in rows if row.get("chance")), None)
    if use_leakage and chance is not None:
        axis.axvline(100 * chance, color="grey", linestyle="--", label="chance Rank-1")
        axis.legend(fontsize=7)
    axis.set_xlabel("identity leakage Rank-1 (%), strongest attacker" if use_leakage
                    else "recovered PSNR (dB), strongest attacker (no leakage computed)")
    axis.set_ylabel("authorised mAP, encry2clean (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return _save(figure, path)


TRAINING_LOSSES = ("loss", "id", "triplet")
EVALUATION_SCORES = (("mAP", "mAP"), ("rank1", "Rank-1"))


def _epoch_axis(axis, first, last):
    """x from the first to the last trained epoch, whole-epoch ticks; one epoch gets a unit-wide window."""
    if first == last:
        axis.set_xlim(first - 0.5, last + 0.5)
    else:
        axis.set_xlim(first, last)
    axis.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, min_n_ticks=1))
    axis.yaxis.set_major_locator(MaxNLocator(nbins=6, min_n_ticks=4))
    axis.set_xlabel("epoch")
    axis.grid(alpha=0.3)


def training_curves_figure(results):
    """train_reid's results (``epochs``, ``evaluations`` rows): losses per epoch (left), mAP / Rank-1 (%) (right).

    Both panels span the epochs that were trained, so an evaluation at the last epoch sits on the
    right edge; ticks come from matplotlib's locators and the constrained layout keeps labels apart.
    """
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    epochs = [row["epoch"] for row in results["epochs"]] or [row["epoch"] for row in results["evaluations"]] or [0]
    for key in TRAINING_LOSSES:
        rows = [row for row in results["epochs"] if key in row]
        if rows:
            losses.plot([row["epoch"] for row in rows], [row[key] for row in rows], "o-", markersize=3, label=key)
    for key, label in EVALUATION_SCORES:
        rows = [row for row in results["evaluations"] if key in row]
        if rows:
            scores.plot([row["epoch"] for row in rows], [100 * row[key] for row in rows], "o-", label=label)
    for axis, title in ((losses, "training loss (epoch mean)"), (scores, "test split, mAP / Rank-1 (%)")):
        _epoch_axis(axis, min(epochs), max(epochs))
        axis.set_title(title)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    scores.set_ylim(bottom=0)
    return figure


def save_figure(figure, path):
    """Write ``figure`` as a PNG atomically and close it."""
    return _save(figure, path)
