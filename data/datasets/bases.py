"""The in-memory form every data set is turned into: three lists of labelled image paths."""
from collections import Counter
from dataclasses import dataclass

from utils.errors import DatasetError


@dataclass(frozen=True)
class ImageRecord:
    """One image: its absolute path, person id and 0-based camera id (-1 when unknown)."""

    path: str
    pid: int
    camid: int


def relabel_train(records):
    """Map train pids onto 0..P-1 in sorted order; classifiers need dense labels.

    Returns the relabelled records and the tuple of original pids indexed by the new label.
    """
    original_pids = tuple(sorted({record.pid for record in records}))
    label_of = {pid: label for label, pid in enumerate(original_pids)}
    relabelled = [ImageRecord(r.path, label_of[r.pid], r.camid) for r in records]
    return relabelled, original_pids


class ReIDDataset:
    """Train, query and gallery records of one data set, plus where and how it was found.

    ``layout`` names the folder layout that matched (e.g. ``"market1501/"``) so a log tells
    which copy of the data was used; ``train_original_pids[label]`` is the pid in the file
    names of the train identity relabelled to ``label``.
    """

    def __init__(self, name, root, layout, train, query, gallery, train_original_pids=()):
        self.name = name
        self.root = root
        self.layout = layout
        self.train = list(train)
        self.query = list(query)
        self.gallery = list(gallery)
        self.train_original_pids = tuple(train_original_pids)

    @property
    def num_train_pids(self):
        return len({record.pid for record in self.train})

    def require_eval_splits(self, query_source, gallery_source):
        """Raise when query or gallery is empty: Re-ID scores would be meaningless."""
        for split, source in (("query", query_source), ("gallery", gallery_source)):
            if not getattr(self, split):
                raise DatasetError(
                    f"{self.name}: the {split} split is empty (read from {source}); "
                    f"expected at least one image"
                )

    def summary(self):
        """A small table of identities, images and cameras per split."""
        rows = [("subset", "# ids", "# images", "# cameras")]
        for split in ("train", "query", "gallery"):
            records = getattr(self, split)
            pids = Counter(record.pid for record in records)
            cams = {record.camid for record in records}
            rows.append((split, str(len(pids)), str(len(records)), str(len(cams))))
        widths = [max(len(row[col]) for row in rows) for col in range(4)]
        lines = [f"{self.name} ({self.layout} in {self.root})"]
        for index, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [
                cell.rjust(width) for cell, width in zip(row[1:], widths[1:])
            ]
            lines.append("  " + " | ".join(cells))
            if index == 0:
                lines.append("  " + "-+-".join("-" * width for width in widths))
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"ReIDDataset(name={self.name!r}, layout={self.layout!r}, train={len(self.train)}, "
            f"query={len(self.query)}, gallery={len(self.gallery)})"
        )
