"""Task scopes: each running task holds a lease; its native pools follow the lease.

A pool worker (process or thread) runs each task inside a scope::

    task starts --> lease = arbiter.lease()     own token + extras from free capacity, at most
                                                what the loaded pools can run (a task the program
                                                pins at 1 thread asks none: NativePools.most_threads)
                    native pools := budget      per-thread pools in this thread,
                                                per-process pools := min over running tasks
    task runs   --> follower, on an event       lease.refresh(); per-process pools follow
                                                (TaskScope.follows: not a pinned task, nor one
                                                whose per-thread pools were set above 1)
    task ends   --> lease.close()               tokens back; others pick them up

    budget = min(lease.threads, innermost composepar.limit() cap)

A thread that blocks waiting for a pool's results is not busy: ``idle()``
closes its lease for the wait and opens a new one after (see _hooks.py).
A thread that submits to a pool gives its tokens back at the submit
(``suspend_current``), before the tasks can start: otherwise a lone task
would start while its submitter, not yet waiting, still held the machine.

The follower is one thread per process. It sleeps in the arbiter's segment
until a critical section anywhere in the budget frees tokens a lease here
wants, or brings a claimant that a lease here holding extras must make
room for (arbiter.cpp, "Followers"); then it refreshes the leases and sets
the per-process pools. No event, no wake-up: an idle or steady process
costs nothing. It also looks again every FOLLOW_TIMEOUT_SECONDS while it
has a lease to follow (a dead claimant's sweep, a CPU set that shrank).

The follower sets per-process pools (OpenBLAS with pthreads, BLIS, MKL,
TBB), which any thread may set and OpenBLAS reads at every call, whatever
else is loaded. Per-thread pools can only be set from their own thread. GNU
OpenMP follows anyway: the follower writes the new budget into the scope's
region cell, and the region hooks (_native/regions.hpp) set the owner
thread's ICV at its next parallel region. The others (numba, LLVM's and
Intel's OpenMP) follow at each task start, and a task that set them above 1
is not refreshed (a budget that shrank mid-task could not be enforced
there); one that set them to 1 is, as no shrink can take it below 1. A
process whose only pools are per thread and do not follow by region gives
the follower no lease to follow.

A task's pools are set to ``min(budget, the program's own value)`` and put
back when it ends (per-thread ones when the thread's scope closes,
per-process ones when the last scope of the process closes, except in a
pool worker, which keeps them between tasks: see _stop_running): a limit the
program sets itself is a ceiling composepar never undoes (_threadpools).
"""

import atexit
import os
import threading
import warnings
from _thread import start_new_thread
from time import monotonic as _monotonic

from . import _config, _demand
from ._arbiter import Arbiter
from ._cpus import process_cpus
from ._native import _arbiter as _native
from ._threadpools import REGION_HOOKS, native_pools

__all__ = ["TaskScope", "Task", "idle", "enter_main_thread", "current_budget", "current_scope", "apply",
           "suspend_current"]

# A follower with a lease to follow looks again this often without an event:
# the arbiter's sweep for dead claimants runs every 250 ms at most (kSweepEveryNs,
# arbiter.cpp), and the README promises their tokens back within 1 s.
FOLLOW_TIMEOUT_SECONDS = 0.5
# Leases in two budgets at once: no one wait hears both, so the follower polls.
POLL_SECONDS = 0.01
# A lease whose thread used no CPU for this long gives its extra tokens back
# (TaskScope.idle_now); it asks again at the follower's first round after the
# thread ran. The kernel counts CPU time in ticks of 10 ms: well below this.
IDLE_SECONDS = 0.5


class _ThreadState(threading.local):
    def __init__(self):
        self.scope = None  # the outermost open TaskScope of this thread, or None
        self.depth = 0  # TaskScopes open in this thread (nested ones reuse the outer lease)
        self.caps = []  # caps of the open composepar.limit() blocks, innermost last
        self.waits = 0  # idle() blocks open in this thread: only the outermost gives tokens back


_thread = _ThreadState()


