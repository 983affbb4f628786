"""The dynamic policy in real programs: a task's native pools grow into the cores
its neighbours free and shrink when a new claimant arrives, mid-task, whatever
else the program has loaded.

Each program runs under ``python -m composepar -n 2`` in a fresh interpreter.
Its two pool tasks meet through multiprocessing Events (no sleeps): the long
task reads its pool while both run (it must come down to its share, 1), lets
the short task end, then keeps computing until its pool reaches 2 (or a
deadline that only a hang reaches, and then reports what it saw).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from composepar import usable_cpus

TIMEOUT = 180  # seconds a program may take on a loaded machine before the test fails


def write(tmp_path, name, program):
    """`program` (indented source) as the file `name` in `tmp_path`; returns its path as a str."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(program))
    return str(path)


def launched(domain, script, *args):
    """Runs `script` with `args` under ``python -m composepar -n 2`` in `domain`, in
    an environment without the caller's COMPOSEPAR_ variables; returns its stdout
    parsed as JSON, after checking that it exited 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSEPAR_")}
    result = subprocess.run([sys.executable, "-m", "composepar", "-n", "2", "--domain", domain, script, *args],
                            capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)

# What each program measures with: its OpenBLAS count, read from the library,
# and its own work repeated until that count reaches a value.
MEASURE = """
    import time
    from threadpoolctl import threadpool_info

    DEADLINE = 120  # seconds; only a hang reaches it

    def blas_threads():
        return max(i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas")

    def compute_until(threads, a):
        seen, end = [], time.monotonic() + DEADLINE
        while time.monotonic() < end:
            a @ a  # the task's own work: the budget follows at every refresh, mid-task
            seen.append(blas_threads())
            if seen[-1] == threads:
                break
        return seen[-1]
"""

GROWTH_PROGRAM = """
    import json, multiprocessing, sys
    import numpy
    if sys.argv[1] == "sklearn":
        import sklearn.cluster  # loads scikit-learn's own libgomp: a per-thread runtime, unused by the tasks
""" + MEASURE + """
    def init(started, observed):
        global STARTED, OBSERVED
        STARTED, OBSERVED = started, observed

    def task(kind):
        a = numpy.ones((200, 200))
        if kind == "short":
            STARTED.set()
            OBSERVED.wait(DEADLINE)  # until the long task saw its share while both run
            return None
        STARTED.wait(DEADLINE)
        both = compute_until(1, a)  # two tasks on two tokens: its share is 1
        OBSERVED.set()
        alone = compute_until(2, a)  # the short task ended: it grows into the freed core
        return [both, alone]

    if __name__ == "__main__":
        context = multiprocessing.get_context(sys.argv[2])
        started, observed = context.Event(), context.Event()
        with context.Pool(2, initializer=init, initargs=(started, observed)) as pool:
            results = pool.map(task, ["long", "short"], chunksize=1)
        print(json.dumps(results[0]))
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs: a budget of 1 cannot grow")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("loaded", ["nothing-else", "sklearn"])
def test_a_long_tasks_blas_grows_when_its_neighbour_ends(domain, tmp_path, method, loaded):
    """scikit-learn's import loads a per-thread runtime (its libgomp); the
    per-process pools (a pthreads OpenBLAS) keep following the budget."""
    if loaded == "sklearn":
        pytest.importorskip("sklearn")
    assert launched(domain, write(tmp_path, "growth.py", GROWTH_PROGRAM), loaded, method) == [1, 2]


PROCESS_WORKERS_PROGRAM = """
    import json, multiprocessing, sys
    import numpy
""" + MEASURE + """
    def worker(kind, started, observed, results):
        a = numpy.ones((200, 200))
        if kind == "short":
            started.set()
            compute_until(1, a)  # its share too, while both run
            observed.wait(DEADLINE)
            return
        started.wait(DEADLINE)
        both = compute_until(1, a)  # two processes on two tokens: its share is 1
        observed.set()
        alone = compute_until(2, a)  # the short one ended: the last one running gets the machine
        results.put([both, alone])

    if __name__ == "__main__":
        context = multiprocessing.get_context(sys.argv[1])
        started, observed, results = context.Event(), context.Event(), context.Queue()
        workers = [context.Process(target=worker, args=(kind, started, observed, results))
                   for kind in ("long", "short")]
        for process in workers:
            process.start()
        print(json.dumps(results.get(timeout=DEADLINE)))
        for process in workers:
            process.join(DEADLINE)
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs: a budget of 1 cannot grow")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_hand_made_process_workers_share_the_budget(domain, tmp_path, method):
    """multiprocessing.Process workers (no pool) each hold a lease for their
    main thread: two on two tokens run one BLAS thread each, the last one
    running gets both. With plain python each runs one per core."""
    assert launched(domain, write(tmp_path, "workers.py", PROCESS_WORKERS_PROGRAM), method) == [1, 2]


SUBPROCESS_WORKER = """
    import json, os, sys
    import numpy
""" + MEASURE + """
    kind, to_other, from_other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    a = numpy.ones((200, 200))
    if kind == "short":
        os.write(to_other, b"s")  # started
        compute_until(1, a)
        os.read(from_other, 1)  # until the long one saw its share
    else:
        os.read(from_other, 1)
        both = compute_until(1, a)
        os.write(to_other, b"o")  # observed: the short one may end
        print(json.dumps([both, compute_until(2, a)]))
"""

SUBPROCESS_DRIVER = """
    import os, subprocess, sys
    worker = sys.argv[1]
    long_in, short_out = os.pipe()   # short -> long
    short_in, long_out = os.pipe()   # long -> short
    fds = (long_in, short_out, short_in, long_out)
    short = subprocess.Popen([sys.executable, worker, "short", str(short_out), str(short_in)], pass_fds=fds)
    long = subprocess.Popen([sys.executable, worker, "long", str(long_out), str(long_in)], pass_fds=fds,
                            stdout=subprocess.PIPE, text=True)
    for fd in fds:
        os.close(fd)
    out, _ = long.communicate()      # a wait: the driver's lease is given back meanwhile
    short.wait()
    sys.stdout.write(out)
    sys.exit(long.returncode or short.returncode)
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs: a budget of 1 cannot grow")
def test_python_programs_started_with_subprocess_share_the_budget(domain, tmp_path):
    """Python worker programs a launched driver starts with subprocess hold a
    lease for their main thread (the .pth installs the hooks); the driver,
    waiting for them, holds none."""
    worker = write(tmp_path, "worker.py", SUBPROCESS_WORKER)
    assert launched(domain, write(tmp_path, "driver.py", SUBPROCESS_DRIVER), worker) == [1, 2]


IDLE_CHILDREN_PROGRAM = """
    import json, multiprocessing, subprocess, sys, time
    import numpy
    from composepar import _task

    def serve(connection):  # a helper process that loads no native pool and waits
        connection.recv()

    if __name__ == "__main__":
        waiting = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        parent_end, child_end = multiprocessing.Pipe()
        helper = multiprocessing.get_context(sys.argv[1]).Process(target=serve, args=(child_end,))
        helper.start()
        manager = multiprocessing.Manager()  # its server process waits for requests
        shared = manager.list([1])
        a = numpy.ones((200, 200))
        seen, end = [], time.monotonic() + 120  # only a hang reaches the deadline
        while time.monotonic() < end:
            a @ a  # the busy main thread: alone with native work, its lease grows to the budget
            seen.append(_task.current_budget())
            if seen[-1] == 2:
                break
        parent_end.send(None)
        helper.join()
        manager.shutdown()  # first: the forked processes hold the subprocess's stdin open too
        waiting.communicate(b"")
        print(json.dumps(seen[-1]))
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs: a budget of 1 cannot grow")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_idle_processes_of_the_tree_take_no_tokens(domain, tmp_path, method):
    """A Python child that loads no native pool (a process waiting on a pipe,
    a subprocess waiting on stdin, a multiprocessing manager's server) holds
    no lease, so a busy process next to it still gets the whole budget, as
    with plain python."""
    assert launched(domain, write(tmp_path, "idle_children.py", IDLE_CHILDREN_PROGRAM), method) == 2


def test_a_wait_inside_a_wait_leaves_the_tokens_to_the_outer_one(domain):
    """select() inside communicate(), a Future's wait inside a pool's join:
    only the outermost wait gives the lease back and takes it again."""
    import composepar
    from composepar import _task

    arbiter = composepar.Arbiter(domain, capacity=2)
    scope = _task.TaskScope(domain=domain)
    with scope:
        assert arbiter.stats().tokens_free < 2
        with _task.idle():
            with _task.idle():
                assert arbiter.stats().tokens_free == 2
            assert arbiter.stats().tokens_free == 2  # the inner wait ended, the outer one still waits
        assert arbiter.stats().tokens_free < 2
    assert arbiter.stats().tokens_free == 2


# The OpenMP kernel's team size, counted inside each parallel region
# (omp_team: omp_get_num_threads() in a `single`), not read back from a setting.
OMP_REGIONS_PROGRAM = """
    import ctypes, json, multiprocessing, sys, time
    if sys.argv[3] == "sklearn":
        import sklearn.cluster  # a second libgomp (the copy its wheel bundles), loaded first

    DEADLINE = 120  # seconds; only a hang reaches it
    SPIN = 100_000  # per thread and region: short regions, many of them per task

    def init(kernel, grown, observed):
        global KERNEL, GROWN, OBSERVED
        KERNEL, GROWN, OBSERVED = kernel, grown, observed

    def regions_until(kernel, threads):
        teams, end = [], time.monotonic() + DEADLINE
        while time.monotonic() < end:
            teams.append(kernel.omp_team(SPIN))  # the team of one real region
            if teams[-1] == threads:
                break
        return teams[-1]

    def task(kind):
        kernel = ctypes.CDLL(KERNEL)  # loaded inside the task: it follows from its first region
        if kind == "long":
            alone = regions_until(kernel, 2)  # the only task: the whole budget
            GROWN.set()  # the program submits the second task now
            both = regions_until(kernel, 1)  # a newcomer: its next regions shrink to the share
            OBSERVED.set()
            again = regions_until(kernel, 2)  # the newcomer ended: they grow into the freed core
            return [alone, both, again]
        team = kernel.omp_team(SPIN)  # the long task holds the machine: one thread
        OBSERVED.wait(DEADLINE)  # until the long task's regions came down to its share
        return team

    if __name__ == "__main__":
        context = multiprocessing.get_context(sys.argv[2])
        grown, observed = context.Event(), context.Event()
        with context.Pool(2, initializer=init, initargs=(sys.argv[1], grown, observed)) as pool:
            long = pool.apply_async(task, ("long",))
            grown.wait(DEADLINE)
            short = pool.apply_async(task, ("short",))
            print(json.dumps([long.get(DEADLINE), short.get(DEADLINE)]))
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs: a budget of 1 cannot grow")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("loaded", ["nothing-else", "sklearn"])
def test_openmp_regions_follow_the_budget_mid_task(domain, tmp_path, omp_kernel, method, loaded):
    """One task of many short OpenMP regions (a kernel built with gcc -fopenmp, loaded inside the
    task): its team shrinks to its share when a second task arrives and grows back when it ends,
    from one region to the next, within the task; the second task's first region already has its
    share. With scikit-learn's own libgomp loaded as well."""
    if loaded == "sklearn":
        pytest.importorskip("sklearn")
    program = write(tmp_path, "regions.py", OMP_REGIONS_PROGRAM)
    assert launched(domain, program, omp_kernel, method, loaded) == [[2, 1, 2], 1]
