"""Which budget a launched program gets: the capacity rule for an existing segment, the segment's
removal when the last launched process exits, and the CPU-set rule (a process never gets more threads
than its CPUs). Real launches in subprocesses, real taskset."""

import os
import shutil
import subprocess
import sys
import threading

import pytest

from composepar import Arbiter, _config, usable_cpus

CAPACITY_AND_LEASE = ("import os, composepar; a = composepar.Arbiter(); "
                      "print(os.environ['COMPOSEPAR_CAPACITY'], a.capacity, os.environ['COMPOSEPAR_DOMAIN'])")


def clean_env(**extra):
    env = {name: value for name, value in os.environ.items() if not name.startswith("COMPOSEPAR_")}
    env.update(extra)
    return env


def launch(*args, env=None, pin=None):
    command = [sys.executable, "-m", "composepar", *args]
    if pin is not None:
        command = ["taskset", "-c", pin, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=env if env is not None else clean_env())


def leave_a_segment(domain, capacity):
    """A segment left by an earlier run: its process exited holding a token (a dead slot)."""
    subprocess.run([sys.executable, "-c", f"import composepar; composepar.Arbiter({domain!r}, capacity={capacity})"
                    f".acquire(1)"], check=True, timeout=120)
    assert os.path.exists(_config.segment_path(domain))


# The capacity rule.

@pytest.mark.parametrize("how", ["option", "variable"])
def test_an_unused_budget_is_re_created_with_the_capacity_asked(domain, how):
    leave_a_segment(domain, 2)
    args, env = (["-n", "3"], clean_env()) if how == "option" else ([], clean_env(COMPOSEPAR_CAPACITY="3"))
    result = launch("--domain", domain, *args, "-c", CAPACITY_AND_LEASE, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"3 3 {domain}\n", "")


def test_without_a_capacity_an_unused_budget_gets_the_cpus_of_the_process(domain):
    leave_a_segment(domain, 7)
    result = launch("--domain", domain, "-c", CAPACITY_AND_LEASE)
    cpus = usable_cpus()  # the child's: same affinity and cgroup
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{cpus} {cpus} {domain}\n", "")


def test_verbose_says_an_unused_budget_was_re_created(domain):
    leave_a_segment(domain, 2)
    result = launch("-v", "--domain", domain, "-n", "1", "-c", "pass")
    assert result.returncode == 0, result.stderr
    assert (f"composepar: re-created the unused budget of domain {domain!r} (capacity 2) with capacity 1, "
            f"as asked with -n/--threads") in result.stderr


@pytest.mark.parametrize("how", ["option", "variable"])
def test_a_used_budget_is_joined_with_a_one_line_notice(domain, how):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(1)  # this process uses it
    try:
        args, env = (["-n", "3"], clean_env()) if how == "option" else ([], clean_env(COMPOSEPAR_CAPACITY="3"))
        source = "-n/--threads" if how == "option" else "COMPOSEPAR_CAPACITY"
        result = launch("--domain", domain, *args, "-c", CAPACITY_AND_LEASE, env=env)
        assert (result.returncode, result.stdout) == (0, f"2 2 {domain}\n")  # its children see no mismatch
        assert result.stderr == (f"composepar: joined the budget of domain {domain!r} with its capacity 2: 1 live "
                                 f"process uses it (pid {os.getpid()}), not the 3 asked for with {source}; to get "
                                 f"3, run when they are done or choose another --domain\n")
        assert os.path.exists(arbiter.path)  # not removed while this process uses it
    finally:
        arbiter.release(1)


def test_a_used_budget_is_joined_silently_when_no_capacity_is_asked(domain):
    arbiter = Arbiter(domain, capacity=5)
    arbiter.acquire(1)
    try:
        result = launch("--domain", domain, "-c", CAPACITY_AND_LEASE)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"5 5 {domain}\n", "")
        verbose = launch("-v", "--domain", domain, "-c", "pass")
        assert f"(pid {os.getpid()}); a used budget keeps its capacity" in verbose.stderr
    finally:
        arbiter.release(1)


def test_the_library_api_still_refuses_another_capacity(domain):
    Arbiter(domain, capacity=2)
    with pytest.raises(ValueError, match="capacity 2, not the 3 asked for"):
        Arbiter(domain, capacity=3)


# The segment's removal at exit.

def test_the_segment_is_removed_when_the_last_launched_process_exits(domain):
    path = _config.segment_path(domain)
    result = launch("--domain", domain, "-c",
                    "import multiprocessing, os\n"
                    "from composepar import Arbiter\n"
                    "assert os.path.exists(Arbiter().path)\n"
                    "with multiprocessing.get_context('spawn').Pool(2) as pool:\n"
                    "    pool.map(abs, range(4))\n")
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(path)


def test_a_segment_another_process_uses_is_not_removed(domain):
    arbiter = Arbiter(domain, capacity=2)
    with arbiter.lease(0):
        result = launch("--domain", domain, "-c", "pass")
        assert result.returncode == 0, result.stderr
        assert os.path.exists(arbiter.path)
    assert arbiter.invariant_violations() == ""