class _ProcessState:
    """What this process runs; reset in fork children (their threads are gone)."""

    def __init__(self):
        self.lock = threading.Lock()  # guards the fields below but wake and stopped
        self.running = {}  # TaskScope -> None: the scopes holding leases in this process
        # Set when the follower thread returns; None until the first lease to follow starts it.
        self.follower = None
        self.follower_ident = None  # its threading.get_ident(), once it runs
        self.wake = threading.Event()  # set while there are leases to follow
        # (composepar.Arbiter, interest) while the follower sleeps in that
        # segment for those events (FOLLOW_GROW | FOLLOW_SHRINK); else None.
        self.waiting_on = None
        self.poked = False  # wake_follower() ran since the follower's round began
        self.pool_worker = False  # True once it ran a task of another process's pool: pools kept between tasks
        self.open_scopes = 0  # outer TaskScopes open in this process, running or waiting (>= len(running))
        self.reapply = False  # the follower applies the per-process budget at its next round, then clears it
        # Set at exit: the follower returns, cutting its wait short.
        self.stopped = threading.Event()


_process = _ProcessState()
_arbiters = {}  # domain -> this process's Arbiter for it, made on first use


def _reset_after_fork():
    global _process, _main_scope, _main_pending
    if _thread.scope is not None:
        _thread.scope.unbind_regions()  # the child has no follower to move the parent's budget
    _process = _ProcessState()
    _main_scope = None
    _main_pending = False
    _demand.reset_after_fork()
    _thread.scope, _thread.depth, _thread.caps, _thread.waits = None, 0, [], 0


os.register_at_fork(after_in_child=_reset_after_fork)


def get_arbiter(domain=None):
    """The Arbiter of `domain`, default the current COMPOSEPAR_DOMAIN (re-read each time)."""
    domain = domain or _config.resolve_domain()
    arbiter = _arbiters.get(domain)
    if arbiter is None:
        arbiter = _arbiters[domain] = Arbiter(domain)
    return arbiter


def current_budget():
    """The thread budget of the calling thread now, or None outside any scope."""
    scope = _thread.scope
    return None if scope is None else scope.budget()


def _reapply_thread():
    """A runtime started mid-task (numba's layer) gets the task's budget at once."""
    scope = _thread.scope
    if scope is not None:
        apply(scope)


native_pools.reapply_thread = _reapply_thread


def _after_worker_forks():
    """The process's last pool_worker_forks() block ended (_threadpools): the
    pools it held at one thread get their budget back. With tasks running,
    at the follower's next round, now (a submitter waits at once, and its wait
    keeps them at 1: no helper is restarted for nothing); with scopes only
    waiting, at their resume; with no scope open, the program's values now."""
    state = _process
    with state.lock:
        running, open_scopes = bool(state.running), state.open_scopes
        state.reapply = running
    if running:
        wake_follower()
    elif not open_scopes:
        native_pools.restore_process()


native_pools.after_worker_forks = _after_worker_forks


def current_scope():
    return _thread.scope


def thread_caps():
    """The caps of the calling thread's open composepar.limit() blocks, innermost last."""
    return _thread.caps


