"""Building blocks of the AGW authorization model."""
from .gem_pool import GeneralizedMeanPooling
from .non_local import Non_local

__all__ = ["GeneralizedMeanPooling", "Non_local"]
