"""The machine-wide arbiter of thread tokens.

Every cooperating process of a user maps one shared-memory segment per
*domain* (``/dev/shm/composepar-<uid>-<domain>``, mode 0600). The segment
holds ``capacity`` tokens (by default the CPUs this process may use); a
token is the right to run one busy thread::

      process A (pool worker)          process B (another program)
      thread 1: lease  own + 2 extra   thread 1: lease  own + 0 extra
      thread 2: acquire(2) -> 2        thread 2: acquire(1) ... waiting
                   \\                        /
                    +---- segment: capacity 8 ----+
                    | free 1 | A holds 5 | B holds 1 | B waits for 1
                    +-----------------------------+
      invariant: tokens_free + sum(held) == capacity, held never > capacity

Two ways to hold tokens:

* **Leases** (``Arbiter.lease``) are for threads that are already running a
  task. Opening one never blocks: it takes the thread's own token if one is
  free, else runs *overdrawn* (shown in ``stats()``), and borrows extra
  tokens for inner native threads (BLAS, OpenMP) from free capacity only.
  ``Lease.refresh()`` re-applies the policy while the task runs.
* **Explicit acquisition** (``Arbiter.acquire``) is for code that wants to
  wait for threads: it grants between ``min_tokens`` and ``max_tokens``,
  sleeping on a futex (no spinning) until ``min_tokens`` are free.

Fair share. A *claimant* is an open lease, a thread blocked in ``acquire``,
a process's explicit holding, or a pool task its owner expects to run that
has no lease yet (``set_pool_demand``). With ``share = max(1, capacity //
claimants)``, no claimant is raised above its share while another process
is below its share and asks for tokens it did not get; tokens nobody asks
for go to whoever asks (work conserving). ``refresh()`` gives back what is
above the share when someone below it wants more, and picks up what
finished holders freed::

      capacity 8     A wants 8 extra, B wants 8 extra
      A alone        A ########           share 8
      B opens        A ########  B .      B overdrawn, asks for 8
      A refreshes    A ####      B .      A gives back down to share 4
      B refreshes    A ####      B ####   B takes its share
      A closes                   B ####   4 free
      B refreshes                B ########

Crash safety. Each process owns a slot holding its pid and start time and
an fcntl lock the kernel drops when it dies. When a request finds fewer free
tokens than its minimum, and every 100 ms while ``acquire`` waits, slots of
dead processes (killed, ``os._exit``, segfault, zombie) are reaped and their
tokens returned; a reused pid is told apart by its start time. Nothing
depends on ``atexit``.

Fork. A child starts with nothing held and registers its own slot on first
use; leases opened in the parent are inert in the child.
"""

from __future__ import annotations  # annotations stay strings: no typing import at start-up

import atexit
import os
import sys
import threading

from . import _config
from ._cpus import process_cpus
from ._errors import CapacityMismatchError, SegmentRetiredError, WouldBlock
from ._native import _arbiter as _native

TYPE_CHECKING = False  # type checkers read it as True; importing typing would cost ~3 ms at start-up
if TYPE_CHECKING:
    from typing import Optional

    from ._stats import ArbiterStats

__all__ = ["Arbiter", "Lease"]

# One native handle per segment path in this process: the slot (and the
# explicit tokens it holds) belongs to the process, not to an Arbiter object.
_handles = {}
_handles_lock = threading.Lock()  # guards _handles; re-created in fork children


