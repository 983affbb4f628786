"""Event-driven following (arbiter.cpp, "Followers"; _task._follow_loop): a lease that can grow
learns it from the segment's policy word, not from a periodic tick, and nothing wakes while
nothing changes."""

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from composepar import Arbiter, WouldBlock
from composepar._native import _arbiter as native

from _workers import hold_explicit_then_wait
from conftest import wait_until

GROW, SHRINK = native.FOLLOW_GROW, native.FOLLOW_SHRINK
NEVER = 600.0  # a wait_policy timeout no test outlives: a return before it is a wake


def _sleeper(arbiter, interest):
    """A thread in wait_policy, as the follower waits; `returned` is set when it wakes."""
    returned = threading.Event()
    seen = arbiter._policy_seq()

    def sleep():
        arbiter._wait_policy(seen, interest, NEVER)
        returned.set()

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    return returned


def test_a_release_elsewhere_wakes_a_lease_that_wants_more(domain):
    arbiter = Arbiter(domain, capacity=2)
    spawn = multiprocessing.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    holder = spawn.Process(target=hold_explicit_then_wait, args=(domain, 1, ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        with arbiter.lease(1) as lease:
            assert (lease.threads, lease.follow_interest) == (1, GROW)  # the other token is held
            returned = _sleeper(arbiter, lease.follow_interest)
            done.set()  # the holder releases its token and exits
            assert returned.wait(60), "the release did not wake the lease's follower"
            assert lease.refresh() == 2
            assert lease.follow_interest == SHRINK  # it holds an extra now: it listens for newcomers
    finally:
        done.set()
        holder.join(60)


def test_a_newcomer_wakes_a_lease_holding_extras(domain):
    arbiter = Arbiter(domain, capacity=2)
    spawn = multiprocessing.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    with arbiter.lease(1) as lease:
        assert lease.threads == 2
        returned = _sleeper(arbiter, SHRINK)
        holder = spawn.Process(target=hold_explicit_then_wait, args=(domain, 1, ready, done))
        holder.start()
        try:
            # The holder's acquire waits: the lease holds both tokens. Its arrival is the event.
            assert returned.wait(60), "the newcomer did not wake the lease's follower"
            assert lease.refresh() == 1  # the extra goes back to the one below its share
            assert ready.wait(60)
        finally:
            done.set()
            holder.join(60)


def test_calls_that_change_nothing_anyone_could_gain_leave_the_policy_word_alone(domain):
    arbiter = Arbiter(domain, capacity=2)
    with arbiter.lease(1) as lease:
        assert (lease.threads, lease.follow_interest) == (2, SHRINK)
        seen = arbiter._policy_seq()
        arbiter.stats()
        with pytest.raises(WouldBlock):
            arbiter.acquire_nowait(1)  # refused: the lease holds both tokens
        assert lease.refresh() == 2
        assert lease.refresh(0) == 1  # freed, but nobody wants it
        assert lease.refresh(1) == 2  # taken back: nobody was waiting for it
        assert arbiter._policy_seq() == seen
        with arbiter.lease(1) as newcomer:  # overdrawn: a new claimant below its share
            assert arbiter._policy_seq() != seen
            seen = arbiter._policy_seq()
            assert lease.refresh() == 1  # gives the extra back to the newcomer, which wants it:
            assert arbiter._policy_seq() != seen  # an event for the newcomer's follower
            assert newcomer.refresh() == 1 and newcomer.own_token


def test_the_follower_wakes_only_for_its_own_process_when_poked(domain):
    """wake_follower() (a new lease to follow, exit) reaches the sleeping follower, whatever it waits for."""
    arbiter = Arbiter(domain, capacity=2)
    returned = _sleeper(arbiter, 0)  # nothing to gain: only its own process can wake it
    arbiter._wake_follower()
    assert returned.wait(60)


IDLE_PROGRAM = """
    import json, os, time
    import numpy                          # OpenBLAS: the main thread holds a lease with an extra

    def switches():
        total = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/status") as status:
                    for line in status:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            total += int(line.split()[-1])
            except FileNotFoundError:
                pass
        return total

    numpy.ones(4) @ numpy.ones(4)
    from composepar import _task
    threads = _task.current_budget()
    before, start = switches(), time.monotonic()
    time.sleep(2)                          # the program does nothing: composepar must do nothing
    print(json.dumps([threads, switches() - before, time.monotonic() - start]))
"""


def test_an_idle_launched_program_makes_a_handful_of_wake_ups(tmp_path, domain):
    """The issue's measure: about 200 context switches in 2 s with a 10 ms refresher."""
    program = tmp_path / "idle.py"
    program.write_text(textwrap.dedent(IDLE_PROGRAM))
    environ = dict(os.environ, COMPOSEPAR_CAPACITY="2")
    result = subprocess.run([sys.executable, "-m", "composepar", "--domain", domain, str(program)],
                            capture_output=True, text=True, timeout=120, env=environ)
    assert result.returncode == 0, result.stderr
    threads, switches, seconds = json.loads(result.stdout)
    assert threads == 2  # it holds the whole budget, so it has a lease to follow
    from composepar import _task

    # The follower looks again every FOLLOW_TIMEOUT_SECONDS without an event; the rest is sleep.
    assert switches <= seconds / _task.FOLLOW_TIMEOUT_SECONDS + 4, switches


SLEEPER_PROGRAM = """
    import json, sys, time
    import numpy                          # OpenBLAS: the main thread holds a lease with an extra
    from composepar import _task

    numpy.ones(4) @ numpy.ones(4)
    print("holding", _task.current_budget(), flush=True)
    sys.stdin.readline()                  # a wait composepar does not know: the thread just sleeps
    a, end = numpy.ones((300, 300)), time.monotonic() + 60
    while _task.current_budget() != 2 and time.monotonic() < end:
        a @ a                             # it runs again: its lease asks for the extra again
    print("running", _task.current_budget(), flush=True)
"""


def test_a_lease_whose_thread_sleeps_gives_its_extras_back_and_takes_them_when_it_runs(tmp_path, domain):
    """The kernel's view of the thread (its CPU time in /proc), no hook in the program: a launched
    program that sleeps while holding the machine shows one token in `status`, not two."""
    program = tmp_path / "sleeper.py"
    program.write_text(textwrap.dedent(SLEEPER_PROGRAM))
    environ = dict(os.environ, COMPOSEPAR_CAPACITY="2")
    child = subprocess.Popen([sys.executable, "-m", "composepar", "--domain", domain, str(program)], env=environ,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "holding 2\n"
        arbiter = Arbiter(domain)

        def held():
            row = arbiter.stats().process(child.pid)
            return None if row is None else row.tokens_held

        wait_until(lambda: held() == 1, "the sleeping program's lease to give its extra back", 60)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "running 2\n"
        child.stdin.close()
        assert child.wait(60) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