class TaskScope:
    """Runs the body as one task: a lease (or a fixed budget) and native pools set to it.

    ``threads``: wait (blocking) until exactly that many tokens can be had
    and hold them explicitly. ``static_threads``: no arbiter, a fixed
    budget (the launcher's --static mode). Neither: a lease, never blocking.
    """

    __slots__ = ("_extra_wanted", "_threads", "_static", "_owner_pid", "_domain", "_lease", "_explicit", "_outer",
                 "_usable", "_native_only", "thread_pools_at", "cap", "_regions", "_regions_bound", "_thread_id",
                 "_cpu_seen")

    def __init__(self, extra_wanted=None, threads=None, static_threads=None, owner_pid=0, domain=None,
                 native_only=False):
        self._extra_wanted = extra_wanted  # None: as many as the policy gives
        self._owner_pid = owner_pid  # pid of the process whose pool submitted the task; 0: none
        self._domain = domain  # the owner's domain; None: $COMPOSEPAR_DOMAIN
        self._threads = threads  # explicit request, or None
        self._static = static_threads  # fixed budget, or None
        self._lease = None  # composepar.Lease while open
        self._explicit = 0  # tokens acquired for a `threads` request
        self._outer = False  # True if this scope opened the thread's lease
        # The most threads the pools loaded at the start can run for this task
        # (their program values: NativePools.most_threads); None: no ceiling
        # known (none loaded, or one not started), or the program's own code
        # may use the budget (not native_only, or unpin()). Read again each
        # time tokens are taken (start, resume after a wait): a pool loaded or
        # a limit changed by the program mid-task counts from the next wait.
        self._usable = None
        # Only native pools use the budget (a pool's task, the launched main
        # thread): the program never sees it, unless a limit() block asks.
        self._native_only = native_only
        # The budget last given to this thread's per-thread pools (OpenMP,
        # numba), None if none is loaded: they can only be set from this
        # thread, so while it is above 1 the lease is not refreshed (a shrink
        # could not be enforced there; see follows()).
        self.thread_pools_at = None
        self.cap = min(_thread.caps) if _thread.caps else None  # innermost limit() of the owner thread
        # The budget the owner thread's GNU OpenMP regions follow (a native
        # RegionCell, see _native/regions.hpp), made when one is loaded; bound
        # to the owner thread while the scope holds its tokens. The follower
        # writes the new budget into it after each refresh.
        self._regions = None
        self._regions_bound = False
        # The owner thread's kernel id, and (its CPU ticks, when they last
        # moved) as the follower last read them (/proc): a thread whose CPU
        # time stands still for IDLE_SECONDS is not running, and its lease
        # gives its extras back until it runs again (idle_now).
        self._thread_id = threading.get_native_id()
        self._cpu_seen = None

    def budget(self):
        if self._static is not None:
            threads = self._static
        elif self._explicit:
            threads = self._explicit
        elif self._lease is not None:
            threads = self._lease.threads
        else:
            threads = 1
        # The process's CPUs may have shrunk since the tokens were taken
        # (affinity or quota changed): follow at once; the lease asks less
        # from its next task on.
        threads = min(threads, process_cpus())
        return threads if self.cap is None else min(threads, self.cap)

    def __enter__(self):
        if _thread.depth:
            _thread.depth += 1  # a task inside a task: the outer lease covers it
            return self
        _thread.depth = 1
        _thread.scope = self
        self._outer = True
        with _process.lock:
            _process.open_scopes += 1
        try:
            self._open()
        except BaseException:
            # Whatever was opened is given back; the thread leaves the scope.
            _thread.depth = 0
            _thread.scope = None
            self._close()
            raise
        return self

    def __exit__(self, *exc_info):
        if not self._outer:
            _thread.depth = max(0, _thread.depth - 1)
            return
        _thread.depth = 0
        _thread.scope = None
        self._close()

    def _open(self):
        if self._owner_pid and self._owner_pid != os.getpid():
            _process.pool_worker = True  # runs the tasks of another process's pool
        self._take_tokens()
        _start_running(self)  # every scope counts for the per-process minimum
        apply(self)

    def _take_tokens(self):
        if self._static is not None:
            return
        arbiter = get_arbiter(self._domain)
        # Never more threads than this process may run on, whatever the
        # budget's capacity (a taskset or cgroup quota smaller than it).
        if self._threads is not None:
            threads = min(self._threads, arbiter.capacity, process_cpus())
            self._explicit = arbiter.acquire(threads, min_tokens=threads)
        else:
            self._usable = native_pools.most_threads() if self._native_only else None
            self._lease = arbiter.lease(self._extra_asked(arbiter.capacity), pool_owner_pid=self._owner_pid)

    def _extra_asked(self, capacity):
        """Extra tokens the lease asks for: as many as the policy gives, or as
        asked, never past this process's CPUs (read again when older than 1 s),
        nor past what the loaded pools can run: a token the program's own
        limits leave unused (loky's and Dask's workers load with
        *_NUM_THREADS=1) is left to the other tasks of the budget."""
        most = min(capacity, process_cpus()) - 1
        if self._usable is not None:
            most = min(most, self._usable - 1)
        return most if self._extra_wanted is None else min(self._extra_wanted, most)

    def unpin(self):
        """The program's code asks for the budget (a limit() block in the task):
        the lease asks the policy's extra tokens again, whatever the native
        pools' ceilings, until repin() (waits included). Returns what repin()
        needs: None if the budget was the program's already (nothing to undo)."""
        if not self._native_only:
            return None
        pinned = self._usable
        self._native_only, self._usable = False, None
        lease = self._lease
        if lease is not None and pinned is not None:
            lease.refresh(self._extra_asked(get_arbiter(self._domain).capacity))
            wake_follower(lease.follow_interest)
        return (pinned,)

    def repin(self, unpinned):
        """Ends unpin(): only the native pools use the budget again.
        `unpinned`: what unpin() returned (the ceiling then)."""
        (pinned,) = unpinned
        self._native_only, self._usable = True, pinned
        lease = self._lease
        if lease is not None and pinned is not None:
            lease.refresh(self._extra_asked(get_arbiter(self._domain).capacity))

    def follows(self):
        """True if the follower has something to follow for this scope: a
        lease that may grow or shrink (not one pinned at its own thread), and
        whose per-thread pools, set at its start, stay within any share it
        could shrink to (they are at 1, or none is loaded)."""
        return (self._lease is not None and (self._usable is None or self._usable > 1)
                and (self.thread_pools_at is None or self.thread_pools_at <= 1
                     or native_pools.per_thread_pools_follow()))

    def follow_interest(self):
        """What the policy may change for this scope's lease (Lease.follow_interest); 0 if none."""
        lease = self._lease
        return 0 if lease is None else lease.follow_interest

    def _give_tokens_back(self):
        if self._lease is not None:
            lease, self._lease = self._lease, None
            lease.close()
        if self._explicit:
            explicit, self._explicit = self._explicit, 0
            get_arbiter(self._domain).release(explicit)

    def _close(self):
        with _process.lock:
            _process.open_scopes -= 1
        _stop_running(self)
        self._give_tokens_back()
        self.unbind_regions()  # the hooks put back what they changed, then:
        native_pools.restore_thread()  # the scope's own thread: its per-thread pools get the program's values
        _apply_process_budget()

    def suspend(self):
        """Gives the tokens back while the thread waits (idle): leases and explicit ones."""
        if self._lease is not None or self._explicit:
            _stop_running(self, restore=False)
            self._give_tokens_back()
            self.unbind_regions()
            _apply_process_budget()

    def resume(self):
        """Takes tokens again after a wait (an explicit request may block until they are free)."""
        if self._lease is None and not self._explicit:
            self._take_tokens()
            _start_running(self)
            apply(self)

    def refresh(self):
        """Re-applies the policy to this scope's lease (follower thread)."""
        lease = self._lease
        if lease is not None:
            try:
                # Asked again: if the process's CPUs shrank, the tokens it can
                # no longer use go back to the budget (and come back if they grow).
                asked = 0 if self.idle_now() else self._extra_asked(get_arbiter(self._domain).capacity)
                lease.refresh(asked)
            except Exception:  # noqa: BLE001 - closed under us by its own thread: nothing to refresh
                return
            regions = self._regions
            if regions is not None:
                regions.budget = self.budget()  # the owner thread's next OpenMP region follows

    def idle_now(self):
        """True if the owner thread has used no CPU for IDLE_SECONDS (it
        sleeps, or waits somewhere composepar does not know as a wait): the
        kernel's view, read by the follower from /proc. A thread that runs
        again is seen at the follower's next round (within FOLLOW_TIMEOUT_SECONDS)."""
        try:
            with open(f"/proc/self/task/{self._thread_id}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            return False  # the thread is gone: its scope closes
        ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15 of proc(5))
        now = _monotonic()
        seen = self._cpu_seen
        if seen is None or ticks != seen[0]:
            self._cpu_seen = (ticks, now)  # it ran: idle again only IDLE_SECONDS from now
            return False
        return now - seen[1] >= IDLE_SECONDS

    def bind_regions(self, budget):
        """The calling (owner) thread's GNU OpenMP regions follow `budget` and
        what the follower writes after it; called after its pools were set."""
        regions = self._regions
        if regions is None:
            # One per scope: the follower may still write a closed scope's
            # budget into its own cell, never into the next task's.
            regions = self._regions = _native.RegionCell()
        regions.ceiling = native_pools.region_ceiling()
        regions.budget = budget
        _native.bind_region_cell(regions)
        self._regions_bound = True

    def unbind_regions(self):
        """Before the owner thread's pools are read or set by Python (apply,
        restore, a wait): the hooks put back the value they changed, unless
        the program changed it since, so the pools hold what Python left."""
        if self._regions_bound:
            self._regions_bound = False
            _native.bind_region_cell(None)


