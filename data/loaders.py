"""Reading images and batching records in a fixed order, each item carrying its global index.

The index lets a sharded (distributed) evaluation put features back in query+gallery order.
"""
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .datasets.bases import DatasetError


def read_image(path):
    """The image at ``path`` as RGB; any failure is a DatasetError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


class ImageDataset(Dataset):
    """Records (optionally a subset given by ``indices``) as dict items for the model.

    ``flips`` (one bool per record) mirrors an image horizontally after the transform, which for
    the reference's resize-flip-normalise order gives the same tensor as flipping before it.
    """

    def __init__(self, records, transform, indices=None, flips=None):
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.records = records
        self.transform = transform
        self.indices = list(range(len(records))) if indices is None else [int(i) for i in indices]
        self.flips = list(flips) if flips is not None else [False] * len(records)
        if len(self.flips) != len(records):
            raise ValueError(f"flips has {len(self.flips)} entries for {len(records)} records")
        bad = [i for i in self.indices if not 0 <= i < len(records)]
        if bad:
            raise IndexError(
                f"indices {bad[:5]} are outside the {len(records)} records (0..{len(records) - 1})"
            )

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = self.indices[position]
        record = self.records[index]
        image = self.transform(read_image(record.path))
        if self.flips[index]:
            image = image.flip(-1)
        return dict(
            image=image,
            pid=record.pid,
            camid=record.camid,
            path=record.path,
            index=index,
        )


def eval_records(dataset):
    """Query followed by gallery (every image once, stable order) and the number of queries."""
    return list(dataset.query) + list(dataset.gallery), len(dataset.query)


def build_loader(records, transform, batch_size, num_workers=0, indices=None):
    """Sequential batches: no shuffling, no padding, no dropped tail."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(
        ImageDataset(records, transform, indices),
        batch_size=int(batch_size),
        shuffle=False,
        drop_last=False,
        num_workers=int(num_workers),
        pin_memory=torch.cuda.is_available(),
    )
