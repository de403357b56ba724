"""Text-to-image person Re-ID data sets: CUHK-PEDES, ICFG-PEDES and RSTPReid, as IRRA reads them.

Each is an ``imgs/`` folder and one JSON list of records ``{split, captions, file_path, id,
processed_tokens}`` (RSTPReid: ``img_path`` instead of ``file_path``); an image's path is
``<dataset>/imgs/<file_path>``. ``split`` is train, val or test (ICFG-PEDES has no val).

- train: one :class:`ImageRecord` per image, labelled CUHK-PEDES ``id - 1``, the others ``id``;
  the labels must be contiguous from 0. ``train_captions`` hold each image's captions.
- test: the gallery is every test image (raw ``id``); the queries are every caption of every test
  image with that image's id, in ``query_captions``. There are no query images: ``query`` is empty.
- val: images and captions kept apart (raw ids), for model selection; protection never reads them.

Captions are a new kind of query. The protection engine protects every gallery image (and, with
``--save_image_npy``, the train images, for the recovery attack's pairs) and never changes a
caption: text-to-image retrieval is scored for captions against original images (clean2clean)
and against protected images (clean2encry).

Everything (JSON, record fields, splits, every image file, the train labels) is checked when the
data set is built, before anything is written; a fault is one line naming the file and the record.
"""
import json
import os
from collections import Counter
from dataclasses import dataclass

from .bases import DatasetError, ImageRecord, ReIDDataset
from .layouts import find_layout
from .registry import register_dataset

SPLITS = ("train", "val", "test")
IMAGE_FOLDER = "imgs"
NO_CAMERA = -1


@dataclass(frozen=True)
class TextLayout:
    """Where a data set's files are and how its records name images and train identities."""

    name: str
    folder: str
    annotations: tuple  # accepted JSON names, preferred first
    path_key: str
    train_id_offset: int  # train label = id - offset


LAYOUTS = {
    "cuhk_pedes": TextLayout("cuhk_pedes", "CUHK-PEDES", ("reid_raw.json",), "file_path", 1),
    # IRRA opens ICFG-PEDES.json; its README and SSAN's say ICFG_PEDES.json.
    "icfg_pedes": TextLayout("icfg_pedes", "ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", 0),
    "rstpreid": TextLayout("rstpreid", "RSTPReid", ("data_captions.json",), "img_path", 0),
}


@dataclass(frozen=True)
class CaptionRecord:
    """One caption, the id of the person it describes and the index of its image in its split's image list."""

    text: str
    pid: int
    image_index: int


class TextReIDDataset(ReIDDataset):
    """Images as in :class:`ReIDDataset` (train, gallery; no query images) plus their captions."""

    def __init__(self, name, root, layout, annotation, splits, train_original_pids):
        train, train_captions = splits["train"]
        gallery, query_captions = splits["test"]
        super().__init__(name, root, layout, train, [], gallery, train_original_pids)
        self.annotation = annotation
        self.train_captions = train_captions
        self.query_captions = query_captions
        self.val, self.val_captions = splits["val"]

    @property
    def caption_pids(self):
        return [caption.pid for caption in self.query_captions]

    def summary(self):
        """A small table of identities, images and captions per split."""
        rows = [("subset", "# ids", "# images", "# captions")]
        for split, images, captions in (("train", self.train, self.train_captions),
                                        ("test", self.gallery, self.query_captions),
                                        ("val", self.val, self.val_captions)):
            pids = Counter(record.pid for record in images)
            rows.append((split, str(len(pids)), str(len(images)), str(len(captions))))
        widths = [max(len(row[col]) for row in rows) for col in range(4)]
        lines = [f"{self.name} ({self.layout} in {self.root}, {os.path.basename(self.annotation)})"]
        for index, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            lines.append("  " + " | ".join(cells))
            if index == 0:
                lines.append("  " + "-+-".join("-" * width for width in widths))
        return "\n".join(lines)

    def __repr__(self):
        return (f"TextReIDDataset(name={self.name!r}, layout={self.layout!r}, train={len(self.train)}, "
                f"gallery={len(self.gallery)}, query_captions={len(self.query_captions)})")


def find_annotation(folder, layout):
    """The first accepted JSON name present in ``folder``, or None."""
    for name in layout.annotations:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _missing(folder, layout):
    missing = [] if os.path.isdir(os.path.join(folder, IMAGE_FOLDER)) else [IMAGE_FOLDER + "/"]
    if find_annotation(folder, layout) is None:
        missing.append(" or ".join(layout.annotations))
    return f"missing {', '.join(missing)}" if missing else None


