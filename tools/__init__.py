"""Thin commands (about 70 lines at most each); their work is in engine/, evaluation/ and experiments/."""
