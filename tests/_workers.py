"""Functions run in child processes by the tests (importable under spawn and forkserver)."""

import os
import random
import time

import composepar


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


def hammer(domain, index, seconds, held_board, seed):
    """Random acquire/release/lease traffic; publishes what it holds in held_board[index].

    held_board[index] is raised only after a grant and lowered before a
    release, so the sum over the board never exceeds what is really held.
    """
    rng = random.Random(seed)
    arbiter = composepar.Arbiter(domain)
    capacity = arbiter.capacity
    deadline = time.monotonic() + seconds
    held = 0
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.4:
            want = rng.randint(1, capacity)
            try:
                got = arbiter.acquire_nowait(want, min_tokens=rng.randint(1, want))
            except composepar.WouldBlock:
                continue
            held += got
            held_board[index] = held
        elif roll < 0.6:
            want = rng.randint(1, capacity)
            try:
                got = arbiter.acquire(want, min_tokens=1, timeout=0.05)
            except TimeoutError:
                continue
            held += got
            held_board[index] = held
        elif roll < 0.8 and held:
            n = rng.randint(1, held)
            held -= n
            held_board[index] = held
            arbiter.release(n)
        else:
            with arbiter.lease(rng.randint(0, capacity)) as lease:
                held_board[index] = held + lease.threads - (0 if lease.own_token else 1)
                lease.refresh(rng.randint(0, capacity))
                held_board[index] = held + lease.threads - (0 if lease.own_token else 1)
                time.sleep(rng.random() * 0.002)
                held_board[index] = held
    held_board[index] = 0
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
