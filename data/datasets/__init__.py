"""Re-ID data sets by name: ``build_dataset("market1501", root)`` and friends."""
from . import (  # noqa: F401  (they register themselves)  # noqa: F401  (visible-infrared; they register themselves)
    cuhk03,
    image_folder,
    market1501,
    msmt17,
    regdb,
    sysu_mm01,
    text_person,  # noqa: F401  (cuhk_pedes, icfg_pedes, rstpreid)
)
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
