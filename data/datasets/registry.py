"""Name -> builder registry, so configs can select a data set by ``DATASETS.NAMES``."""
import inspect
import logging

from utils.errors import ConfigError
from utils.registry import Registry

from .bases import DatasetError

logger = logging.getLogger("pixelfade.data")

DATASETS = Registry("dataset", config_key="DATASETS.NAMES")


def register_dataset(name):
    """Decorator registering ``builder(root, **options) -> ReIDDataset`` under ``name``."""
    return DATASETS.register(name)


def build_dataset(name, root, **options):
    """Build the data set registered as ``name`` from the folder ``root``.

    An unknown name or option raises ``DatasetError`` listing the valid ones.
    """
    try:
        builder = DATASETS.get(name)
    except ConfigError as err:
        raise DatasetError(str(err)) from None
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