def test_concurrent_launches_asking_different_capacities_never_fail_or_disagree(domain):
    """Launches that create, re-create, join and remove the same domain at once: every program and its
    child see one capacity (no CapacityMismatchError), and nothing prints a traceback."""
    code = ("import os, subprocess, sys, composepar\n"
            "child = subprocess.run([sys.executable, '-c', 'import composepar; print(composepar.Arbiter().capacity)'],"
            " capture_output=True, text=True, check=True)\n"
            "print(os.environ['COMPOSEPAR_CAPACITY'], composepar.Arbiter().capacity, child.stdout.strip())\n")
    results = [None] * 6

    def run(index):
        results[index] = launch("--domain", domain, "-n", str(1 + index % 2), "-c", code)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        exported, attached, child = result.stdout.split()
        assert exported == attached == child
        assert result.stderr == "" or result.stderr.startswith("composepar: joined the budget")


# The CPU-set rule.

needs_taskset = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
                                   reason="needs 2 CPUs and taskset")

MAIN_LEASE = ("import os, composepar\n"
              "line = composepar.Arbiter().stats().process(os.getpid())\n"
              "with composepar.limit(8) as block:\n"
              "    asked = block.threads\n"
              "print(os.environ['COMPOSEPAR_DOMAIN'], os.environ['COMPOSEPAR_CAPACITY'], line.threads_active, "
              "line.tokens_extra, asked, os.environ.get('OPENBLAS_NUM_THREADS'))\n")


@needs_taskset
def test_a_program_bound_to_one_cpu_gets_one_thread_in_a_larger_named_budget(domain):
    """The reported case: a budget with room for more, a program bound to one CPU."""
    arbiter = Arbiter(domain, capacity=3)
    arbiter.acquire(1)  # used: joined as it is, 2 tokens free
    try:
        result = launch("-v", "--domain", domain, "-c", MAIN_LEASE, pin="0")
        assert result.returncode == 0, result.stderr
        # main thread's lease: 1 thread, no extra; a block asking 8 threads: still 1; no thread variable
        # (the runtimes follow the affinity mask themselves, and an engine's own limits stay in force)
        assert result.stdout == f"{domain} 3 1 0 1 None\n"
        assert ("composepar: the budget has capacity 3 and this process may use 1 CPU (affinity 0): the budget is "
                "in use; this process's tasks are capped at its 1 CPU" in result.stderr)
    finally:
        arbiter.release(1)


@needs_taskset
def test_a_program_bound_to_one_cpu_gets_a_budget_of_its_own_by_default():
    env = clean_env()
    result = launch("-c", MAIN_LEASE, env=env, pin="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cpus-0 1 1 0 1 None\n"


def test_a_task_follows_the_affinity_of_its_process_without_losing_tokens(domain):
    code = f"""if True:
        import os, time, composepar
        arbiter = composepar.Arbiter({domain!r}, capacity=2)
        everything = os.sched_getaffinity(0)

        def bind(cpus):  # every thread, the refresher's too, as taskset -a and cpusets do
            for thread in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(thread), cpus)

        def budget_becomes(threads):  # the CPUs are read again within 1 s
            deadline = time.monotonic() + 30
            seen = None
            while seen != threads and time.monotonic() < deadline:
                with composepar.limit() as block:
                    seen = block.threads
            return seen

        def free_becomes(tokens):  # the refresher asks again with the new CPUs: tokens go back
            deadline = time.monotonic() + 30
            while arbiter.stats().tokens_free != tokens and time.monotonic() < deadline:
                time.sleep(0.01)  # polls the state, with a deadline
            return arbiter.stats().tokens_free

        with composepar.limit() as block:
            before = block.threads
            bind({{min(everything)}})
            inside = budget_becomes(1)   # the open task's budget follows at once
            given_back = free_becomes(1)  # and its lease gives back the token it cannot use
        bind(everything)
        again = budget_becomes(before)
        print(before, inside, given_back, again, arbiter.stats().tokens_free, repr(arbiter.invariant_violations()))
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, COMPOSEPAR_DOMAIN=domain))  # the tasks take their tokens there
    assert result.returncode == 0, result.stderr
    before = min(2, len(os.sched_getaffinity(0)))
    assert result.stdout.split() == [str(before), "1", "1", str(before), "2", "''"]


def test_a_fork_child_exiting_normally_never_removes_its_parents_segment(domain):
    """The child inherits the launcher's exit handler and a copy of its handle, which names the
    parent's slot; idle at that moment, that slot must not read as the child's own."""
    result = launch("--domain", domain, "-c",
                    "import os, sys, composepar\n"
                    "from composepar import _task\n"
                    "_task.current_scope().suspend()  # the main thread's tokens given back, as a hooked wait does\n"
                    "pid = os.fork()\n"
                    "if pid == 0:\n"
                    "    sys.exit(0)  # a normal exit: the child runs the exit handlers it inherited\n"
                    "os.waitpid(pid, 0)\n"
                    "print(os.path.exists(composepar.Arbiter().path))\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", "")
    assert not os.path.exists(_config.segment_path(domain))  # removed at the parent's exit