def apply(scope):
    """Sets the calling thread's pools to the scope's budget, and the process's pools."""
    budget = scope.budget()
    scope.unbind_regions()
    scope.thread_pools_at = budget if native_pools.set_thread_budget(budget) else None
    if scope._lease is not None and REGION_HOOKS:
        # A lease's budget moves mid-task: the thread's GNU OpenMP regions
        # follow it, those of a runtime loaded later in the task included.
        scope.bind_regions(budget)
    _apply_process_budget()


def _apply_process_budget(state=None):
    """Per-process pools get the smallest budget of the tasks running in the process."""
    if not native_pools.has_process_pools():
        return  # nothing is set per process here (the common case without OpenBLAS pthreads)
    state = state or _process
    with state.lock:
        budgets = [scope.budget() for scope in state.running]
    if budgets:
        native_pools.set_process_budget(min(budgets))
    elif state is _process and _thread.scope is not None:
        native_pools.set_process_budget(_thread.scope.budget())


def _start_running(scope):
    state = _process
    with state.lock:
        state.running[scope] = None
    # A lease the policy may change wakes the follower, unless the only pools
    # loaded are per thread: leases are then followed at task starts only, and
    # the follower would find nothing to do (_follow_once). Not starting it
    # spares a pool worker's first task a thread start (a wait for the new
    # thread to run, a scheduler tick on a busy machine).
    if scope.follows() and native_pools.follows_mid_task():
        interest = scope.follow_interest()
        if interest:
            wake_follower(interest)


