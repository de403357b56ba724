"""Re-ID data sets by name: ``build_dataset("market1501", root)`` and friends."""
from . import cuhk03, image_folder, market1501, msmt17  # noqa: F401  (they register themselves)
from .bases import DatasetError, ImageRecord, ReIDDataset
from .registry import DATASETS, build_dataset, register_dataset

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageRecord",
    "ReIDDataset",
    "build_dataset",
    "register_dataset",
]
