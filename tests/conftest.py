"""Test-wide settings.

The tests use tiny tensors, for which a second OpenMP thread only adds synchronisation; on a
shared 2-core machine a busy neighbour turns that into stalls of tens of seconds. One thread per
process (inherited by the processes the distributed tests spawn) keeps the suite's time stable.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads at import)

torch.set_num_threads(1)
