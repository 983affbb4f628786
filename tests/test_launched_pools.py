"""Unchanged programs under ``python -m composepar``: the stdlib's pools, real native libraries.

The program never imports composepar: the launcher's hooks coordinate its
multiprocessing.Pool, ThreadPool and concurrent.futures executors, in every
start method; the native threads of the tasks running at once never exceed the
capacity; a lone task gets the whole budget (up to the CPUs its process may use);
and the main thread holds no token while it waits for the pool.
"""

import json
import os
import subprocess
import sys

import pytest

from composepar import usable_cpus
from conftest import START_METHODS

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "stdlib_pools.py")
CAPACITY = 4
LONE = min(CAPACITY, usable_cpus())  # a lone task gets the budget, never more than the CPUs its process may use


def run_launched(domain, kind, library, pool_kind, method, options=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSEPAR_")}
    result = subprocess.run(
        [sys.executable, "-m", "composepar", "-n", str(CAPACITY), "--domain", domain, *options,
         SCRIPT, kind, library or "-", pool_kind, method],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def check(report, tasks_in_main_process=0):
    assert report["violation"] == 0, f"{report['violation']} native threads at once on {CAPACITY}: {report}"
    assert all(1 <= team <= budget <= CAPACITY for _, budget, team in report["results"]), report
    assert report["lone"] == LONE, report
    # The waiting main thread gave its token back: the main process's only
    # running lease is the reading task itself when the pool is of threads.
    assert report["main_held"] == tasks_in_main_process, report


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("pool_kind", ["pool", "process-executor"])
def test_process_pools_of_an_unchanged_program(domain, omp_kernel, method, pool_kind):
    check(run_launched(domain, "openmp", omp_kernel, pool_kind, method))


@pytest.mark.parametrize("pool_kind", ["thread", "thread-executor"])
def test_thread_pools_of_an_unchanged_program(domain, omp_kernel, pool_kind):
    check(run_launched(domain, "openmp", omp_kernel, pool_kind, "fork"), tasks_in_main_process=1)


@pytest.mark.parametrize("kind", ["openblas", "tbb", "mkl"])
def test_other_libraries_under_the_launcher(domain, request, kind):
    library = {"openblas": None, "tbb": "tbb_kernel", "mkl": "mkl_library"}[kind]
    path = request.getfixturevalue(library) if library else None
    check(run_launched(domain, kind, path, "pool", "forkserver"))


LIBRARY_POOLS = r"""
# An unchanged program: pools that libraries create. Prints one JSON line:
# each task's thread budget as composepar set it (None: the task ran outside
# any lease), and how many tasks were seen running at once.
import json, os, sys, time


def task(directory, index):
    # Each task marks itself running in `directory` and waits until two tasks
    # have been seen running at once, so the overlap is a state reached, not a
    # hope about timing (the first task of a worker keeps it busy, so the
    # other worker must take the next one). Loky's workers are processes, so
    # the meeting point is a folder, for threads and processes alike.
    from composepar import _task  # reading the budget only: the program itself never imports composepar

    mine = os.path.join(directory, f"running-{os.getpid()}-{index}")
    open(mine, "w").close()
    met = os.path.join(directory, "met")
    seen, deadline = 1, time.monotonic() + 120
    while not os.path.exists(met) and time.monotonic() < deadline:
        seen = sum(name.startswith("running-") for name in os.listdir(directory))
        if seen >= 2:
            open(met, "w").close()
        else:
            time.sleep(0.001)
    budget = _task.current_budget()
    os.unlink(mine)
    return budget, os.getpid(), seen


if __name__ == "__main__":
    library, directory = sys.argv[1:3]
    calls = [(directory, i) for i in range(8)]
    if library == "dask-threads":
        import dask

        results = dask.compute(*[dask.delayed(task)(*call) for call in calls], scheduler="threads", num_workers=2)
    else:
        import joblib

        backend = "threading" if library == "joblib-threads" else "loky"
        results = joblib.Parallel(n_jobs=2, backend=backend)(joblib.delayed(task)(*call) for call in calls)
    print(json.dumps({"budgets": [budget for budget, _, _ in results],
                      "pids": sorted({pid for _, pid, _ in results}),
                      "most_at_once": max(seen for _, _, seen in results),
                      "met": os.path.exists(os.path.join(directory, "met"))}))
"""


@pytest.mark.parametrize("library", ["joblib-threads", "joblib-loky", "dask-threads"])
def test_pools_that_libraries_create(domain, tmp_path, library):
    pytest.importorskip(library.split("-")[0], reason="installed by the test extras")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSEPAR_")}
    script, meeting = tmp_path / "library_pools.py", tmp_path / "meeting"
    script.write_text(LIBRARY_POOLS)
    meeting.mkdir()
    result = subprocess.run([sys.executable, "-m", "composepar", "-n", str(CAPACITY), "--domain", domain,
                             str(script), library, str(meeting)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["met"] and report["most_at_once"] == 2, report  # two tasks ran at once, never more
    if library == "joblib-loky":
        assert len(report["pids"]) == 2, report  # in two worker processes
    # Every task ran inside a lease; two at once share the capacity.
    assert all(budget is not None and 1 <= budget <= CAPACITY for budget in report["budgets"]), report
    assert sum(sorted(report["budgets"])[:2]) <= CAPACITY


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_static_mode_is_a_fixed_split(domain, omp_kernel, method):
    report = run_launched(domain, "openmp", omp_kernel, "pool", method, options=("--static",))
    assert report["violation"] == 0
    # capacity // workers for every task, the lone one too: a static split does not adapt.
    assert {budget for _, budget, _ in report["results"]} == {CAPACITY // 2}
    assert report["lone"] == CAPACITY // 2


def test_numba_follows_the_budget(domain):
    pytest.importorskip("numba", reason="installed by the test extras where numba supports the Python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSEPAR_")}
    script = os.path.join(os.path.dirname(__file__), "scripts", "numba_pool.py")
    result = subprocess.run([sys.executable, "-m", "composepar", "-n", str(CAPACITY), "--domain", domain, script],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(threads == budget and 1 <= budget <= CAPACITY for threads, budget in report["results"]), report
    assert report["lone"] == [LONE, LONE]


def test_programs_launched_separately_share_one_budget(domain):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSEPAR_")}
    first = subprocess.Popen([sys.executable, "-m", "composepar", "-n", "2", "--domain", domain, "-c",
                              "import sys, time; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "up"  # its main thread holds its lease now
        second = subprocess.run(
            [sys.executable, "-m", "composepar", "--domain", domain, "-c",
             "import composepar, os, json; s = composepar.Arbiter().stats(); "
             "print(json.dumps([s.capacity, [p.pid for p in s.processes if p.threads_active]]))"],
            capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode == 0, second.stderr
        capacity, running = json.loads(second.stdout)
        assert capacity == 2  # joined the first program's budget, not a new one of its own
        assert first.pid in running  # both programs' main threads hold leases in it
        assert len(running) == 2
    finally:
        first.communicate("", timeout=60)
    assert first.returncode == 0
