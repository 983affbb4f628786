"""How many CPUs this process may really use.

The affinity mask (taskset, cpusets, Slurm) capped by the CPU quota of the
process's cgroup (Docker --cpus, Kubernetes limits): cgroup v2 ``cpu.max``
or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, the tightest limit on the
path from the process's cgroup to the root, rounded up.

The affinity read is the process's (its main thread's, pid = thread-group
id), not the calling thread's: ``sched_getaffinity(0)`` in a follower or a
pool thread would answer for that thread alone. taskset, cpusets and batch
schedulers set every thread alike.

``process_cpus()`` is the same count for calls on hot paths (every lease):
read again when the value it keeps is older than ``MAX_AGE`` seconds, so a
process whose affinity or quota changes is followed within that time.
``affinity_cpus()`` and ``format_cpu_list()`` name the CPU set itself
("0-3,8"), which keys the default domain (see _config.resolve_domain).
"""

import math
import os
import time

__all__ = ["usable_cpus", "cgroup_cpu_limit", "process_cpus", "affinity_cpus", "online_cpus", "format_cpu_list"]

MAX_AGE = 1.0  # seconds process_cpus() keeps a value before reading the affinity and quota again
_ONLINE_PATH = "/sys/devices/system/cpu/online"

# (monotonic time of the read, usable CPUs, affinity mask as a sorted tuple);
# a fork child inherits it with the affinity, which fork keeps.
_cached = (-math.inf, 1, ())


def process_cpus(max_age=MAX_AGE):
    """usable_cpus(), read again when the kept value is older than `max_age` seconds (0: now)."""
    if time.monotonic() - _cached[0] > max_age:
        _refresh()
    return _cached[1]


def affinity_cpus(max_age=MAX_AGE):
    """The CPUs of this process's affinity mask, a sorted tuple (kept as process_cpus() keeps its count)."""
    if time.monotonic() - _cached[0] > max_age:
        _refresh()
    return _cached[2]


def _refresh():
    global _cached
    now = time.monotonic()
    _cached = (now, usable_cpus(), _affinity())
    return _cached


def _affinity():
    try:
        return tuple(sorted(os.sched_getaffinity(os.getpid())))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


def online_cpus(path=_ONLINE_PATH):
    """The CPUs the kernel has online (/sys/devices/system/cpu/online), a sorted tuple."""
    try:
        with open(path) as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return tuple(range(os.cpu_count() or 1))


def parse_cpu_list(text):
    """"0-3,8\n" -> (0, 1, 2, 3, 8): the kernel's list format, as in cpuset.cpus."""
    cpus = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus):
    """(0, 1, 2, 3, 8) -> "0-3,8": the kernel's list format (taskset -c, cpuset.cpus)."""
    ranges = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def usable_cpus(proc_root="/proc", cgroup_root="/sys/fs/cgroup"):
    """CPUs in the affinity mask, capped by the cgroup quota, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(os.getpid()))
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
