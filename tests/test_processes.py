"""The arbiter across real processes: fork, spawn, forkserver; wake-ups; fair share."""

import multiprocessing
import os
import queue as queue_module

import pytest

import _workers
from composepar import Arbiter, WouldBlock
from conftest import START_METHODS


@pytest.mark.parametrize("method", START_METHODS)
def test_child_starts_with_nothing_held_and_its_own_slot(domain, method):
    arbiter = Arbiter(domain, capacity=4)
    arbiter.acquire(2)
    context = multiprocessing.get_context(method)
    answers = context.Queue()
    child = context.Process(target=_workers.child_view, args=(domain, answers))
    child.start()
    pid, held_at_start, got, released, slot_held = answers.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert pid != os.getpid()
    assert held_at_start == 1  # its own acquisition only, nothing inherited
    assert got == 1 and slot_held == 1
    assert released == "cannot release 1 tokens: this process holds 0 acquired ones"
    assert arbiter.tokens_held == 2  # the child never released the parent's tokens
    stats = arbiter.stats()
    assert stats.tokens_free == 2
    assert stats.process(pid) is None or stats.process(pid).tokens_held == 0
    arbiter.release(2)
    assert arbiter.invariant_violations() == ""


def test_forked_child_inherits_no_lease(domain):
    arbiter = Arbiter(domain, capacity=3)
    lease = arbiter.lease(2)
    assert lease.threads == 3
    pid = os.fork()
    if pid == 0:  # child: the parent's lease is inert here
        try:
            code = 0 if lease.refresh() == 1 else 3
            lease.close()
            child_stats = Arbiter(domain).stats()
            code = code or (0 if child_stats.tokens_free == 0 else 4)
        except BaseException:
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert arbiter.stats().tokens_free == 0  # parent's lease still holds its 3
    lease.close()
    assert arbiter.stats().tokens_free == 3


@pytest.mark.parametrize("method", START_METHODS)
def test_blocked_acquire_wakes_on_another_process_release(domain, method):
    arbiter = Arbiter(domain, capacity=2)
    context = multiprocessing.get_context(method)
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_workers.hold_explicit_then_wait, args=(domain, 2, ready, done))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(WouldBlock):
        arbiter.acquire_nowait(1)
    done.set()  # the holder releases; our blocked acquire must wake
    assert arbiter.acquire(2, min_tokens=2, timeout=60) == 2
    holder.join(60)
    assert holder.exitcode == 0
    arbiter.release(2)
    assert arbiter.invariant_violations() == ""


def test_fair_share_between_two_greedy_processes(domain):
    capacity = 4
    arbiter = Arbiter(domain, capacity=capacity)
    context = multiprocessing.get_context("fork")
    procs = []
    for _ in range(2):
        commands, answers = context.Queue(), context.Queue()
        proc = context.Process(target=_workers.greedy_lease, args=(domain, capacity, commands, answers))
        procs.append((proc, commands, answers))

    def ask(index, command):
        procs[index][1].put(command)
        return procs[index][2].get(timeout=60)

    procs[0][0].start()
    assert procs[0][2].get(timeout=60) == ("open", True, 4)  # alone: the whole machine
    procs[1][0].start()
    assert procs[1][2].get(timeout=60) == ("open", False, 1)  # nothing free: overdrawn
    assert ask(0, "refresh") == ("refresh", True, 2)  # B is below its share: A gives back to 2
    assert ask(1, "refresh") == ("refresh", True, 2)  # B takes its share
    for _ in range(3):  # stable while both want more
        assert ask(0, "refresh")[2] == 2
        assert ask(1, "refresh")[2] == 2
        assert arbiter.stats().tokens_free == 0
    assert ask(0, "close")[0] == "closed"
    assert ask(1, "refresh") == ("refresh", True, 4)  # the survivor picks up the freed cores
    assert ask(1, "close")[0] == "closed"
    for proc, _, _ in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert arbiter.stats().tokens_free == capacity
    assert arbiter.invariant_violations() == ""


def test_explicit_acquirer_is_capped_at_share_while_another_waits(domain):
    arbiter = Arbiter(domain, capacity=4)
    arbiter.acquire(4)
    context = multiprocessing.get_context("fork")
    got, done = context.Queue(), context.Event()

    def wait_for_tokens():
        waiter_arbiter = Arbiter(domain)
        n = waiter_arbiter.acquire(4, min_tokens=1, timeout=60)
        got.put(n)
        done.wait(60)  # hold them until the parent has looked
        waiter_arbiter.release(n)

    waiter = context.Process(target=wait_for_tokens)
    waiter.start()
    while not any(p.waiters for p in arbiter.stats().processes):
        pass
    arbiter.release(4)
    try:
        mine = arbiter.acquire_nowait(4)
    except WouldBlock:
        mine = 0  # the waiter was faster and, alone in asking, took everything
    theirs = got.get(timeout=60)
    done.set()
    waiter.join(60)
    # Either we re-acquired first, capped at the share (2) because the waiter
    # was below its share, and the waiter got the rest; or the waiter won all.
    assert (mine, theirs) in {(2, 2), (0, 4)}
    arbiter.release(mine)
    assert arbiter.invariant_violations() == ""


def test_lease_in_one_process_borrows_only_free_capacity(domain):
    arbiter = Arbiter(domain, capacity=4)
    context = multiprocessing.get_context("spawn")
    ready, done = context.Queue(), context.Event()
    holder = context.Process(target=_workers.hold_lease_then_wait, args=(domain, 1, ready, done))
    holder.start()
    assert ready.get(timeout=60) == 2  # own + 1 extra
    with arbiter.lease(3) as lease:
        assert lease.threads == 2  # the 2 left, never more than capacity
        assert arbiter.stats().tokens_free == 0
    done.set()
    holder.join(60)
    assert arbiter.stats().tokens_free == 4
    with pytest.raises(queue_module.Empty):
        ready.get_nowait()