def _reset_after_fork():
    global _handles_lock
    _handles_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _command_label():
    """What `status` shows for this process: the script's name if there is one."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0 in ("", "-c", "-m", "-"):
        argv0 = os.path.basename(sys.executable or "python")
    return os.path.basename(argv0)[:15]


def _native_handle(path, capacity):
    with _handles_lock:
        handle = _handles.get(path)
        if handle is None:
            # A new segment gets the CPUs this process may use, read afresh at every attach.
            handle = _native.Arbiter(path, capacity or 0, process_cpus(max_age=0), _command_label())
            _handles[path] = handle
            return handle
    if capacity is not None and capacity != handle.capacity:
        raise CapacityMismatchError(
            f"the arbiter in {path} has capacity {handle.capacity}, not the {capacity} asked for; drop the "
            f"capacity argument (or COMPOSEPAR_CAPACITY) to use it as it is, or use another domain"
        )
    return handle


def _forget_handle(path):
    with _handles_lock:
        handle = _handles.pop(path, None)
    if handle is not None:
        handle.detach()


_remove_when_unused = {}  # segment path -> pid of the process that asked to remove it at its exit


def remove_at_exit_if_unused(path):
    """At this process's exit, after detaching, removes the segment at `path`
    if no live process uses it then (the launcher asks this for its domain).

    Hygiene only: a process that skips it (SIGKILL, os._exit) leaves the
    segment, which the next launch re-creates or joins. Safe against a
    process attaching at that moment: the test and the unlink happen under
    the segment's mutex, and an attacher that opened the old file finds it
    retired when it takes its slot, and attaches again.
    """
    _remove_when_unused[path] = os.getpid()  # not a fork child's: its copy of our handle names our slot


@atexit.register
def _detach_all():
    # Hygiene only: a process that skips this (SIGKILL) is reaped by others.
    with _handles_lock:
        handles = list(_handles.values())
    for handle in handles:
        try:
            handle.detach()
            if _remove_when_unused.get(handle.path) == os.getpid():
                handle.retire_and_unlink()
        except Exception:  # noqa: BLE001 - the interpreter is going away; others will reap the slot
            pass


Lease = _native.Lease  # the native class: see its docstring
_MAX_PID = 1 << 22  # Linux's PID_MAX_LIMIT: no pid is larger


class Arbiter:
    """A handle on the token budget of one domain on this machine.

    Parameters
    ----------
    domain : str, optional
        Which budget: processes share tokens only within a domain. Default
        ``$COMPOSEPAR_DOMAIN`` or ``"default"``.
    capacity : int, optional
        Tokens in the budget. Default ``$COMPOSEPAR_CAPACITY`` or the CPUs
        this process may use (affinity and cgroup quota). Asking for a
        capacity that differs from the existing segment's raises
        ``CapacityMismatchError``; leaving it out attaches to any. (The
        launcher instead re-creates a segment no live process uses; see
        ``_segments.open_budget``.)
    """

    __slots__ = ("_domain", "_handle", "_capacity")

    def __init__(self, domain: Optional[str] = None, capacity: Optional[int] = None):
        self._domain = _config.resolve_domain(domain)
        self._handle = _native_handle(_config.segment_path(self._domain), _config.resolve_capacity(capacity))
        self._capacity = self._handle.capacity  # fixed for the segment's life

    @classmethod
    def _as_is(cls, domain=None):
        """(internal) The domain's Arbiter with its segment's capacity, whatever
        $COMPOSEPAR_CAPACITY says: for `status`, which only looks."""
        self = cls.__new__(cls)
        self._domain = _config.resolve_domain(domain)
        self._handle = _native_handle(_config.segment_path(self._domain), None)
        self._capacity = self._handle.capacity
        return self

    def _reattach(self):
        """`cleanup` removed the segment after we attached (we held nothing): use the new one."""
        path = self._handle.path
        with _handles_lock:
            if _handles.get(path) is self._handle:
                del _handles[path]
        self._handle = _native_handle(path, None)
        self._capacity = self._handle.capacity

    # -- identity ---------------------------------------------------------
    @property
    def domain(self) -> str:
        return self._domain

    @property
    def path(self) -> str:
        return self._handle.path

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def tokens_held(self) -> int:
        """Explicit tokens this process holds (from ``acquire``)."""
        return self._handle.tokens_explicit()

    # -- explicit tokens --------------------------------------------------
    def acquire(self, max_tokens: int, *, min_tokens: int = 1, timeout: Optional[float] = None) -> int:
        """Waits until at least ``min_tokens`` can be granted; returns the count granted.

        Grants up to ``max_tokens`` (more than the capacity is asked as the
        capacity) within the fair share. Raises ``TimeoutError`` after
        ``timeout`` seconds (None: wait forever); TypeError or ValueError,
        naming the rule, for a non-int or a ``min_tokens`` outside
        1..min(max_tokens, capacity).
        The wait sleeps on a futex and lets KeyboardInterrupt through.
        """
        if type(max_tokens) is not int or type(min_tokens) is not int or not 0 < min_tokens <= max_tokens:
            self._check_request(max_tokens, min_tokens)
        if min_tokens > self._capacity:
            self._check_request(max_tokens, min_tokens)
        max_tokens = min(max_tokens, self._capacity)  # never more can be granted; keeps the core's u32 safe
        if timeout is None:
            timeout_ns = -1
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"timeout must be None or a number of seconds >= 0; got {timeout!r} instead")
        else:
            timeout_ns = int(timeout * 1e9)
        try:
            granted = self._handle.acquire(min_tokens, max_tokens, timeout_ns)
        except SegmentRetiredError:
            self._reattach()
            granted = self._handle.acquire(min_tokens, max_tokens, timeout_ns)
        if granted == 0:
            raise TimeoutError(
                f"could not get {min_tokens} of {self.capacity} tokens in domain {self._domain!r} within "
                f"{timeout} s; `python -m composepar status --domain {self._domain}` shows who holds them"
            )
        return granted

    def acquire_nowait(self, max_tokens: int, *, min_tokens: int = 1) -> int:
        """Like ``acquire`` but raises ``WouldBlock`` instead of waiting."""
        # One cheap test on the fast path; _check_request words the error.
        if type(max_tokens) is not int or type(min_tokens) is not int or not 0 < min_tokens <= max_tokens:
            self._check_request(max_tokens, min_tokens)
        if min_tokens > self._capacity:
            self._check_request(max_tokens, min_tokens)
        max_tokens = min(max_tokens, self._capacity)
        try:
            granted = self._handle.acquire_nowait(min_tokens, max_tokens)
        except SegmentRetiredError:
            self._reattach()
            granted = self._handle.acquire_nowait(min_tokens, max_tokens)
        if granted == 0:
            raise WouldBlock(f"fewer than {min_tokens} tokens free in domain {self._domain!r}")
        return granted

    def release(self, n: int) -> None:
        """Gives back ``n`` tokens taken with ``acquire``; more than held is a ValueError."""
        if type(n) is not int or not 0 <= n <= _native.MAX_CAPACITY:
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"n must be an int; got {n!r} instead")
            if n > _native.MAX_CAPACITY:
                raise ValueError(f"cannot release {n} tokens: no budget has more than {_native.MAX_CAPACITY} "
                                 f"(this one has {self._capacity})")
            raise ValueError(f"n must be >= 0; got {n!r} instead")
        self._handle.release(n)

    def _check_request(self, max_tokens, min_tokens):
        _config.check_positive_int(max_tokens, "max_tokens")
        _config.check_positive_int(min_tokens, "min_tokens")
        if min_tokens > max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({max_tokens}); got {min_tokens!r} instead")
        if min_tokens > self.capacity:
            raise ValueError(
                f"min_tokens must be <= the capacity ({self.capacity}) or it can never be granted; "
                f"got {min_tokens!r} instead"
            )

    # -- leases -----------------------------------------------------------
    def lease(self, extra_wanted: Optional[int] = None, *, pool_owner_pid: int = 0) -> Lease:
        """Opens a lease for the calling thread; never blocks.

        ``extra_wanted``: extra tokens to ask for beyond the thread's own
        (default: capacity - 1, i.e. as many as the policy gives; more is
        asked as capacity - 1). ``pool_owner_pid``: for a pool's task, the pid
        of the process that submitted it (see ``set_pool_demand``); 0 for none.
        Raises ValueError for a negative ``extra_wanted`` or a
        ``pool_owner_pid`` outside 0..2**22 (Linux's PID_MAX_LIMIT).

        A lease counts tokens of the budget. The task scopes that size native
        pools from it (the launcher's hooks, ``limit``, the drop-in pools)
        ask for at most ``min(capacity, process_cpus()) - 1`` extras, so no
        task is given more threads than its process's CPUs; code that sizes
        its own threads from ``Lease.threads`` should cap it the same way.
        """
        if extra_wanted is None:
            extra_wanted = self._capacity - 1
        elif type(extra_wanted) is not int or extra_wanted < 0:
            raise ValueError(f"extra_wanted must be an int >= 0; got {extra_wanted!r} instead")
        else:
            extra_wanted = min(extra_wanted, self._capacity - 1)  # never more can be granted (the core sums them)
        if type(pool_owner_pid) is not int or not 0 <= pool_owner_pid <= _MAX_PID:
            raise ValueError(f"pool_owner_pid must be 0 (no pool) or a pid, at most {_MAX_PID}; "
                             f"got {pool_owner_pid!r} instead")
        try:
            return self._handle.open_lease(extra_wanted, pool_owner_pid)
        except SegmentRetiredError:
            self._reattach()
            return self._handle.open_lease(extra_wanted, pool_owner_pid)

    def set_pool_demand(self, tasks: int) -> None:
        """Publishes how many tasks this process's pools expect to run now.

        Tasks expected but not yet started count as claimants, so the first
        task of a pool of P workers gets capacity/P rather than everything;
        a lone task (demand 1) gets the whole budget. Leases opened with
        ``pool_owner_pid`` equal to this process's pid count against it.
        """
        if type(tasks) is not int or not 0 <= tasks <= _native.MAX_CAPACITY:
            raise ValueError(f"tasks must be an int between 0 and {_native.MAX_CAPACITY} (more tasks at once "
                             f"than the largest budget's tokens count as that many); got {tasks!r} instead")
        try:
            self._handle.set_pool_demand(tasks)
        except SegmentRetiredError:
            self._reattach()
            self._handle.set_pool_demand(tasks)

    # -- followers (internal: composepar/_task.py) ----------------------
    def _policy_seq(self) -> int:
        """The segment's policy sequence, read before refreshing leases (see _wait_policy)."""
        return self._handle.policy_seq

    def _wait_policy(self, seen: int, interest: int, timeout: float) -> None:
        """Sleeps (GIL released) until an event in ``interest`` (FOLLOW_GROW |
        FOLLOW_SHRINK bits, or 0) moves the policy sequence on from ``seen``,
        this process's ``_wake_follower()``, or ``timeout`` seconds; may
        return early. One thread per process waits here (arbiter.cpp, "Followers")."""
        self._handle.wait_policy(seen, interest, int(timeout * 1e9))

    def _wake_follower(self) -> None:
        """Wakes this process's thread in ``_wait_policy``, whatever it waits for."""
        self._handle.wake_follower()

    # -- observation ------------------------------------------------------
    def stats(self) -> ArbiterStats:
        """A consistent snapshot; dead processes are reaped first."""
        from ._stats import ArbiterStats, ProcessStats  # dataclasses cost ~10 ms to import: not at start-up

        capacity, free, claimants, reclaimed, reaped, processes = self._handle.stats()
        return ArbiterStats(
            domain=self._domain,
            path=self.path,
            capacity=capacity,
            tokens_free=free,
            claimants=claimants,
            tokens_reclaimed=reclaimed,
            processes_reaped=reaped,
            processes=tuple(ProcessStats(*p) for p in processes),
        )

    def invariant_violations(self) -> str:
        """Empty when ``tokens_free + sum(held) == capacity`` and every total matches its slots."""
        return self._handle.check_invariants()

    def reap(self) -> int:
        """Returns the tokens of dead processes now; the number of processes reaped."""
        return self._handle.reap()

    def __repr__(self):
        return f"<composepar.Arbiter domain={self._domain!r} capacity={self.capacity}>"
