"""Crash safety with real SIGKILL: no token is ever lost, never more than capacity out."""

import ctypes
import mmap
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import _workers
from composepar import Arbiter, WouldBlock
from conftest import START_METHODS, wait_until

HEADER_BYTES, SLOT_BYTES = 192, 128
MUTEX_OFFSET, TOKENS_FREE_OFFSET = 40, 132


def _slot_offset_of(path, pid):
    with open(path, "rb") as f:
        data = f.read()
    for offset in range(HEADER_BYTES, len(data), SLOT_BYTES):
        if int.from_bytes(data[offset:offset + 4], "little", signed=True) == pid:
            return offset
    raise AssertionError(f"pid {pid} has no slot in {path}")


def _process_state(pid):
    """'Z' once every thread has exited (files closed), None once reaped, else the state."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z" and len(os.listdir(f"/proc/{pid}/task")) > 1:
            return "exiting"  # the leader is a zombie but other threads still hold the files
        return state
    except (FileNotFoundError, ProcessLookupError):  # reaped before the open, or between open and read (ESRCH)
        return None


def _wait_until(condition, what, seconds=120):
    wait_until(condition, what, seconds)


def _start_time(pid):
    """Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _ticks_now():
    """The same clock as the start times (boot time, in clock ticks)."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _start_holder(domain, method, how, n):
    context = multiprocessing.get_context(method)
    ready, done = context.Event(), context.Event()
    if how == "explicit":
        proc = context.Process(target=_workers.hold_explicit_then_wait, args=(domain, n, ready, done))
        proc.start()
        assert ready.wait(60)
    else:
        queue = context.Queue()
        proc = context.Process(target=_workers.hold_lease_then_wait, args=(domain, n - 1, queue, done))
        proc.start()
        assert queue.get(timeout=60) == n
    return proc


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("how", ["explicit", "lease"])
@pytest.mark.parametrize("waited_for", [False, True], ids=["zombie", "reaped"])
def test_killed_holder_tokens_return_at_next_short_acquisition(domain, method, how, waited_for):
    arbiter = Arbiter(domain, capacity=3)
    holder = _start_holder(domain, method, how, 3)
    assert arbiter.stats().tokens_free == 0
    os.kill(holder.pid, signal.SIGKILL)
    if waited_for:
        holder.join(60)
    else:  # a zombie: dead, though its pid exists until the parent waits (forkserver reaps its own children)
        _wait_until(lambda: _process_state(holder.pid) in ("Z", None), f"holder {holder.pid} to die")
    assert arbiter.acquire_nowait(3, min_tokens=3) == 3  # the shortage triggered the reaping
    stats = arbiter.stats()
    assert stats.tokens_reclaimed == 3 and stats.processes_reaped == 1
    assert stats.process(holder.pid) is None
    arbiter.release(3)
    holder.join(60)
    assert arbiter.invariant_violations() == ""


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("waited_for", [False, True], ids=["zombie", "reaped"])
def test_a_killed_lease_holders_tokens_reach_a_survivor_that_only_refreshes(domain, method, waited_for):
    """The survivor holds its own token and wants 2 more; the killed holder
    held the other 2 and counted as a claimant. No request is ever short of
    its own token, so nothing reaped it before: the survivor's lease must
    grow to the whole capacity by refreshing alone, with no stats() or
    reap() call (each reaps), within the sweep period."""
    arbiter = Arbiter(domain, capacity=3)
    holder = _start_holder(domain, method, "lease", 2)  # its lease: its own token and 1 extra
    mine = arbiter.lease(2)
    assert mine.threads == 1  # the last free token: its own
    os.kill(holder.pid, signal.SIGKILL)
    if waited_for:
        holder.join(60)
    else:
        _wait_until(lambda: _process_state(holder.pid) in ("Z", None), f"holder {holder.pid} to die")
    _wait_until(lambda: mine.refresh(2) == 3, "the survivor's lease to get the dead claimant's tokens")
    mine.close()
    holder.join(60)
    stats = arbiter.stats()
    assert stats.processes_reaped == 1 and stats.tokens_free == 3
    assert arbiter.invariant_violations() == ""


def test_waiters_get_the_tokens_of_a_holder_killed_while_they_wait(domain):
    arbiter = Arbiter(domain, capacity=2)
    holder = _start_holder(domain, "fork", "explicit", 2)
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def wait_in_child():
        results.put(Arbiter(domain).acquire(1, timeout=60))

    other_waiter = context.Process(target=wait_in_child)
    other_waiter.start()
    got = []
    thread = threading.Thread(target=lambda: got.append(arbiter.acquire(1, timeout=60)))
    thread.start()
    _wait_until(lambda: sum(p.waiters for p in arbiter.stats().processes) == 2, "both waiters to block")
    os.kill(holder.pid, signal.SIGKILL)  # nobody releases: the waiters must reap on their own
    thread.join(60)
    assert got == [1]
    assert results.get(timeout=60) == 1
    other_waiter.join(60)
    holder.join(60)
    arbiter.release(1)
    assert arbiter.stats().tokens_free == 2
    assert arbiter.invariant_violations() == ""


def test_a_reused_pid_never_makes_a_dead_holder_look_alive(domain):
    arbiter = Arbiter(domain, capacity=2)
    holder = _start_holder(domain, "fork", "explicit", 2)
    offset = _slot_offset_of(arbiter.path, holder.pid)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(60)
    # The kernel hands the dead holder's pid to another process: make it so
    # by writing the pid of a live process into the dead slot. A reused pid
    # belongs to a process started after the holder died; start times count
    # clock ticks (10 ms), so the impostor must start in a later tick: wait
    # for the tick to change (state, not a sleep of a guessed length).
    with open(arbiter.path, "rb") as f:
        f.seek(offset + 8)
        dead_start_time = int.from_bytes(f.read(8), "little")
    _wait_until(lambda: _ticks_now() > dead_start_time, "the clock to tick past the holder's start")
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert _start_time(impostor.pid) != dead_start_time
    try:
        with open(arbiter.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as segment:
            segment[offset:offset + 4] = impostor.pid.to_bytes(4, "little", signed=True)
        assert arbiter.acquire_nowait(2, min_tokens=2) == 2  # start time differs: reaped
        assert arbiter.stats().tokens_reclaimed == 2
    finally:
        impostor.kill()
        impostor.wait()
    arbiter.release(2)
    assert arbiter.invariant_violations() == ""


def test_a_process_dying_inside_the_lock_is_repaired(domain):
    arbiter = Arbiter(domain, capacity=4)
    arbiter.acquire(1)
    pid = os.fork()
    if pid == 0:  # child: take the robust mutex, scribble on a cached total, die
        with open(arbiter.path, "r+b") as f:
            segment = mmap.mmap(f.fileno(), 0)
        buffer = (ctypes.c_char * len(segment)).from_buffer(segment)
        libc = ctypes.CDLL(None)
        libc.pthread_mutex_lock(ctypes.byref(buffer, MUTEX_OFFSET))
        segment[TOKENS_FREE_OFFSET:TOKENS_FREE_OFFSET + 4] = (0).to_bytes(4, "little")
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    # The next locker gets EOWNERDEAD and recomputes the totals from the slots.
    assert arbiter.acquire_nowait(3, min_tokens=3) == 3
    assert arbiter.invariant_violations() == ""
    arbiter.release(4)
    assert arbiter.stats().tokens_free == 4


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_hammer_with_random_sigkills_never_overgrants_or_loses_tokens(domain, method):
    capacity, workers, seconds = 4, 8, 4.0
    arbiter = Arbiter(domain, capacity=capacity)
    context = multiprocessing.get_context(method)
    rng = random.Random(1234)
    ledger = _workers.Ledger(context, workers + 64)
    running = {}

    def start(index):
        proc = context.Process(target=_workers.hammer, args=(domain, index, seconds, ledger, rng.random()))
        proc.start()
        running[index] = proc

    for index in range(workers):
        start(index)
    # Sample and kill until enough of both happened, however slowly this
    # process is scheduled: a loaded machine stretches the loop, never fails it.
    min_kills, min_samples = 3, 100
    next_index, kills, samples = workers, 0, 0
    deadline = time.monotonic() + seconds - 1.0
    while time.monotonic() < deadline or kills < min_kills or samples < min_samples:
        stats = arbiter.stats()
        assert sum(p.tokens_held for p in stats.processes) <= capacity
        assert stats.tokens_free + sum(p.tokens_held for p in stats.processes) == capacity
        assert arbiter.invariant_violations() == ""
        samples += 1
        if rng.random() < 0.05:
            assert next_index < workers + 64, f"only {kills} of {next_index - workers} kills hit a running worker"
            victim = rng.choice(list(running))
            proc = running.pop(victim)
            with ledger.lock:  # the victim cannot be half-way through a ledger update
                if proc.exitcode is None:  # a worker whose `seconds` ran out may have exited already
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:  # exited since, and reaped by the forkserver
                        pass
                ledger.forget_killed(victim)  # 0 already for a worker that exited on its own
            proc.join(60)
            kills += proc.exitcode == -signal.SIGKILL  # only a kill that landed counts
            start(next_index)
            next_index += 1
        time.sleep(0.01)
    for proc in running.values():
        proc.join(300)
        assert proc.exitcode == 0
    assert ledger.violation.value == 0, f"{ledger.violation.value} tokens out with capacity {capacity}"
    arbiter.reap()
    stats = arbiter.stats()
    assert stats.tokens_free == capacity, stats  # every token back, the killed ones' included
    assert all(p.tokens_held == 0 for p in stats.processes)
    assert arbiter.invariant_violations() == ""


SCALE_SCRIPT = r"""
import os, signal, sys
import composepar
domain, count = sys.argv[1], int(sys.argv[2])
arbiter = composepar.Arbiter(domain, capacity=4)
ready_r, ready_w = os.pipe()
release_r, release_w = os.pipe()
children = []
for i in range(count):
    pid = os.fork()
    if pid == 0:
        os.close(release_w)
        try:
            lease = composepar.Arbiter(domain).lease(0)
            os.write(ready_w, b"x")
            os.read(release_r, 1)
            lease.close()
        finally:
            os._exit(0)
    children.append(pid)