def _stop_running(scope, restore=True):
    """`scope` stops counting. The last scope of a process puts the per-process
    pools back to the program's values, under the lock so that a scope starting
    meanwhile applies after it. Not in a pool worker (it runs no code of its own
    between tasks, and each set restarts a forked OpenBLAS's helper threads),
    nor for a scope that only waits (its budget is applied at once after)."""
    state = _process
    with state.lock:
        state.running.pop(scope, None)
        if restore and not state.running and not state.pool_worker and native_pools.has_process_pools():
            native_pools.restore_process()  # no task runs: the program's own values


def wake_follower(interest=None):
    """Starts (or wakes) the process's follower: there are leases to follow.
    ``interest``: what the lease that asks may gain (Lease.follow_interest);
    a follower already waiting in the segment for those events is left
    asleep. None: wake it whatever it waits for (pools to set again)."""
    state = _process
    waiting = state.waiting_on
    if interest is not None and waiting is not None and waiting[1] & interest == interest:
        return  # asleep for these events already: the common case, without a lock
    with state.lock:
        state.poked = True  # a follower between its refresh and its wait goes round again
        state.wake.set()
        if state.follower is None:
            # Not threading.Thread.start(), which waits until the new thread
            # runs: on a busy machine that is a scheduler tick at a pool
            # worker's first task (measured 2 ms with 4 workers on 2 cores).
            state.follower = threading.Event()  # set when the follower returns
            start_new_thread(_follow_loop, (state,))
        waiting = state.waiting_on
    if waiting is not None:
        waiting[0]._wake_follower()


def _follow_loop(state):
    """Refreshes the leases when the policy may give or take (the arbiter's
    followers: arbiter.cpp); sleeps while there is nothing to follow."""
    current = threading.current_thread()  # registers it with threading, as a daemon thread
    current.name = "composepar-follower"
    state.follower_ident = current.ident
    try:
        _follow(state)
    finally:
        state.follower.set()


