"""Process-level logging set-up shared by the command-line tools."""
import logging
import os
import sys


def setup_logging(output_dir=None, filename="log.txt", rank=0, name="pixelfade"):
    """Console and ``<output_dir>/<filename>`` logging on rank 0; warnings only elsewhere."""
    root = logging.getLogger(name)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    console = logging.StreamHandler(stream=sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), mode="a")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    return root
