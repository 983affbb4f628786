"""How many CPUs this process may really use.

The affinity mask (taskset, cpusets, Slurm) capped by the CPU quota of the
process's cgroup (Docker --cpus, Kubernetes limits): cgroup v2 ``cpu.max``
or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, the tightest limit on the
path from the process's cgroup to the root, rounded up.
"""

import math
import os

__all__ = ["usable_cpus", "cgroup_cpu_limit"]


def usable_cpus(proc_root="/proc", cgroup_root="/sys/fs/cgroup"):
    """CPUs in the affinity mask, capped by the cgroup quota, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(proc_root, cgroup_root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def cgroup_cpu_limit(proc_root="/proc", cgroup_root="/sys/fs/cgroup"):
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None if unlimited."""
    try:
        with open(os.path.join(proc_root, "self", "cgroup")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 unified hierarchy
            limits += _walk_up(cgroup_root, path, _read_v2_limit)
        elif "cpu" in controllers.split(","):  # cgroup v1 cpu controller
            mount = os.path.join(cgroup_root, controllers)
            if not os.path.isdir(mount):
                mount = os.path.join(cgroup_root, "cpu")
            limits += _walk_up(mount, path, _read_v1_limit)
    return min(limits) if limits else None


def _walk_up(mount, path, read_limit):
    """Limits found in `mount`/`path` and each of its ancestors."""
    found = []
    path = path.strip("/")
    while True:
        limit = read_limit(os.path.join(mount, path) if path else mount)
        if limit is not None:
            found.append(limit)
        if not path:
            return found
        path = os.path.dirname(path)


def _read_v2_limit(directory):
    try:
        with open(os.path.join(directory, "cpu.max")) as f:
            quota, period = (f.read().split() + ["100000"])[:2]
    except OSError:
        return None
    if quota == "max":
        return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _read_v1_limit(directory):
    try:
        with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
