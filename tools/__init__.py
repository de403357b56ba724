"""Small commands, and the demo's code (tools.demo, run by demo.py)."""
