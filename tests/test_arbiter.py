"""The arbiter within one process: accounting, explicit tokens, leases, argument errors."""

import dataclasses
import os
import threading

import pytest

import composepar
from composepar import Arbiter, WouldBlock


def test_attaching_holds_nothing(domain):
    arbiter = Arbiter(domain, capacity=4)
    stats = arbiter.stats()
    assert stats.capacity == 4
    assert stats.tokens_free == 4
    assert stats.processes == ()  # attaching alone registers no slot
    assert arbiter.tokens_held == 0
    assert arbiter.invariant_violations() == ""


def test_default_capacity_is_the_usable_cpus(domain):
    assert Arbiter(domain).capacity == composepar.usable_cpus()


def test_capacity_and_domain_from_environment(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    monkeypatch.setenv("COMPOSEPAR_CAPACITY", "7")
    arbiter = Arbiter()
    assert arbiter.domain == domain
    assert arbiter.capacity == 7


def test_capacity_mismatch_is_a_clear_error(domain):
    Arbiter(domain, capacity=3)
    with pytest.raises(composepar.CapacityMismatchError, match=r"capacity 3, not the 5 asked for"):
        Arbiter(domain, capacity=5)
    assert Arbiter(domain).capacity == 3  # no capacity asked: attach to any


def test_acquire_grants_between_min_and_max(domain):
    arbiter = Arbiter(domain, capacity=4)
    assert arbiter.acquire(3) == 3
    assert arbiter.acquire(4, min_tokens=1) == 1  # only one left
    assert arbiter.tokens_held == 4
    with pytest.raises(WouldBlock):
        arbiter.acquire_nowait(1)
    arbiter.release(4)
    assert arbiter.stats().tokens_free == 4
    assert arbiter.invariant_violations() == ""


def test_acquire_nowait_respects_min(domain):
    arbiter = Arbiter(domain, capacity=4)
    arbiter.acquire(3)
    with pytest.raises(WouldBlock, match="fewer than 2 tokens free"):
        arbiter.acquire_nowait(4, min_tokens=2)
    assert arbiter.acquire_nowait(4, min_tokens=1) == 1
    arbiter.release(4)


def test_acquire_times_out(domain):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(2)
    with pytest.raises(TimeoutError, match="could not get 1 of 2 tokens"):
        arbiter.acquire(1, timeout=0.1)
    with pytest.raises(TimeoutError):
        arbiter.acquire(1, timeout=0)
    stats = arbiter.stats()
    assert stats.process(os.getpid()).waiters == 0  # the timed-out waiter left no trace
    assert stats.process(os.getpid()).tokens_wanted == 0
    arbiter.release(2)
    assert arbiter.invariant_violations() == ""


def test_blocked_acquire_wakes_on_release_from_another_thread(domain):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(2)
    got = []
    waiter = threading.Thread(target=lambda: got.append(arbiter.acquire(2, min_tokens=2, timeout=30)))
    waiter.start()
    while arbiter.stats().process(os.getpid()).waiters == 0:
        pass
    assert arbiter.stats().process(os.getpid()).tokens_waited == 2
    arbiter.release(2)
    waiter.join()
    assert got == [2]
    arbiter.release(2)


def test_releasing_more_than_held_is_a_value_error(domain):
    arbiter = Arbiter(domain, capacity=4)
    arbiter.acquire(2)
    with pytest.raises(ValueError, match="cannot release 3 tokens: this process holds 2"):
        arbiter.release(3)
    arbiter.release(2)
    assert arbiter.stats().tokens_free == 4


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda a: a.acquire(0), ValueError, "max_tokens must be at least 1; got 0"),
        (lambda a: a.acquire(2.5), TypeError, "max_tokens must be an int; got 2.5"),
        (lambda a: a.acquire(True), TypeError, "max_tokens must be an int; got True"),
        (lambda a: a.acquire(2, min_tokens=3), ValueError, "min_tokens must be <= max_tokens"),
        (lambda a: a.acquire(9, min_tokens=5), ValueError, "min_tokens must be <= the capacity"),
        (lambda a: a.acquire(1, timeout=-1), ValueError, "timeout must be None or a number of seconds"),
        (lambda a: a.acquire(1, timeout="1"), ValueError, "timeout must be None"),
        (lambda a: a.release(-1), ValueError, "n must be >= 0"),
        (lambda a: a.release("1"), TypeError, "n must be an int"),
        (lambda a: a.lease(-1), ValueError, "extra_wanted must be an int >= 0"),
        (lambda a: a.lease(1, pool_owner_pid=2**40), ValueError, "pool_owner_pid must be 0 .no pool. or a pid"),
        (lambda a: a.lease(1, pool_owner_pid=-3), ValueError, "pool_owner_pid must be"),
        (lambda a: a.release(2**33), ValueError, "cannot release 8589934592 tokens: no budget has more than"),
        (lambda a: a.set_pool_demand(2**33), ValueError, "tasks must be an int between 0 and 65536"),
        (lambda a: a.set_pool_demand(-1), ValueError, "tasks must be an int between 0 and"),
    ],
)
def test_bad_arguments_name_the_problem(domain, call, error, message):
    arbiter = Arbiter(domain, capacity=4)
    with pytest.raises(error, match=message):
        call(arbiter)
    assert arbiter.stats().tokens_free == 4


