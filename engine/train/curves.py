"""The training-curves figure of a Re-ID training run (losses and test scores per epoch)."""
from matplotlib.ticker import MaxNLocator

from utils.figures import plt

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
