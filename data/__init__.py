"""Data sets, transforms, loaders and the synthetic data generator."""
from .datasets import (
    DATASETS,
    DatasetError,
    ImageRecord,
    ReIDDataset,
    build_dataset,
    register_dataset,
)
from .loaders import ImageDataset, build_loader, eval_records, read_image
from .transforms import build_eval_transform, build_train_transform, denormalize, normalize

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageDataset",
    "ImageRecord",
    "ReIDDataset",
    "build_dataset",
    "build_eval_transform",
    "build_loader",
    "build_train_transform",
    "denormalize",
    "eval_records",
    "normalize",
    "read_image",
    "register_dataset",
]
