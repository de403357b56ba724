"""What the visible-infrared data sets (SYSU-MM01, RegDB) add to a ``ReIDDataset``: modalities and trials.

Their test split is not one query set and one gallery: it is a list of *trials* (SYSU-MM01: ten
random single-shot galleries; RegDB: ten train/test splits) for each *protocol* (SYSU-MM01:
all-search, indoor-search; RegDB: visible-to-thermal, thermal-to-visible), and each result is the
mean over the trials.

How the protection engine consumes it: protect every image of :meth:`VisibleInfraredDataset.test_images`
once (each query and each gallery image drawn in any trial of any protocol), with the authorization
model's stem of the image's own ``modality``; then, for each protocol and trial, score
``trial.query`` against ``trial.gallery`` with the features of the original and the protected
images looked up by path (``evaluation.cross_modality.score_protocols``). ``query`` and ``gallery``
are the unions of the trials' query and gallery images, in first-drawn order, for code that only
knows single-gallery data sets; ``train`` is the training split (RegDB: that of the first selected
trial; each trial's own split is ``trial.train``).
"""
from dataclasses import dataclass

from utils.errors import ConfigError

from .bases import ImageRecord, ReIDDataset

VISIBLE = "visible"
INFRARED = "infrared"
MODALITIES = (VISIBLE, INFRARED)


@dataclass(frozen=True)
class VIImageRecord(ImageRecord):
    """An ``ImageRecord`` that knows which sensor took it: ``"visible"`` (RGB) or ``"infrared"``."""

    modality: str = VISIBLE


@dataclass(frozen=True)
class Trial:
    """One scored draw of a protocol: its number, queries and gallery (and, for RegDB, its own train split)."""

    trial: int
    query: tuple
    gallery: tuple
    train: tuple = ()


def unique_records(groups):
    """The records of ``groups`` (iterables of records), each path once, in first-seen order."""
    seen, records = set(), []
    for group in groups:
        for record in group:
            if record.path not in seen:
                seen.add(record.path)
                records.append(record)
    return records


def select_trials(dataset_name, trials, available):
    """The trial numbers to use: ``trials`` (DATASETS.TRIALS; empty or None = all ``available``), checked."""
    if trials is None or len(trials) == 0:
        return tuple(available)
    chosen = []
    for trial in trials:
        if isinstance(trial, bool) or not isinstance(trial, int) or trial not in available:
            raise ConfigError(
                f"DATASETS.TRIALS: {dataset_name} has trials {available[0]}..{available[-1]}, got {trial!r}"
            )
        if trial not in chosen:
            chosen.append(trial)
    return tuple(chosen)


class VisibleInfraredDataset(ReIDDataset):
    """A ``ReIDDataset`` whose test split is ``protocols = {name: (Trial, ...)}``; see the module docstring.

    ``metric`` names the scoring rule of ``evaluation.cross_modality`` (``"sysu"`` or ``"regdb"``).
    """

    def __init__(self, name, root, layout, train, protocols, metric, train_original_pids=()):
        self.protocols = {protocol: tuple(trials) for protocol, trials in protocols.items()}
        self.metric = metric
        all_trials = [trial for trials in self.protocols.values() for trial in trials]
        query = unique_records(trial.query for trial in all_trials)
        gallery = unique_records(trial.gallery for trial in all_trials)
        super().__init__(name, root, layout, train, query, gallery, train_original_pids)

    @property
    def trials(self):
        """The selected trial numbers (the same for every protocol)."""
        first = next(iter(self.protocols.values()))
        return tuple(trial.trial for trial in first)

    def test_images(self):
        """Every query and gallery image of any trial and protocol, each once: what to protect."""
        return unique_records([self.query, self.gallery])

    def summary(self):
        lines = [super().summary()]
        for protocol, trials in self.protocols.items():
            sizes = sorted({len(trial.gallery) for trial in trials})
            gallery = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            lines.append(
                f"  {protocol}: trials {', '.join(str(t.trial) for t in trials)}; "
                f"{len(trials[0].query)} queries, {gallery} gallery images per trial"
            )
        return "\n".join(lines)
