"""Regression tests for arbiter bugs found in review (each failed before its fix)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import composepar
from composepar import Arbiter, _arbiter, _task, _threadpools


def test_a_lease_opened_before_detach_holds_nothing_after(domain):
    arbiter = Arbiter(domain, capacity=8)
    lease = arbiter.lease(7)
    assert lease.threads == 8
    _arbiter._forget_handle(arbiter.path)  # detaches: the slot and its tokens are returned
    again = Arbiter(domain)
    assert again.stats().tokens_free == 8
    # The stale lease must not re-register and pin tokens in a new slot.
    lease.refresh()
    lease.close()
    assert again.stats().tokens_free == 8
    assert again.invariant_violations() == ""


def test_cleanup_never_splits_a_domain_into_two_budgets(domain):
    attached = Arbiter(domain, capacity=2)  # attached, no slot yet: does not block cleanup
    result = subprocess.run([sys.executable, "-m", "composepar", "cleanup", "--domain", domain],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert attached.acquire(2) == 2  # re-attaches to the segment that now holds the budget
    other = subprocess.run(
        [sys.executable, "-c",
         f"import composepar\ntry:\n    composepar.Arbiter({domain!r}).acquire_nowait(1)\n    print('granted')\n"
         f"except composepar.WouldBlock:\n    print('would block')"],
        capture_output=True, text=True)
    assert other.stdout.strip() == "would block", other.stderr  # one budget: ours holds both tokens
    attached.release(2)


def test_an_interrupted_acquire_leaves_no_waiter_behind(domain):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(2)

    def interrupt_once_waiting():  # on state, not after a delay: SIGINT lands inside the wait
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not arbiter.stats().process(os.getpid()).waiters:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_waiting)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        arbiter.acquire(1, timeout=30)
    interrupter.join()
    line = arbiter.stats().process(os.getpid())
    assert (line.waiters, line.tokens_waited, line.tokens_wanted) == (0, 0, 0)
    arbiter.release(2)
    assert arbiter.invariant_violations() == ""


def test_a_worker_counts_for_a_new_owner_after_its_owner_died(domain):
    arbiter = Arbiter(domain, capacity=4)
    owner = subprocess.Popen([sys.executable, "-c",
                              f"import composepar, time; composepar.Arbiter({domain!r}).set_pool_demand(1); "
                              f"print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "ready"
    lease = arbiter.lease(0, pool_owner_pid=owner.pid)
    assert arbiter.stats().process(owner.pid).pool_leases_open == 1
    owner.kill()
    owner.wait()
    lease.close()  # its owner is gone: the worker side of the count must still drop
    arbiter.reap()
    arbiter.set_pool_demand(1)  # this process now owns a (thread) pool
    with arbiter.lease(0, pool_owner_pid=os.getpid()):
        mine = arbiter.stats().process(os.getpid())
        assert (mine.pool_demand, mine.pool_leases_open) == (1, 1)
    arbiter.set_pool_demand(0)
    assert arbiter.invariant_violations() == ""


def test_repeated_explicit_requests_count_what_the_process_holds(domain):
    arbiter = Arbiter(domain, capacity=8)
    arbiter.acquire(8)
    child = subprocess.Popen([sys.executable, "-c",
                              f"import composepar, time; l = composepar.Arbiter({domain!r}).lease(7); "
                              f"print(int(l.own_token), flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "0"  # overdrawn: below its share and asking
    arbiter.release(8)
    try:
        assert arbiter.acquire_nowait(8) == 4  # the share of 2 claimants
        assert arbiter.acquire_nowait(8) == 1  # already at the share: only the minimum
    finally:
        child.kill()
        child.wait()
    arbiter.release(arbiter.tokens_held)


def test_closing_a_lease_twice_leaves_its_siblings_alone(domain):
    arbiter = Arbiter(domain, capacity=4)
    first, second = arbiter.lease(0), arbiter.lease(0)
    first.close()
    first.close()
    line = arbiter.stats().process(os.getpid())
    assert (line.threads_active, line.tokens_held) == (1, 1)
    second.close()
    assert arbiter.invariant_violations() == ""


# --- runtime review findings --------------------------------------------------

def test_a_fork_while_the_native_pools_lock_is_held_does_not_hang_the_child(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with _threadpools.native_pools.lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    threading.Timer(0.2, release.set).start()  # fork waits for the lock instead of copying it held
    pid = os.fork()
    if pid == 0:
        try:
            _threadpools.native_pools.set_process_budget(1)  # would block forever on an inherited lock
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    holder.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_fork_child_can_fork_again_from_another_thread():
    """The at-fork handlers take the child's own lock, not the one the child was forked with (held)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            outcome = []

            def fork_again():
                grandchild = os.fork()
                if grandchild == 0:
                    os._exit(0)
                outcome.append(os.waitstatus_to_exitcode(os.waitpid(grandchild, 0)[1]))

            thread = threading.Thread(target=fork_again, daemon=True)
            thread.start()
            thread.join(60)  # a deadline, not a timing: the fork either returns or hangs forever
            code = 0 if outcome == [0] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_failed_scope_entry_leaves_nothing_behind(domain, monkeypatch):
    Arbiter(domain, capacity=2)
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    monkeypatch.setenv("COMPOSEPAR_CAPACITY", "3")  # differs from the segment's: attaching fails
    with pytest.raises(composepar.CapacityMismatchError):
        with composepar.limit(2):
            pass
    assert _task.thread_caps() == [] and _task.current_scope() is None
    monkeypatch.delenv("COMPOSEPAR_CAPACITY")
    with composepar.limit(2) as block:
        assert block.threads == 2  # a later limit is not stuck at a stale cap without a lease


