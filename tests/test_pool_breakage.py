"""A composepar.Pool whose worker dies: every pending result fails with BrokenPoolError, and leaving returns.

Real processes and real SIGKILL. The tests wait on state with deadlines (a
worker announces its pid on a queue when its task starts; `get(timeout=30)`),
never on time: the machine may be loaded.
"""

import concurrent.futures
import fcntl
import functools
import multiprocessing
import os
import signal
import struct
import sys
import termios
import threading
import time

import pytest

import _workers
import composepar
from conftest import START_METHODS
from conftest import wait_until as wait_until_within

DEADLINE = 30  # seconds; only ever reached when something hangs

_announcements = None  # in a worker: the test's queue, set by the pool's initializer


def _announce_to(queue):
    global _announcements
    _announcements = queue


def _announce_then_sleep(x, seconds=60.0):
    """Puts this worker's pid on the test's queue, then works (sleeps): the test kills the pid it reads."""
    _announcements.put(os.getpid())
    time.sleep(seconds)
    return x


def _announce_then_return(size):
    """Puts this worker's pid on the test's queue, then returns `size` bytes."""
    _announcements.put(os.getpid())
    return b"x" * size


@pytest.fixture
def budget(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    return composepar.Arbiter(domain, capacity=4)


def announcing_pool(method, **kwargs):
    """(pool of 2 workers whose tasks can announce themselves, the queue they announce on)."""
    context = multiprocessing.get_context(method)
    announcements = context.Queue()
    pool = composepar.Pool(2, initializer=_announce_to, initargs=(announcements,), context=context, **kwargs)
    return pool, announcements


def wait_until(condition, what):
    return wait_until_within(condition, what, DEADLINE)


def read_lock_held(pool):
    """Whether a worker holds the task queue's read lock (an idle worker waits for a task holding it)."""
    return pool._inqueue._rlock._semlock._get_value() == 0


def bytes_waiting(connection):
    """How many bytes the pipe behind `connection` holds, unread."""
    return struct.unpack("i", fcntl.ioctl(connection.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def outcome_in_thread(call, *args):
    """Runs call(*args) in a thread; returns a function that joins it and returns what it raised or returned."""
    outcome = []

    def run():
        try:
            outcome.append(call(*args))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join():
        thread.join(DEADLINE)
        assert not thread.is_alive(), f"{call.__name__} still blocked after {DEADLINE} s"
        return outcome[0]

    return join


def leave(pool, how):
    """Leaves `pool` as a `with` block, terminate() or close() and join() would; fails if that hangs."""

    def leaving():
        if how == "with":
            pool.__exit__(None, None, None)
        elif how == "terminate":
            pool.terminate()
        else:
            pool.close()
            pool.join()

    assert outcome_in_thread(leaving)() is None


@pytest.mark.parametrize("method", START_METHODS)
def test_every_pending_result_fails_when_a_busy_worker_is_killed(budget, method):
    errors = []
    p, announcements = announcing_pool(method)
    with p:
        mapped = outcome_in_thread(p.map, _announce_then_sleep, range(3))  # a plain map, blocking its thread
        busy = announcements.get(timeout=DEADLINE)  # running the map's first chunk
        pending = [
            p.map_async(_announce_then_sleep, range(4), chunksize=1, error_callback=errors.append),
            p.apply_async(_announce_then_sleep, (9,), error_callback=errors.append),
            p.starmap_async(_announce_then_sleep, [(1, 60.0), (2, 60.0)], error_callback=errors.append),
        ]
        iterators = [p.imap(_announce_then_sleep, range(3)), p.imap_unordered(_announce_then_sleep, range(3))]
        os.kill(busy, signal.SIGKILL)
        for result in pending:
            with pytest.raises(composepar.BrokenPoolError, match=f"pid {busy}.* was killed by SIGKILL"):
                result.get(DEADLINE)
        for iterator in iterators:
            with pytest.raises(composepar.BrokenPoolError):
                iterator.next(DEADLINE)
            with pytest.raises(composepar.BrokenPoolError):  # and at every next() after
                iterator.next(DEADLINE)
        assert isinstance(mapped(), composepar.BrokenPoolError)
        with pytest.raises(composepar.BrokenPoolError):
            p.apply_async(_workers.square, (2,))
        assert p._cache == {}
    assert len(errors) == 3 and all(isinstance(error, composepar.BrokenPoolError) for error in errors)
    assert issubclass(composepar.BrokenPoolError, concurrent.futures.process.BrokenProcessPool)
    budget.reap()
    assert budget.stats().tokens_free == 4  # the killed worker's lease came back


@pytest.mark.parametrize("method", START_METHODS)
def test_a_map_fails_as_a_whole_while_its_other_chunks_complete(budget, method):
    # The case: chunks of 0.2 s, one worker killed; the survivor
    # finishes chunks after the death, yet the map fails (it used to wait
    # for the lost chunk forever).
    p, announcements = announcing_pool(method)
    with p:
        result = p.map_async(functools.partial(_announce_then_sleep, seconds=0.2), range(40), chunksize=1)
        os.kill(announcements.get(timeout=DEADLINE), signal.SIGKILL)
        with pytest.raises(composepar.BrokenPoolError, match="was killed by SIGKILL"):
            result.get(DEADLINE)


@pytest.mark.parametrize("method", START_METHODS)
def test_a_killed_idle_worker_breaks_the_pool(budget, method):
    p, announcements = announcing_pool(method)
    busy = p.apply_async(_announce_then_sleep, (1,))
    busy_pid = announcements.get(timeout=DEADLINE)
    idle = next(worker for worker in p._pool if worker.pid != busy_pid)
    wait_until(lambda: read_lock_held(p), "the idle worker to wait for a task")
    os.kill(idle.pid, signal.SIGKILL)  # it dies holding the task queue's read lock, never to release it
    with pytest.raises(composepar.BrokenPoolError, match=f"pid {idle.pid}.* was killed by SIGKILL"):
        busy.get(DEADLINE)
    leave(p, "with")


@pytest.mark.parametrize("how", ["with", "terminate", "close and join"])
def test_leaving_returns_after_every_idle_worker_was_killed(budget, how):
    p = composepar.Pool(2, context=multiprocessing.get_context("fork"))
    assert p.map(_workers.square, range(4)) == [0, 1, 4, 9]
    wait_until(lambda: read_lock_held(p), "a worker to wait for a task")
    for worker in list(p._pool):  # one of them holds the task queue's read lock
        os.kill(worker.pid, signal.SIGKILL)
    leave(p, how)  # whether or not the pool noticed the deaths first
    with pytest.raises((composepar.BrokenPoolError, ValueError)):
        p.apply_async(_workers.square, (2,))


def test_leaving_returns_when_a_worker_died_writing_a_result(budget):
    # The rest of the result never comes: the result handler must not wait for it.
    p, announcements = announcing_pool("fork")
    in_callback, go_on = threading.Event(), threading.Event()

    def hold_the_result_handler(_):
        in_callback.set()
        go_on.wait(DEADLINE)

    p.apply_async(_workers.square, (1,), callback=hold_the_result_handler)
    assert in_callback.wait(DEADLINE)  # nothing reads the result queue from now on
    big = p.apply_async(_announce_then_return, (8 << 20,))
    writer = announcements.get(timeout=DEADLINE)
    wait_until(lambda: bytes_waiting(p._outqueue._reader) > 4096, "the worker to write its result")
    os.kill(writer, signal.SIGKILL)  # the pipe is full: it dies in the middle of the message
    with pytest.raises(composepar.BrokenPoolError, match=f"pid {writer}.* was killed by SIGKILL"):
        big.get(DEADLINE)
    go_on.set()  # the result handler goes back to reading: the message it gets is cut short
    leave(p, "with")


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("exit_call, code", [(os._exit, 0), (sys.exit, 0), (sys.exit, 3)])
def test_a_task_that_exits_is_a_dead_worker(budget, method, exit_call, code):
    with composepar.Pool(2, context=multiprocessing.get_context(method)) as p:
        others = p.apply_async(_workers.sleep_then, (1, 60.0))  # one worker works on it
        exiting = p.apply_async(exit_call, (code,))  # the other runs this
        with pytest.raises(composepar.BrokenPoolError, match=f"exited with code {code} before it finished"):
            exiting.get(DEADLINE)
        with pytest.raises(composepar.BrokenPoolError):
            others.get(DEADLINE)


def test_a_failing_initializer_breaks_the_pool_instead_of_restarting_workers(budget):
    # (the stdlib starts a new worker after each failed one, forever)
    p = composepar.Pool(2, initializer=sys.exit, initargs=(2,), context=multiprocessing.get_context("fork"))
    with pytest.raises(composepar.BrokenPoolError, match="exited with code 2"):
        p.apply_async(_workers.square, (3,)).get(DEADLINE)  # raised by apply_async once the pool knows
    leave(p, "with")


@pytest.mark.parametrize("method", START_METHODS)
def test_a_killed_worker_breaks_the_pool_instead_of_hanging(budget, method):
    with composepar.Pool(2, context=multiprocessing.get_context(method)) as p:
        killer = p.apply_async(_workers.kill_self)
        pending = p.apply_async(_workers.sleep_then, (1, 2.0))  # the surviving worker may be busy with it
        lines = p.imap(_workers.sleep_then, [1, 2, 3])  # queued behind it
        with pytest.raises(composepar.BrokenPoolError, match=r"was killed by SIGKILL"):
            killer.get(DEADLINE)
        with pytest.raises(composepar.BrokenPoolError):
            pending.get(DEADLINE)
        with pytest.raises(composepar.BrokenPoolError):
            list(lines)
        with pytest.raises(composepar.BrokenPoolError):
            p.apply_async(_workers.square, (2,))


def test_a_normal_exit_of_workers_is_not_breakage(budget):
    with composepar.Pool(2, maxtasksperchild=1, context=multiprocessing.get_context("fork")) as p:
        assert p.map(_workers.square, range(8), chunksize=1) == [x * x for x in range(8)]


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_sys_exit_0_in_a_task_is_breakage_where_retiring_is_not(budget, method):
    # A retiring worker exits with 0 after its task, as does sys.exit(0) in
    # one: the first is normal, the second breaks the pool.
    with composepar.Pool(2, maxtasksperchild=1, context=multiprocessing.get_context(method)) as p:
        assert p.map(_workers.square, range(8), chunksize=1) == [x * x for x in range(8)]
        assert p.apply(_workers.square, (3,)) == 9
        with pytest.raises(composepar.BrokenPoolError, match="exited with code 0 before it finished"):
            p.apply(sys.exit, (0,))


def test_close_and_join_is_not_breakage(budget):
    p = composepar.Pool(2, maxtasksperchild=2, context=multiprocessing.get_context("fork"))
    result = p.map_async(_workers.square, range(10), chunksize=1)
    p.close()
    p.join()
    assert result.get(DEADLINE) == [x * x for x in range(10)]
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(_workers.square, (1,))
