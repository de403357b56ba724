"""Writing matplotlib figures (Agg backend, no display needed) as PNG files, atomically."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from utils.file_io import atomic_write  # noqa: E402


def save_figure(figure, path, dpi=110):
    """Write ``figure`` as a PNG atomically and close it; returns ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return path
