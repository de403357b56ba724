"""How many CPUs this process may use, and torch's thread count set from it.

``os.cpu_count()`` counts the machine's CPUs, not those a container or a ``taskset`` grants: more
threads or loader workers than the process may run only queue on each other.
"""
import math
import os

from .errors import ConfigError

CGROUP_ROOT = "/sys/fs/cgroup"


def available_cpus(cgroup_root=CGROUP_ROOT):
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 or v1 CPU quota (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root=CGROUP_ROOT):
    """CPUs granted by the cgroup's quota, rounded up; None when there is no quota (or no cgroup file)."""
    v2 = _read_words(os.path.join(cgroup_root, "cpu.max"))
    if v2 is not None:
        return _quota(*v2[:2]) if len(v2) >= 2 else None
    quota = _read_words(os.path.join(cgroup_root, "cpu", "cpu.cfs_quota_us"))
    period = _read_words(os.path.join(cgroup_root, "cpu", "cpu.cfs_period_us"))
    if quota and period:
        return _quota(quota[0], period[0])
    return None


def _read_words(path):
    try:
        with open(path) as handle:
            return handle.read().split()
    except OSError:
        return None


def _quota(quota, period):
    """ceil(quota / period), or None for 'max' / -1 (unlimited) or an unreadable pair."""
    try:
        quota, period = int(quota), int(period)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def loader_workers(configured):
    """DATALOADER.NUM_WORKERS capped at the usable CPUs (more only add processes and warnings)."""
    return min(int(configured), available_cpus())


def default_threads(processes=1):
    """Threads per process when none are set: OMP_NUM_THREADS if given, else the usable CPUs shared out."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, available_cpus() // max(1, processes))


def configure_threads(threads, processes=1, key="SYSTEM.THREADS (--threads)"):
    """Set torch's intra-op threads (and inter-op ones while torch still allows it); returns the count.

    ``threads`` 0 means ``default_threads(processes)``. Loader workers need nothing: torch runs
    each worker with one thread.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"{key} must be an integer >= 0 (0: the CPUs this process may use), got {threads!r}")
    import torch

    count = threads or default_threads(processes)
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != count:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:
            # Only possible before the first inter-op parallel work; later calls keep the pool torch made.
            pass
    return count
