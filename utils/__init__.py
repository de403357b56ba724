"""Pieces every layer uses: the error family and durable file writing."""
