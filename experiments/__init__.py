"""The paper's tables as scripts: sweeps over config keys, tables, plots (tools/sweep.py, tools/paper_tables.py)."""