def read_annotations(path):
    """The JSON list of records; invalid JSON or another top-level value is a one-line DatasetError."""
    try:
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got a {type(records).__name__}")
    return records


def check_record(record, index, path, layout, image_dir):
    """``(split, pid, image path, captions)`` of one record, or a DatasetError naming the record."""
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: record {index}: expected an object, got a {type(record).__name__}")
    relative = record.get(layout.path_key)
    where = f"{path}: record {index} ({relative})"
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{path}: record {index}: no '{layout.path_key}' (the image path under imgs/)")
    split = record.get("split")
    if split not in SPLITS:
        raise DatasetError(f"{where}: split {split!r} is none of {', '.join(SPLITS)}")
    pid = record.get("id")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise DatasetError(f"{where}: 'id' must be an integer, got {pid!r}")
    captions = record.get("captions")
    if not isinstance(captions, list) or not captions:
        raise DatasetError(f"{where}: no captions (expected a non-empty list of strings)")
    if not all(isinstance(caption, str) and caption.strip() for caption in captions):
        raise DatasetError(f"{where}: every caption must be a non-empty string")
    image = os.path.join(image_dir, relative)
    if not os.path.isfile(image):
        raise DatasetError(f"{where}: image not found: {image}")
    return split, pid, image, captions


def check_train_labels(labels, path, layout):
    """Train labels must be 0..P-1 without gaps, as IRRA asserts."""
    found = sorted(set(labels))
    if found and found != list(range(len(found))):
        gap = next((label for expected, label in zip(range(len(found)), found) if label != expected), None)
        rule = f"id - {layout.train_id_offset}" if layout.train_id_offset else "id"
        raise DatasetError(
            f"{path}: train identities ({rule}) must be contiguous from 0; found {len(found)} identities in "
            f"{found[0]}..{found[-1]}, {gap} where {found.index(gap)} was expected"
        )


def read_splits(path, layout, image_dir):
    """``{split: (image records, caption records)}`` in the JSON's order, plus the train pids by label."""
    images = {split: [] for split in SPLITS}
    captions = {split: [] for split in SPLITS}
    for index, record in enumerate(read_annotations(path)):
        split, pid, image, texts = check_record(record, index, path, layout, image_dir)
        label = pid - layout.train_id_offset if split == "train" else pid
        image_index = len(images[split])
        images[split].append(ImageRecord(image, label, NO_CAMERA))
        captions[split].extend(CaptionRecord(text, label, image_index) for text in texts)
    check_train_labels([record.pid for record in images["train"]], path, layout)
    if not images["test"]:
        raise DatasetError(f"{path}: no record has split 'test'; expected the test images (the gallery)")
    num_train = len({record.pid for record in images["train"]})
    original = tuple(label + layout.train_id_offset for label in range(num_train))
    return {split: (images[split], captions[split]) for split in SPLITS}, original


def build_text_dataset(name, root):
    """Read data set ``name`` (a key of ``LAYOUTS``) under ``root`` (or ``root`` being its folder)."""
    layout = LAYOUTS[name]
    folder, found = find_layout(name, root, (layout.folder, "."), lambda path: _missing(path, layout))
    annotation = find_annotation(folder, layout)
    splits, original_pids = read_splits(annotation, layout, os.path.join(folder, IMAGE_FOLDER))
    return TextReIDDataset(name, folder, found, annotation, splits, original_pids)


@register_dataset("cuhk_pedes")
def build_cuhk_pedes(root):
    """CUHK-PEDES: ``CUHK-PEDES/imgs/`` + ``reid_raw.json``; train labels id - 1."""
    return build_text_dataset("cuhk_pedes", root)


@register_dataset("icfg_pedes")
def build_icfg_pedes(root):
    """ICFG-PEDES: ``ICFG-PEDES/imgs/`` + ``ICFG-PEDES.json`` (or ``ICFG_PEDES.json``); train labels id."""
    return build_text_dataset("icfg_pedes", root)


@register_dataset("rstpreid")
def build_rstpreid(root):
    """RSTPReid: ``RSTPReid/imgs/`` + ``data_captions.json`` (``img_path`` records); train labels id."""
    return build_text_dataset("rstpreid", root)
