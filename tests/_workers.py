"""Functions run in child processes by the tests (importable under spawn and forkserver)."""

import os
import random
import time

import composepar
from composepar import _task


def hold_explicit_then_wait(domain, n, ready, done):
    """Acquires n tokens, reports, and holds them until told (or killed)."""
    arbiter = composepar.Arbiter(domain)
    arbiter.acquire(n, min_tokens=n, timeout=30)
    ready.set()
    done.wait(60)
    arbiter.release(n)


def hold_lease_then_wait(domain, extra, ready, done):
    arbiter = composepar.Arbiter(domain)
    with arbiter.lease(extra) as lease:
        ready.put(lease.threads)
        done.wait(60)


def child_view(domain, queue):
    """What a fresh child sees: its explicit holding and the segment's free tokens."""
    arbiter = composepar.Arbiter(domain)
    try:
        arbiter.release(1)
        released = "released"
    except ValueError as error:
        released = str(error)
    got = arbiter.acquire(1, timeout=30)
    stats = arbiter.stats()
    queue.put((os.getpid(), arbiter.tokens_held, got, released, stats.process(os.getpid()).tokens_held))
    arbiter.release(got)


class Ledger:
    """What the hammering workers hold, counted so it never exceeds the truth.

    A worker adds a grant only after it has it and subtracts before it gives
    tokens back, under `lock`; so `outstanding` <= tokens really held <=
    capacity, and any excess is recorded in `violation`. The test kills a
    worker only while holding `lock`, then subtracts its entry.
    """

    def __init__(self, context, workers):
        self.lock = context.Lock()
        self.by_worker = context.Array("i", workers, lock=False)
        self.outstanding = context.Value("i", 0, lock=False)
        self.violation = context.Value("i", 0, lock=False)

    def add(self, index, n, capacity):
        with self.lock:
            self.by_worker[index] += n
            self.outstanding.value += n
            if self.outstanding.value > capacity:
                self.violation.value = self.outstanding.value

    def remove(self, index, n):
        with self.lock:
            self.by_worker[index] -= n
            self.outstanding.value -= n

    def forget_killed(self, index):
        """Call with `lock` held, right after SIGKILL."""
        self.outstanding.value -= self.by_worker[index]
        self.by_worker[index] = 0


def hammer(domain, index, seconds, ledger, seed):
    """Random acquire, release and lease traffic, recorded in the ledger."""
    rng = random.Random(seed)
    arbiter = composepar.Arbiter(domain)
    capacity = arbiter.capacity
    deadline = time.monotonic() + seconds
    held = 0
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.35:
            want = rng.randint(1, capacity)
            try:
                got = arbiter.acquire_nowait(want, min_tokens=rng.randint(1, want))
            except composepar.WouldBlock:
                continue
            held += got
            ledger.add(index, got, capacity)
        elif roll < 0.55:
            try:
                got = arbiter.acquire(rng.randint(1, capacity), min_tokens=1, timeout=0.02)
            except TimeoutError:
                continue
            held += got
            ledger.add(index, got, capacity)
        elif roll < 0.8 and held:
            n = rng.randint(1, held)
            held -= n
            ledger.remove(index, n)
            arbiter.release(n)
        else:
            with arbiter.lease(rng.randint(0, capacity)) as lease:
                counted = int(lease.own_token) + lease.tokens_extra
                ledger.add(index, counted, capacity)
                ledger.remove(index, lease.tokens_extra)  # refresh may give extras back
                counted -= lease.tokens_extra
                lease.refresh(rng.randint(0, capacity))
                ledger.add(index, int(lease.own_token) + lease.tokens_extra - counted, capacity)
                counted = int(lease.own_token) + lease.tokens_extra
                time.sleep(rng.random() * 0.002)
                ledger.remove(index, counted)
    ledger.remove(index, held)
    arbiter.release(held)


def greedy_lease(domain, extra, commands, answers):
    """Opens a lease and refreshes it when told; answers with its threads."""
    arbiter = composepar.Arbiter(domain)
    lease = arbiter.lease(extra)
    answers.put(("open", lease.own_token, lease.threads))
    while True:
        command = commands.get(timeout=60)
        if command == "refresh":
            threads = lease.refresh()
            answers.put(("refresh", lease.own_token, threads))
        elif command == "close":
            lease.close()
            answers.put(("closed", False, 0))
            return