os.close(release_r)
got = 0
while got < count:
    got += len(os.read(ready_r, 4096))
stats = arbiter.stats()
print("attached", len(stats.processes), "overdrawn", stats.leases_overdrawn, "free", stats.tokens_free)
assert arbiter.invariant_violations() == ""
for pid in children[::2]:
    os.kill(pid, signal.SIGKILL)
os.close(release_w)  # the others close their lease and exit
for pid in children:
    os.waitpid(pid, 0)
arbiter.reap()
stats = arbiter.stats()
print("after", len(stats.processes), "free", stats.tokens_free, "reaped", stats.processes_reaped)
assert arbiter.invariant_violations() == ""
"""


def test_more_than_1024_processes_attach_and_dead_slots_are_recycled(domain):
    count = 1100
    for round_ in range(2):  # the second round runs in the slots the first one left
        result = subprocess.run([sys.executable, "-c", SCALE_SCRIPT, domain, str(count)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        attached, after = result.stdout.splitlines()
        assert attached == f"attached {count} overdrawn {count - 4} free 0"
        assert after.startswith("after 0 free 4 reaped ")
    with open(Arbiter(domain).path, "rb") as f:
        f.seek(148)
        slots_used = int.from_bytes(f.read(4), "little")
    assert count <= slots_used <= count + 2  # recycled, not grown
