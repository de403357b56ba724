"""The four pipelines (protect, attack, train; methods they share) and their common machinery."""