def attach_and_block(domain, ready_fd, release_fd):
    """For the scale test: attach with a lease, say so, block until the pipe closes."""
    arbiter = composepar.Arbiter(domain)
    lease = arbiter.lease(0)
    os.write(ready_fd, b"x")
    os.read(release_fd, 1)
    lease.close()


# --- native-library tasks (test_native_libs.py) ----------------------------

_native = {}  # this worker's: "budget" and "team" callables, the ledger, the capacity


def init_native_worker(domain, ledger, capacity, kind, path):
    """Pool initializer: join the test's domain and load the library before any task."""
    os.environ["COMPOSEPAR_DOMAIN"] = domain
    _native.update(ledger=ledger, capacity=capacity)
    if kind == "openmp":
        import ctypes

        library = ctypes.CDLL(path)
        _native.update(budget=library.omp_budget, team=lambda spin: library.omp_team(ctypes.c_long(spin)))
    elif kind == "tbb":
        import ctypes

        library = ctypes.CDLL(path)
        _native.update(budget=library.tbb_budget, team=lambda spin: library.tbb_team(ctypes.c_long(spin)))
    elif kind == "mkl":
        import ctypes

        library = ctypes.CDLL(path)
        _native.update(budget=library.MKL_Get_Max_Threads, team=lambda spin: library.MKL_Get_Max_Threads())
    elif kind == "openblas":
        import numpy
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController().select(internal_api="openblas")
        matrix = numpy.random.default_rng(0).random((300, 300))

        def openblas_budget():
            return min(lib.num_threads for lib in controller.lib_controllers)

        def openblas_team(spin):
            team = openblas_budget()
            for _ in range(max(1, spin // 2_000_000)):
                matrix @ matrix  # a real BLAS call with the budget in force
            return team  # (the refresher may grow it mid-task once siblings finish)

        _native.update(budget=openblas_budget, team=openblas_team)
    else:
        raise ValueError(kind)


def native_task(spin):
    """Records this task's native threads in the ledger while its kernel runs."""
    ledger, capacity = _native["ledger"], _native["capacity"]
    budget = _native["budget"]()
    ledger.add(0, budget, capacity)
    try:
        team = _native["team"](spin)
    finally:
        ledger.remove(0, budget)
    return os.getpid(), budget, team


# --- drop-in pool tasks (test_pools.py) -------------------------------------

def square(x):
    return x * x


def add(a, b):
    return a + b


def fail(x):
    raise KeyError(f"task {x} failed")


def budget_now(_=None):
    """The calling task's thread budget and the pid running it."""
    from composepar import _task

    return os.getpid(), _task.current_budget()


def kill_self(_=None):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def sleep_then(x, seconds=0.2):
    time.sleep(seconds)
    return x


_initialized = []


def remember_init(value):
    _initialized.append(value)


def initialized(_=None):
    return list(_initialized)


def thread_pool_native_check(domain, kind, path, capacity, spin, answers):
    """A composepar.ThreadPool of 2 running native tasks, in this (spawned) process."""
    import multiprocessing

    os.environ["COMPOSEPAR_DOMAIN"] = domain
    ledger = Ledger(multiprocessing.get_context("spawn"), 1)
    init_native_worker(domain, ledger, capacity, kind, path)
    with composepar.ThreadPool(2) as pool:
        results = pool.map(native_task, [spin] * 8, chunksize=1)
        _, lone_budget, _ = pool.apply(native_task, (spin,))
    answers.put((ledger.violation.value, results, lone_budget))


_scopes_seen = []  # every task scope an item ran in, kept alive so that their ids stay distinct


def scope_of_item(_=None):
    """(pid, id) of the task scope this item runs in (None outside any)."""
    scope = _task.current_scope()
    if scope is not None:
        _scopes_seen.append(scope)
    return None if scope is None else (os.getpid(), id(scope))
