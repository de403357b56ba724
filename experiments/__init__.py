"""Experiments behind the thin commands: the sweep grid (tools/sweep.py), the paper's table runs
(tools/paper_tables.py), their tables and plots, and the demo (demo.py)."""
