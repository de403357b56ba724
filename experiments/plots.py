"""Figures (matplotlib, Agg): metrics against a swept value and the utility-privacy trade-off."""
import matplotlib.pyplot as plt

from utils.figures import save_figure

from .tables import AUTHORISED_MODE, attackers_of, worst_leakage


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
    return save_figure(figure, path)


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
    return save_figure(figure, path)