def _follow(state):
    warned = False
    while state is _process and not state.stopped.is_set():  # a fork child gets a new state and its own follower
        state.wake.wait()
        if state.stopped.is_set():
            return
        try:
            waiting = _follow_once(state)
            if waiting is not None:
                _wait_for_policy(state, *waiting)
        except Exception as error:  # noqa: BLE001 - keep following; say so once
            if not warned:
                warnings.warn(f"composepar: the budget follower failed ({type(error).__name__}: {error}); "
                              f"budgets follow at task starts until it recovers", RuntimeWarning, stacklevel=1)
                warned = True
            state.stopped.wait(FOLLOW_TIMEOUT_SECONDS)  # not a busy loop on a lasting fault


def _follow_once(state):
    """One round: refreshes the leases that follow and sets the per-process
    pools. Returns what to wait for next, (arbiter, seen, interest, timeout),
    or None when there is no lease to follow (the follower then sleeps until
    wake_follower)."""
    # Per-process pools follow the leases whatever else is loaded. Per-thread
    # pools can only be set by their own thread: they follow at task starts,
    # so a process whose only pools are per thread gives the follower no
    # lease to follow (its tokens would go unused).
    follow_leases = native_pools.follows_mid_task()
    with state.lock:
        scopes = [scope for scope in state.running if scope.follows()] if follow_leases else []
        reapply, state.reapply = state.reapply, False
        state.poked = False
        if not scopes:
            state.wake.clear()  # nothing to follow until the next lease: sleep
    if not scopes:
        if reapply:
            _apply_process_budget(state)
        return None
    arbiters = {id(arbiter): arbiter for arbiter in (get_arbiter(scope._domain) for scope in scopes)}
    arbiter = next(iter(arbiters.values()))
    seen = arbiter._policy_seq()  # before the refreshes: an event after them is not missed
    for scope in scopes:
        scope.refresh()
    _apply_process_budget(state)
    interest = 0
    for scope in scopes:
        interest |= scope.follow_interest()
    # Leases in two budgets at once (rare): one wait cannot hear both, so poll.
    timeout = FOLLOW_TIMEOUT_SECONDS if len(arbiters) == 1 else POLL_SECONDS
    return arbiter, seen, interest, timeout


def _wait_for_policy(state, arbiter, seen, interest, timeout):
    with state.lock:
        if state.poked or state.stopped.is_set():
            return  # woken since the round began: go round again
        state.waiting_on = (arbiter, interest)
    try:
        arbiter._wait_policy(seen, interest, timeout)
    finally:
        with state.lock:
            state.waiting_on = None


@atexit.register
def _stop_follower():
    """Closes the main thread's lease (its tokens back now, not when a later
    call reaps this process) and stops the follower before the interpreter
    finalizes: a daemon thread in the middle of a native call when the
    runtime goes away can abort the process."""
    try:
        exit_main_thread()
    except Exception:  # noqa: BLE001 - at exit: the slot goes with the process anyway
        pass
    state = _process
    with state.lock:
        state.stopped.set()
        follower, waiting = state.follower, state.waiting_on
    state.wake.set()
    if waiting is not None:
        waiting[0]._wake_follower()
    if follower is not None and state.follower_ident != threading.get_ident():
        follower.wait(timeout=1.0)


def suspend_current():
    """The calling thread submits to a pool: it is about to wait for results,
    so it gives its tokens back now, before the tasks start, and keeps one
    thread (its own) for native calls until its next wait ends (idle)."""
    scope = _thread.scope
    if scope is not None and (scope._lease is not None or scope._explicit):
        scope.suspend()
        native_pools.set_thread_budget(1)


