"""python -m composepar status / cleanup, run as a user would, in subprocesses."""

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

import _workers
from composepar import Arbiter, _config


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "composepar", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_status_of_a_domain_nobody_created(domain):
    result = run("status", "--domain", domain)
    assert result.returncode == 0
    assert f"no arbiter yet for domain {domain!r}" in result.stdout
    assert not os.path.exists(_config.segment_path(domain))  # status creates nothing
    data = json.loads(run("status", "--domain", domain, "--json").stdout)
    assert data["exists"] is False


def test_status_shows_each_attached_process(domain):
    arbiter = Arbiter(domain, capacity=4)
    context = multiprocessing.get_context("fork")
    ready, done = context.Queue(), context.Event()
    # One extra: a lease never has more threads than the process's CPUs (at least 2 here).
    holder = context.Process(target=_workers.hold_lease_then_wait, args=(domain, 1, ready, done))
    holder.start()
    assert ready.get(timeout=60) == 2
    arbiter.acquire(1)
    try:
        text = run("status", "--domain", domain)
        assert text.returncode == 0, text.stderr
        assert "capacity 4  free 1  held 3" in text.stdout
        lines = {line.split()[0]: line.split() for line in text.stdout.splitlines()[3:]}
        assert lines[str(holder.pid)][2:] == ["1", "1", "0", "0", "0", "/", "0"]  # threads, extra, acquired, waiting, pool
        assert lines[str(os.getpid())][2:6] == ["0", "1", "1", "0"]
        data = json.loads(run("status", "--domain", domain, "--json").stdout)
        assert (data["capacity"], data["tokens_free"]) == (4, 1)
        by_pid = {p["pid"]: p for p in data["processes"]}
        assert by_pid[holder.pid]["threads_active"] == 1 and by_pid[holder.pid]["tokens_extra"] == 1
        assert by_pid[os.getpid()]["tokens_explicit"] == 1
    finally:
        done.set()
        holder.join(60)
        arbiter.release(1)


def test_status_uses_the_domain_from_the_environment(domain):
    Arbiter(domain, capacity=3)
    env = dict(os.environ, COMPOSEPAR_DOMAIN=domain)
    assert "capacity 3  free 3" in run("status", env=env).stdout


def test_cleanup_refuses_while_a_live_process_uses_the_segment(domain):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(1)
    result = run("cleanup", "--domain", domain)
    assert result.returncode == 1
    assert f"1 live process(es) use it (pid {os.getpid()})" in result.stderr
    assert os.path.exists(arbiter.path)
    arbiter.release(1)


def test_cleanup_removes_an_unused_segment(domain):
    subprocess.run([sys.executable, "-c", f"import composepar; a = composepar.Arbiter({domain!r}); a.acquire(1)"],
                   check=True)  # exits holding a token: reaped by cleanup
    path = _config.segment_path(domain)
    assert os.path.exists(path)
    result = run("cleanup", "--domain", domain)
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(path)
    assert "nothing to remove" in run("cleanup", "--domain", domain).stdout


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["status", "--domain", "a/b"], {}, "domain must be 1-64 characters"),
        (["status"], {"COMPOSEPAR_DOMAIN": "../x"}, "COMPOSEPAR_DOMAIN must be 1-64 characters"),
        (["status", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["frobnicate"], {}, "can't open file"),  # not a subcommand: a script to run, as python reports it
        ([], {}, "no program to run"),
        (["status", "--domain"], {}, "expected one argument"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, env, message):
    result = run(*args, env=dict(os.environ, **env))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # argparse may add its usage line