@pytest.mark.parametrize("call", [lambda a: a.lease(2**40), lambda a: a.acquire(2**40),
                                  lambda a: a.acquire_nowait(2**40)], ids=["lease", "acquire", "acquire_nowait"])
def test_asking_for_more_than_the_capacity_gets_the_capacity(domain, call):
    """A huge ask is clamped to what can be granted, never passed to the core
    (its counters are 32-bit sums over processes)."""
    arbiter = Arbiter(domain, capacity=4)
    granted = call(arbiter)
    if isinstance(granted, int):
        assert granted == 4
        arbiter.release(granted)
    else:
        assert granted.threads == 4
        granted.close()
    assert arbiter.stats().tokens_free == 4
    assert arbiter.invariant_violations() == ""


@pytest.mark.parametrize(
    "kwargs, env, error, message",
    [
        ({"domain": "a/b"}, {}, ValueError, "domain must be 1-64 characters"),
        ({"domain": ""}, {}, ValueError, "domain must be"),
        ({"domain": "..x"}, {}, ValueError, "domain must be"),
        ({"domain": 3}, {}, TypeError, "domain must be a str"),
        ({"capacity": 0}, {}, ValueError, "capacity must be between 1 and 65536; got 0"),
        ({"capacity": 1 << 20}, {}, ValueError, "capacity must be between 1 and 65536"),
        ({"capacity": "4"}, {}, TypeError, "capacity must be an int"),
        ({}, {"COMPOSEPAR_CAPACITY": "abc"}, ValueError, "COMPOSEPAR_CAPACITY must be an integer"),
        ({}, {"COMPOSEPAR_CAPACITY": "0"}, ValueError, "COMPOSEPAR_CAPACITY must be an integer between 1"),
        ({}, {"COMPOSEPAR_DOMAIN": "x/y"}, ValueError, "COMPOSEPAR_DOMAIN must be 1-64"),
    ],
)
def test_bad_configuration_names_the_problem(domain, monkeypatch, kwargs, env, error, message):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(error, match=message):
        Arbiter(**kwargs)


def test_lease_takes_own_token_and_extras_from_free_capacity(domain):
    arbiter = Arbiter(domain, capacity=4)
    with arbiter.lease() as lease:  # default: as much as the policy gives
        assert lease.own_token and lease.threads == 4
        assert arbiter.stats().tokens_free == 0
    assert arbiter.stats().tokens_free == 4
    arbiter.acquire(3)
    with arbiter.lease(5) as lease:
        assert lease.own_token and lease.tokens_extra == 0  # extras only from free tokens
    arbiter.release(3)


def test_lease_never_blocks_and_runs_overdrawn(domain):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(2)
    lease = arbiter.lease(3)
    assert not lease.own_token and lease.threads == 1
    stats = arbiter.stats()
    assert stats.leases_overdrawn == 1
    assert stats.tokens_free == 0 and stats.tokens_held == 2  # never more out than capacity
    arbiter.release(1)
    assert lease.refresh() == 1 and lease.own_token  # picks up its own token first
    arbiter.release(1)
    assert lease.refresh() == 2  # then extras from what was freed
    lease.close()
    lease.close()  # closing twice is harmless
    assert lease.closed
    assert arbiter.stats().tokens_free == 2
    assert arbiter.invariant_violations() == ""


def test_refresh_follows_a_changed_ask(domain):
    arbiter = Arbiter(domain, capacity=4)
    with arbiter.lease(3) as lease:
        assert lease.threads == 4
        assert lease.refresh(1) == 2
        assert arbiter.stats().tokens_free == 2
        assert lease.refresh(3) == 4
    with pytest.raises(Exception, match="closed"):
        lease.refresh()


def test_threads_of_one_process_share_fairly(domain):
    arbiter = Arbiter(domain, capacity=4)
    first = arbiter.lease(3)
    assert first.threads == 4  # alone: work conserving
    second = arbiter.lease(3)
    assert not second.own_token  # nothing free: runs overdrawn, never blocks
    assert first.refresh() == 2  # a sibling is below its share: give back to the share
    assert second.refresh() == 2  # own token + one extra
    assert first.refresh() == 2 and second.refresh() == 2  # stable
    first.close()
    assert second.refresh() == 4  # picks up what the finished sibling freed
    second.close()
    assert arbiter.stats().tokens_free == 4
    assert arbiter.invariant_violations() == ""


def test_stats_are_frozen_dataclasses(domain):
    arbiter = Arbiter(domain, capacity=2)
    stats = arbiter.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.tokens_free = 0
    with arbiter.lease(1):
        line = arbiter.stats().process(os.getpid())
        assert (line.threads_active, line.tokens_held, line.tokens_extra) == (1, 2, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            line.pid = 1


def test_two_arbiter_objects_share_the_process_slot(domain):
    a, b = Arbiter(domain, capacity=3), Arbiter(domain)
    a.acquire(2)
    assert b.tokens_held == 2
    b.release(2)
    assert a.tokens_held == 0
