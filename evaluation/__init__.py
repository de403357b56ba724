"""Evaluation: Re-ID retrieval metrics, k-reciprocal re-ranking and the protection scoring modes."""
from .reid import (
    DISTANCE_METRICS,
    PROTECTION_MODES,
    evaluate_protection_modes,
    evaluate_rank,
    evaluate_reid,
    format_results_table,
    pairwise_distance,
)
from .rerank import re_ranking

__all__ = [
    "DISTANCE_METRICS",
    "PROTECTION_MODES",
    "evaluate_protection_modes",
    "evaluate_rank",
    "evaluate_reid",
    "format_results_table",
    "pairwise_distance",
    "re_ranking",
]
