"""Name -> builder registry, so configs can select a data set by ``DATASETS.NAMES``."""
import inspect
import logging

from .bases import DatasetError

logger = logging.getLogger("pixelfade.data")

DATASETS = {}


def register_dataset(name):
    """Decorator registering ``builder(root, **options) -> ReIDDataset`` under ``name``."""

    def register(builder):
        if name in DATASETS:
            raise ValueError(f"dataset name '{name}' is already registered")
        DATASETS[name] = builder
        return builder

    return register


def build_dataset(name, root, **options):
    """Build the data set registered as ``name`` from the folder ``root``."""
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset '{name}' (DATASETS.NAMES); known: {', '.join(sorted(DATASETS))}"
        )
    builder = DATASETS[name]
    accepted = [p for p in inspect.signature(builder).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"dataset '{name}' has no option {', '.join(unknown)}; "
            f"options: {', '.join(accepted) or 'none'}"
        )
    dataset = builder(root, **options)
    logger.info("%s: using layout %s at %s", name, dataset.layout, dataset.root)
    return dataset