def test_an_explicit_request_waiting_on_a_nested_pool_does_not_deadlock(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    Arbiter(domain, capacity=2)

    def outer(_):
        with composepar.ThreadPool(1) as inner:
            return inner.apply(_task.current_budget, threads=1)  # the outer task's 2 tokens are given back

    with composepar.ThreadPool(1) as pool:
        assert pool.apply_async(outer, (0,), threads=2).get(30) == 1
    assert Arbiter(domain).stats().tokens_free == 2


def test_a_terminated_pool_stops_claiming_demand(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    arbiter = Arbiter(domain, capacity=4)
    pool = composepar.ThreadPool(2)
    pool.map_async(time.sleep, [0.5] * 8)
    time.sleep(0.1)
    assert arbiter.stats().process(os.getpid()).pool_demand == 2
    pool.terminate()
    deadline = time.monotonic() + 5
    while arbiter.stats().process(os.getpid()).pool_demand and time.monotonic() < deadline:
        time.sleep(0.02)
    assert arbiter.stats().process(os.getpid()).pool_demand == 0


def test_one_limit_object_entered_by_two_threads_keeps_their_blocks_apart(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    arbiter = Arbiter(domain, capacity=4)
    shared = composepar.limit(1)
    inside, go = threading.Barrier(2), threading.Event()
    seen = []

    def block():
        with shared as entered:
            inside.wait(10)
            seen.append(entered.threads)
            go.wait(10)

    threads = [threading.Thread(target=block) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:  # both inside their block, parked on `go`
        time.sleep(0.01)
    assert arbiter.stats().process(os.getpid()).threads_active == 2  # two blocks, two leases
    go.set()
    for thread in threads:
        thread.join()
    assert seen == [1, 1]
    assert arbiter.stats().tokens_free == 4


# --- start-up and per-task cost (issue 4): behaviour the optimisations must keep


def test_launching_an_empty_program_imports_no_pool_or_heavy_module():
    """The pools are patched when their modules are imported, not before: a
    program that uses none does not pay ~40 ms for multiprocessing,
    concurrent.futures, threadpoolctl, dataclasses and argparse."""
    heavy = ("multiprocessing", "concurrent.futures", "threadpoolctl", "dataclasses", "argparse", "typing",
             "ctypes", "inspect", "re", "json")
    code = f"import sys; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    launched = subprocess.run([sys.executable, "-m", "composepar", "-n", "2", "-c", code],
                              capture_output=True, text=True, check=True)
    assert set(launched.stdout.split()) <= set(plain.stdout.split()), launched.stdout


def test_pools_imported_before_install_are_patched_at_once_and_later_ones_at_import():
    code = """
import concurrent.futures, multiprocessing.pool, sys
from composepar import _hooks
assert "concurrent.futures.process" not in sys.modules
_hooks.install()
print(multiprocessing.pool.Pool.apply_async is not _hooks.unpatched(multiprocessing.pool.Pool, "apply_async"))
print(concurrent.futures.wait is not _hooks.unpatched(sys.modules["concurrent.futures._base"], "wait"))
print(concurrent.futures.Future.result is not _hooks.unpatched(concurrent.futures.Future, "result"))
from concurrent.futures import ProcessPoolExecutor  # imported after install: patched by the finder
print(ProcessPoolExecutor.submit is not _hooks.unpatched(ProcessPoolExecutor, "submit"))
import inspect, concurrent.futures.process
print(len(inspect.getsource(concurrent.futures.process)) > 0)  # the wrapped loader still serves sources
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"] * 5


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_map_takes_one_task_scope_per_chunk(domain, start_method):
    import multiprocessing

    import _workers

    with composepar.Pool(2, context=multiprocessing.get_context(start_method)) as pool:
        ids = pool.map(_workers.scope_of_item, range(12), chunksize=4)
    assert None not in ids
    chunks = [ids[i:i + 4] for i in range(0, 12, 4)]
    assert all(len(set(chunk)) == 1 for chunk in chunks), ids  # one scope for the items of a chunk
    assert len(set(ids)) == 3, ids  # and one per chunk


def test_the_load_generation_changes_when_a_library_is_loaded(tmp_path):
    import ctypes

    from composepar._native import _arbiter as native

    source = tmp_path / "nothing.c"
    source.write_text("int composepar_test_nothing(void) { return 7; }\n")
    library = tmp_path / "libnothing.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    before = native.loaded_objects_generation()
    assert native.loaded_objects_generation() == before  # nothing loaded in between
    assert ctypes.CDLL(str(library)).composepar_test_nothing() == 7
    assert native.loaded_objects_generation() != before


@pytest.mark.parametrize("options", [
    [], ["-n", "3"], ["--threads", "4"], ["--threads=5"], ["--domain", "x"], ["--domain=y.z"], ["--domain="],
    ["--static"], ["--no-env"], ["-v"], ["--verbose"], ["-n", "2", "--domain", "d", "--static", "-v"],
    ["-n", "2", "-n", "3"], ["--domain", "-5"], ["-n", "0"], ["-n", "x"], ["--static=1"], ["--dom", "x"],
    ["-h"], ["--domain"], ["-n", "=4"], ["--threads", "-3"],
])
def test_the_launchers_fast_option_reading_agrees_with_argparse(options):
    from composepar import _cli

    fast = _cli._simple_options(options)
    if fast is None:
        return  # argparse reads these: its own tests cover them
    parsed = _cli._build_launcher_parser().parse_args(options)
    assert vars(fast) == vars(parsed)
