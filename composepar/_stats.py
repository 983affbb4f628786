"""What ``Arbiter.stats()`` returns: a snapshot of one domain's segment.

Kept apart from _arbiter so that the launcher, which never reads stats, does
not import dataclasses (and inspect, ast, ...) at every program start.
"""

from dataclasses import dataclass
from typing import Tuple

__all__ = ["ArbiterStats", "ProcessStats"]


@dataclass(frozen=True)
class ProcessStats:
    """One attached process, as ``Arbiter.stats()`` saw it."""

    pid: int
    command: str
    threads_active: int  # open leases: threads running a task
    leases_overdrawn: int  # of those, running without their own token
    tokens_held: int  # every token the process holds
    tokens_explicit: int  # the part taken by acquire()
    tokens_wanted: int  # demand not granted (leases and blocked waiters)
    waiters: int  # threads blocked in acquire()
    tokens_waited: int  # sum of min_tokens those waiters wait for
    pool_demand: int  # tasks this process's pools expect to run now
    pool_leases_open: int  # leases open for those tasks, here or in worker processes

    @property
    def tokens_extra(self):
        """Tokens held beyond each running lease's own one (extras and explicit)."""
        return self.tokens_held - (self.threads_active - self.leases_overdrawn)


@dataclass(frozen=True)
class ArbiterStats:
    """A consistent snapshot of one domain's segment."""

    domain: str
    path: str
    capacity: int
    tokens_free: int
    claimants: int  # leases + blocked waiters + processes holding explicit tokens
    tokens_reclaimed: int  # tokens ever taken back from dead processes
    processes_reaped: int  # dead processes whose slot was recycled, ever
    processes: Tuple[ProcessStats, ...]

    @property
    def tokens_held(self):
        return self.capacity - self.tokens_free

    @property
    def leases_overdrawn(self):
        return sum(p.leases_overdrawn for p in self.processes)

    def process(self, pid):
        """The line of process `pid`, or None if it is not attached."""
        return next((p for p in self.processes if p.pid == pid), None)
