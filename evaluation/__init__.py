"""Evaluation: Re-ID retrieval metrics and re-ranking, the scenario metrics, image quality, privacy and protection scoring.

Import from the module that holds a metric (``evaluation.reid``, ``evaluation.rerank``, ...).
"""