class idle:
    """Context manager: the calling thread waits, so its lease is given back for the wait."""

    __slots__ = ("_scope",)

    def __enter__(self):
        # Only the outermost wait of a thread gives the tokens back and takes
        # them again: a wait inside a wait (a Future's wait inside a pool's
        # join) must not take them back while the outer one still waits.
        _thread.waits += 1
        scope = _thread.scope if _thread.waits == 1 else None
        self._scope = scope
        if scope is not None:
            try:
                scope.suspend()
            except BaseException:
                _thread.waits -= 1
                raise
        return self

    def __exit__(self, exc_type, exc, traceback):
        _thread.waits -= 1
        if self._scope is None or _thread.scope is not self._scope:
            return
        if exc_type is None:
            self._scope.resume()
            return
        try:
            self._scope.resume()
        except Exception:  # noqa: BLE001 - the wait's own exception is the one to see
            pass


class Task:
    """A picklable callable that runs ``func`` inside a TaskScope (what pools submit)."""

    __slots__ = ("func", "threads", "static_threads", "owner_pid", "domain")

    def __init__(self, func, threads=None, static_threads=None, owner_pid=0, domain=None):
        self.func = func
        self.threads = threads  # explicit per-task request (drop-in pools' threads=)
        self.static_threads = static_threads  # --static budget
        self.owner_pid = owner_pid  # the submitting process: its pool demand counts this task
        # The submitter's budget: a worker joins it whatever its own
        # environment says (a forkserver keeps the environment it started with).
        self.domain = domain

    @classmethod
    def wrap(cls, func, threads=None, static_threads=None, domain=None):
        if isinstance(func, cls):
            return func
        return cls(func, threads, static_threads, os.getpid(), domain)

    def __call__(self, *args, **kwargs):
        scope = TaskScope(threads=self.threads, static_threads=self.static_threads, owner_pid=self.owner_pid,
                          domain=self.domain, native_only=True)
        try:
            with scope:
                return self.func(*args, **kwargs)
        except BaseException as error:
            # The task's traceback reads as without composepar (a worker's
            # Ctrl-C print, a pool's RemoteTraceback): drop this frame's
            # entry. A bare raise adds no entry for it again. (Python 3.11+:
            # before, a bare raise re-raises the traceback it caught.)
            traceback = error.__traceback__
            if traceback is not None and traceback.tb_frame.f_code is Task.__call__.__code__:
                error.__traceback__ = traceback.tb_next
            raise

    def __reduce__(self):
        return (Task, (self.func, self.threads, self.static_threads, self.owner_pid, self.domain))

    def __repr__(self):
        return f"composepar.Task({self.func!r})"


_main_scope = None  # the scope enter_main_thread() opened in this process, until exit_main_thread()


def enter_main_thread():
    """Opens the main thread's scope for the program's life: native calls
    made outside pools get the main thread's lease. Idempotent. Closed by
    exit_main_thread(), at the latest at interpreter exit: a process that
    ends with its lease open counts as a claimant until someone reaps it."""
    global _main_scope
    if _thread.scope is None:
        scope = TaskScope(native_only=True)
        scope.__enter__()
        _main_scope = scope


_main_pending = False  # enter_main_thread_with_pools() waits for a native pool to load in this process


def enter_main_thread_with_pools():
    """For a Python process of the launched tree other than the launcher (a
    multiprocessing child, a subprocess): its main thread holds a lease once
    a native pool is loaded here, at once if one is. A process that never
    loads one (a server, a helper that sleeps or waits) takes no token and
    caps no one's share. Call in the main thread."""
    global _main_pending
    if native_pools.has_pool_candidates():
        enter_main_thread()
    else:
        _main_pending = True


def main_thread_pools_maybe_loaded():
    """Called at each import (the hooks' finder): an import is how a Python
    process loads a native pool. Opens the pending main-thread lease once a
    pool is loaded, in the main thread. ~1 us otherwise."""
    global _main_pending
    if _main_pending and threading.get_ident() == threading.main_thread().ident \
            and native_pools.has_pool_candidates():
        _main_pending = False  # first: the scope's own imports come back here
        enter_main_thread()


def exit_main_thread():
    """Closes the scope enter_main_thread() opened, if the calling thread still
    has it open (a fork child's is not its own: reset at the fork)."""
    global _main_scope
    scope, _main_scope = _main_scope, None
    if scope is not None and _thread.scope is scope:
        scope.__exit__(None, None, None)
