"""A limit the program sets itself is a ceiling composepar never undoes, and
composepar never starts a runtime the program has not started.

The program's channels: threadpoolctl (from any thread, as a context manager
or as a plain call), the libraries' own setters (omp_set_num_threads,
numba.set_num_threads), and the environment a runtime loads with (what Dask's
nanny and loky set in their workers). Thread counts are read inside parallel
regions where the runtime lets us (OpenMP, numba), from the library otherwise.
Programs that run OpenMP or numba regions run in a fresh interpreter: libgomp
is not fork-safe, and the pytest process forks workers in other tests.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import composepar
from composepar._threadpools import native_pools

TIMEOUT = 120  # seconds a child program may take on a loaded machine before the test fails


def openblas_threads():
    counts = {info["num_threads"] for info in threadpool_info() if info["internal_api"] == "openblas"}
    assert len(counts) == 1, counts
    return counts.pop()


def set_from_a_thread_that_ends(threads):
    """The program's own plain call (no `with`), left in force. From a thread
    that then ends: threadpoolctl makes a plain call's thread the controlling
    thread of OpenBLAS for as long as it lives."""
    setter = threading.Thread(target=lambda: threadpool_limits(limits=threads, user_api="blas"))
    setter.start()
    setter.join(TIMEOUT)


@pytest.fixture
def budget(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    arbiter = composepar.Arbiter(domain, capacity=2)
    if min(arbiter.capacity, composepar.usable_cpus()) < 2:
        pytest.skip("needs 2 usable CPUs: a budget of 1 cannot show a ceiling below it")
    return arbiter


def write_program(tmp_path, name, program):
    """`program` (indented source) as the file `name` in `tmp_path`; returns its path as a str."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(program))
    return str(path)


def run_launched(domain, *argv, **env):
    """Runs ``python -m composepar *argv`` in `domain`, with `env` added to this
    environment; returns the finished process, after checking that it exited 0."""
    environ = dict(os.environ, COMPOSEPAR_DOMAIN=domain, **env)
    result = subprocess.run([sys.executable, "-m", "composepar", *argv], env=environ, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result


def run_program(code, domain, **env):
    """Runs `code` in a fresh python in `domain`; returns its last stdout line, parsed as JSON."""
    environ = dict(os.environ, COMPOSEPAR_DOMAIN=domain, **env)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no new warnings
    return json.loads(result.stdout.splitlines()[-1])


def test_a_threadpool_limit_of_the_program_holds_inside_a_task(budget):
    import numpy  # noqa: F401 - loads OpenBLAS

    before = openblas_threads()
    with composepar.limit() as block:
        assert block.threads == 2 and openblas_threads() == 2
        with threadpool_limits(limits=1, user_api="blas"):
            native_pools.set_process_budget(2)  # what the follower does at every round
            assert openblas_threads() == 1
        assert openblas_threads() == 2  # threadpoolctl put back what it found
    assert openblas_threads() == before
    assert budget.stats().tokens_free == 2


def test_a_limit_held_by_another_thread_of_the_program_is_not_taken_over(budget):
    import numpy  # noqa: F401

    entered, leave = threading.Event(), threading.Event()
    seen = []

    def program_thread():
        with threadpool_limits(limits=1, user_api="blas"):
            entered.set()
            leave.wait(TIMEOUT)
            seen.append(openblas_threads())

    thread = threading.Thread(target=program_thread)
    thread.start()
    assert entered.wait(TIMEOUT)
    try:
        with composepar.limit():
            native_pools.set_process_budget(2)
            assert openblas_threads() == 1
    finally:
        leave.set()
        thread.join(TIMEOUT)
    assert seen == [1]
    # threadpoolctl's controlling thread is free again: the program can set OpenBLAS from any thread
    with threadpool_limits(limits=1, user_api="blas"):
        assert openblas_threads() == 1


def test_a_value_the_program_set_before_is_a_ceiling_and_stays_after(budget):
    import numpy  # noqa: F401

    before = openblas_threads()
    set_from_a_thread_that_ends(1)
    try:
        assert openblas_threads() == 1
        with composepar.limit() as block:
            assert block.threads == 2  # the lease has 2 tokens; the program's pool runs 1
            native_pools.set_process_budget(2)
            assert openblas_threads() == 1
        assert openblas_threads() == 1  # never undone
    finally:
        set_from_a_thread_that_ends(before)


def test_composepar_lowers_below_the_programs_limit_and_puts_it_back(budget):
    import numpy  # noqa: F401

    before = openblas_threads()
    budget.acquire(1)  # someone else holds half the machine
    try:
        with composepar.limit() as block:
            assert block.threads == 1 and openblas_threads() == 1
    finally:
        budget.release(1)
    assert openblas_threads() == before


OMP_PROGRAM = """
    import ctypes, json, composepar
    omp = ctypes.CDLL({kernel!r})
    teams = {{}}
    omp.omp_set_num_threads(1)                      # the program's own limit
    with composepar.limit():                       # the lease may have 2
        teams["program_limit_1"] = omp.omp_team(ctypes.c_long(200000))
    teams["after"] = omp.omp_budget()
    omp.omp_set_num_threads(2)
    with composepar.limit(1):
        teams["composepar_1"] = omp.omp_team(ctypes.c_long(200000))
        omp.omp_set_num_threads(3)                  # the program changes it inside the block
    teams["changed_inside"] = omp.omp_budget()
    print(json.dumps(teams))
"""


def test_omp_set_num_threads_of_the_program_is_a_ceiling(budget, omp_kernel):
    teams = run_program(OMP_PROGRAM.format(kernel=omp_kernel), budget.domain)
    assert teams == {"program_limit_1": 1, "after": 1, "composepar_1": 1, "changed_inside": 3}


OMP_MID_TASK_PROGRAM = """
    import ctypes, json, composepar
    omp = ctypes.CDLL({kernel!r})
    seen = {{}}
    with composepar.limit():                       # a lease of 2: the regions follow it (region hooks)
        seen["start"] = omp.omp_team(ctypes.c_long(200000))
        omp.omp_set_num_threads(1)                  # the program's own limit, mid-task
        seen["regions_after"] = [omp.omp_team(ctypes.c_long(200000)) for _ in range(3)]
    seen["kept"] = omp.omp_budget()                # the program's value stays when the task ends
    print(json.dumps(seen))
"""


def test_a_limit_the_program_sets_between_regions_is_a_ceiling_the_hooks_keep(budget, omp_kernel):
    """The region hooks set the team at every region; a value the program sets meanwhile is
    taken as its ceiling, never raised again, and left in place at the end."""
    seen = run_program(OMP_MID_TASK_PROGRAM.format(kernel=omp_kernel), budget.domain)
    assert seen == {"start": 2, "regions_after": [1, 1, 1], "kept": 1}


OMP_READ_PROGRAM = """
    import ctypes, json, threading, time, composepar
    from composepar import _task
    omp = ctypes.CDLL({kernel!r})
    spin = ctypes.c_long(200000)

    def until(condition):                          # waits on state, with a deadline
        end = time.monotonic() + 60
        while not condition() and time.monotonic() < end:
            time.sleep(0.005)
        return condition()

    seen = {{}}
    with composepar.limit():                       # the whole budget: 2
        seen["read"] = omp.omp_budget()            # the program reads the ICV (and may size work by it)
        arrived, done = threading.Event(), threading.Event()

        def newcomer():                            # a second task: the first one's share becomes 1
            with composepar.limit():
                arrived.set()
                done.wait(60)

        thread = threading.Thread(target=newcomer)
        thread.start()
        arrived.wait(60)
        seen["budget_shrank"] = until(lambda: _task.current_budget() == 1)
        seen["team_after_shrink"] = omp.omp_team(spin)  # what it read, not the new share
        seen["read_again"] = omp.omp_budget()      # a new read: the budget now
        seen["team_after_read"] = omp.omp_team(spin)
        done.set()
        thread.join(60)
    print(json.dumps(seen))
"""


def test_a_team_size_the_program_has_read_is_never_changed_behind_its_back(budget, omp_kernel):
    """With dynamic adjustment off, OpenMP guarantees the team the program read from
    omp_get_max_threads(): code may split its work by it. Once the task read it, the hooks change
    the ICV only at the program's next read, never between a read and the regions after it."""
    seen = run_program(OMP_READ_PROGRAM.format(kernel=omp_kernel), budget.domain)
    assert seen == {"read": 2, "budget_shrank": True, "team_after_shrink": 2, "read_again": 1,
                    "team_after_read": 1}


NUMBA_PROGRAM = """
    import json, os, numba, numpy
    from numba import njit, prange
    from numba.np.ufunc import parallel
    import composepar

    @njit(parallel=True)
    def thread_ids(n):
        ids = numpy.empty(n, numpy.int64)
        for i in prange(n):
            ids[i] = numba.get_thread_id()
        return ids

    seen = {{}}
    with composepar.limit():
        pass
    seen["launched_by_composepar"] = parallel._is_initialized
    pid = os.fork()                                # fork stays safe: no pool was started
    if pid == 0:
        os._exit(0)
    seen["child_status"] = os.waitpid(pid, 0)[1]
    with composepar.limit(1):                      # the first parallel call starts the pool
        seen["threads_in_region"] = len(set(thread_ids(4000).tolist()))
    numba.set_num_threads(1)                       # the program's own limit
    with composepar.limit():
        seen["program_limit_1"] = len(set(thread_ids(4000).tolist()))
    seen["after"] = numba.get_num_threads()
    print(json.dumps(seen))
"""


@pytest.mark.parametrize("layer", ["omp", "tbb", "workqueue"])
def test_numba_is_never_started_by_composepar_and_its_limit_holds(budget, layer):
    pytest.importorskip("numba")
    seen = run_program(NUMBA_PROGRAM.format(), budget.domain, NUMBA_THREADING_LAYER=layer)
    assert seen == {"launched_by_composepar": False, "child_status": 0, "threads_in_region": 1,
                    "program_limit_1": 1, "after": 1}


ENGINE_PROGRAM = """
    import json, multiprocessing
    from threadpoolctl import threadpool_info

    def task(_):
        import numpy
        numpy.ones((64, 64)) @ numpy.ones((64, 64))
        return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]

    if __name__ == "__main__":
        with multiprocessing.get_context("spawn").Pool(1) as pool:   # a lone task: its lease has every token
            print(json.dumps(pool.map(task, range(2))))
"""


def test_a_limit_in_the_workers_environment_is_a_ceiling(budget, tmp_path):
    """As Dask's nanny and loky do: *_NUM_THREADS=1 in the workers' environment."""
    result = run_launched(budget.domain, write_program(tmp_path, "engine.py", ENGINE_PROGRAM), OPENBLAS_NUM_THREADS="1")
    assert json.loads(result.stdout) == [[1], [1]]


def test_composepars_tbb_control_is_gone_when_no_task_runs(budget, tbb_kernel):
    seen = run_program(f"""
        import ctypes, json, composepar
        from composepar import _threadpools
        tbb = ctypes.CDLL({tbb_kernel!r})
        with composepar.limit(1):
            inside = tbb.tbb_team(ctypes.c_long(200000))
            held = _threadpools._tbb_control.current is not None
        print(json.dumps([inside, held, _threadpools._tbb_control.current is None]))
    """, budget.domain)
    assert seen == [1, True, True]


def test_numba_being_imported_by_another_thread_is_left_alone(monkeypatch):
    """The follower may scan while the program's main thread is still importing numba: a module
    importlib marks as initializing has not defined its names yet (it raised AttributeError)."""
    import importlib.machinery
    import types

    from composepar import _threadpools

    partial = types.ModuleType("numba.np.ufunc.parallel")
    partial.__spec__ = importlib.machinery.ModuleSpec("numba.np.ufunc.parallel", None)
    partial.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "numba.np.ufunc.parallel", partial)
    assert _threadpools._numba_parallel() is None
    assert all(pool.key[0] != "numba" for pool in native_pools.pools())


FOLLOWER_PROGRAM = """
    import ctypes, json, sys, composepar
    from composepar import _task
    if sys.argv[1:]:
        ctypes.CDLL(sys.argv[1])                   # a per-thread runtime (OpenMP) is loaded
    else:
        import numpy                               # OpenBLAS only: a per-process pool
    with composepar.limit():
        _task._process.wake.set()                  # as a lease start leaves it
        _task._follow_once(_task._process)         # one round of the follower
        print(json.dumps(_task._process.wake.is_set()))
"""


@pytest.mark.parametrize("runtime", ["openmp-without-region-hooks", "openmp", "openblas"])
def test_the_follower_sleeps_when_it_has_nothing_to_follow(budget, omp_kernel, runtime):
    """A per-thread runtime alone that cannot follow mid-task (GNU OpenMP with the region hooks
    off): leases are not refreshed mid-task, so the follower must not wait for events. With the
    hooks (GNU OpenMP follows at every region) or OpenBLAS alone, it follows the open lease."""
    environ = dict(os.environ, COMPOSEPAR_DOMAIN=budget.domain)
    if runtime == "openmp-without-region-hooks":
        environ["COMPOSEPAR_NO_REGION_HOOKS"] = "1"
    args = [omp_kernel] if runtime.startswith("openmp") else []
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FOLLOWER_PROGRAM), *args], env=environ,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == (runtime != "openmp-without-region-hooks")


FORKED_WORKERS_PROGRAM = """
    import concurrent.futures, json, multiprocessing, os, threading
    import numpy
    from threadpoolctl import threadpool_info
    import composepar

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]

    def helpers():
        # Threads of this process that are not Python's (main, composepar's refresher):
        # a pthreads OpenBLAS's helpers, the only native pool loaded here.
        return len(os.listdir("/proc/self/task")) - threading.active_count()

    inherited = None

    def record():  # a pool's initializer: runs before any task of the worker
        global inherited
        inherited = blas_threads()

    def task(_):
        seen = {"inherited": inherited, "helpers_at_start": helpers()}
        numpy.ones((256, 256)) @ numpy.ones((256, 256))
        seen["helpers_after_blas"] = helpers()
        seen["blas"] = blas_threads()
        return seen

    def child(queue):
        from composepar import _task
        queue.put([blas_threads()[0], _task.current_budget()])

    if __name__ == "__main__":
        fork = multiprocessing.get_context("fork")
        numpy.ones((256, 256)) @ numpy.ones((256, 256))   # the parent's helpers have run
        seen = {"parent": blas_threads()}
        with fork.Pool(2, initializer=record) as pool:
            seen["pool"] = pool.map(task, range(2), chunksize=1)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=fork, initializer=record) as executor:
            seen["executor"] = list(executor.map(task, range(2)))
        with composepar.Pool(2, initializer=record, context=fork) as pool:
            seen["one_thread_tasks"] = pool.map(task, range(2), chunksize=1, threads=1)
        parent = blas_threads()
        queue = fork.Queue()
        process = fork.Process(target=child, args=(queue,))
        process.start()
        seen["process"] = [parent, queue.get(timeout=60)]
        process.join(60)
        print(json.dumps(seen))
"""


def test_a_forked_pool_worker_restarts_no_blas_thread_its_budget_does_not_use(budget, tmp_path):
    """A pthreads OpenBLAS stops its helpers at fork, and the next call to its
    setter restarts them: a worker that inherited 2 threads and got a budget
    of 1 used to start a helper (spinning on a core its sibling needs) only to
    use none. Pool workers now inherit 1 thread, a task with 1 starts no
    helper; a task with a larger budget still gets it (the lone main thread's
    lease has 2 tokens, the parent's count); a plain forked Process is not
    lowered: its main thread's own lease sizes its pools."""
    result = run_launched(budget.domain, write_program(tmp_path, "forked_workers.py", FORKED_WORKERS_PROGRAM))
    assert result.stderr == "", result.stderr
    seen = json.loads(result.stdout)
    assert seen["parent"] == [2], seen
    for group in ("pool", "executor", "one_thread_tasks"):
        for worker in seen[group]:
            assert worker["inherited"] == [1], (group, seen)
            assert worker["blas"][0] <= 2, (group, seen)
    for worker in seen["one_thread_tasks"]:
        assert worker == {"inherited": [1], "helpers_at_start": 0, "helpers_after_blas": 0, "blas": [1]}, seen
    _, (child_blas, child_budget) = seen["process"]
    assert child_blas == child_budget, seen  # not a pool worker: its own lease for its main thread sizes it


PINNED_PROGRAM = """
    import json, multiprocessing, os
    import numpy
    import composepar

    def task(_):
        # The task's budget (not through limit(): a block's code may use the
        # budget itself, which unpins the task), and the tokens free meanwhile.
        from composepar import _task
        threads = _task.current_budget()
        free = composepar.Arbiter(os.environ["COMPOSEPAR_DOMAIN"]).stats().tokens_free
        with composepar.limit() as block:  # the program asks: the policy's share again
            free_in_block = composepar.Arbiter(os.environ["COMPOSEPAR_DOMAIN"]).stats().tokens_free
            return [threads, free, block.threads, free_in_block]

    if __name__ == "__main__":
        with multiprocessing.get_context("spawn").Pool(1) as pool:   # a lone task: the policy gives it every token
            print(json.dumps(pool.map(task, range(2))))
"""


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-at-1", "free"])
def test_a_task_the_program_pins_at_one_thread_leaves_the_tokens_to_others(budget, tmp_path, pinned):
    """Every pool the worker loaded is held at 1 by the program (OPENBLAS_NUM_THREADS=1
    in its environment, as loky and Dask's nanny do): the lease asks no extra
    token, so the budget keeps the one it could never use, until a limit()
    block in the task asks for the budget for the program's own code.
    Unpinned, the same lone task takes both (the test's control)."""
    env = {"OPENBLAS_NUM_THREADS": "1"} if pinned else {}
    result = run_launched(budget.domain, write_program(tmp_path, "pinned.py", PINNED_PROGRAM), **env)
    # The parent's main thread waits (its lease is given back), the worker's task runs alone.
    expected = [1, 1, 2, 0] if pinned else [2, 0, 2, 0]
    assert json.loads(result.stdout) == [expected, expected]


WAIT_IN_BLOCK_PROGRAM = """
    import concurrent.futures, json, multiprocessing, os
    import numpy
    import composepar

    def free():
        return composepar.Arbiter(os.environ["COMPOSEPAR_DOMAIN"]).stats().tokens_free

    def task(_):
        from composepar import _task
        seen = {"pinned": [_task.current_budget(), free()]}
        with composepar.limit() as block:
            with concurrent.futures.ThreadPoolExecutor(1) as inner:
                inner.submit(int).result()  # a wait: the lease is given back, then taken again
            seen["after_a_wait_in_the_block"] = [block.threads, free()]
        with composepar.limit(1) as block:  # asks nothing beyond one thread: stays pinned
            seen["limit_1"] = [block.threads, free()]
        seen["after_the_blocks"] = [_task.current_budget(), free()]
        return seen

    if __name__ == "__main__":
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print(json.dumps(pool.map(task, range(1))[0]))
"""


def test_a_limit_block_in_a_pinned_task_asks_its_share_until_it_ends(budget, tmp_path):
    """OPENBLAS_NUM_THREADS=1 pins the task; a limit() block in it asks the
    policy's share for the program's own code, across waits in the block;
    limit(1) asks nothing more; after the blocks the task is pinned again."""
    result = run_launched(budget.domain, write_program(tmp_path, "wait_in_block.py", WAIT_IN_BLOCK_PROGRAM),
                          OPENBLAS_NUM_THREADS="1")
    assert json.loads(result.stdout) == {"pinned": [1, 1], "after_a_wait_in_the_block": [2, 0], "limit_1": [1, 1],
                                         "after_the_blocks": [1, 1]}


# A program's OpenBLAS count, read from the library, and its own work repeated
# until that count reaches a value (a deadline only a hang reaches).
COMPUTE_UNTIL = """
    import time
    from threadpoolctl import threadpool_info

    def blas_threads():
        return max(i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas")

    def compute_until(threads, a):
        seen, end = [], time.monotonic() + 120
        while time.monotonic() < end:
            a @ a
            seen.append(blas_threads())
            if seen[-1] == threads:
                break
        return seen[-1]
"""

PARENT_AFTER_POOL_PROGRAM = """
    import json, multiprocessing, sys
    import numpy
    import sklearn.cluster  # its libgomp: a per-thread runtime, so the main thread's lease is not refreshed
""" + COMPUTE_UNTIL + """
    if __name__ == "__main__":
        a = numpy.ones((200, 200))
        before = blas_threads()
        pool = multiprocessing.get_context(sys.argv[1]).Pool(2)  # forked workers inherit 1 (fork)
        # The main thread computes before submitting anything, as plain python lets it.
        after = compute_until(before, a)
        pool.close()
        pool.join()
        print(json.dumps([before, after]))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_parent_gets_its_budget_back_after_forking_a_pool(budget, tmp_path, method):
    """The parent's OpenBLAS is held at 1 while it forks pool workers; with
    its main thread alone on the budget (2 tokens), it comes back to 2 without
    a wait of the program's to apply it (its lease, with a per-thread runtime
    loaded, is not refreshed). A spawn pool never lowers it."""
    pytest.importorskip("sklearn")
    result = run_launched(budget.domain, write_program(tmp_path, "parent_after_pool.py", PARENT_AFTER_POOL_PROGRAM),
                          method)
    assert json.loads(result.stdout) == [2, 2]


SUBPROCESS_CHILD = """
    import json, multiprocessing
    import numpy
""" + COMPUTE_UNTIL + """
    if __name__ == "__main__":
        a = numpy.ones((200, 200))
        before = blas_threads()
        with multiprocessing.get_context("fork").Pool(2) as pool:
            after = compute_until(before, a)
            pool.map(abs, range(4))
        print(json.dumps([before, after]))
"""


def test_a_python_child_gets_its_budget_back_after_forking_a_pool(budget, tmp_path):
    """A Python program a launched driver starts with subprocess holds a lease
    for its main thread (the .pth installs the hooks); the driver waits for
    it, so it is alone on the budget: after forking its pool workers, its
    own OpenBLAS comes back from the fork's 1 to its 2."""
    child = write_program(tmp_path, "child.py", SUBPROCESS_CHILD)
    driver = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, {child!r}]).returncode)"
    result = run_launched(budget.domain, "-c", driver)
    assert json.loads(result.stdout) == [2, 2]


def test_the_loaded_objects_are_read_from_the_loader(domain, omp_kernel):
    """loaded_object_names() agrees with loaded_objects_generation(), names a
    library just loaded, and a load that adds no pool candidate rescans
    nothing. In a fresh interpreter: the pytest process must not load libgomp."""
    seen = run_program(f"""
        import ctypes, ctypes.util, json, os
        from composepar._native import _arbiter as native
        from composepar._threadpools import native_pools

        generation, names = native.loaded_object_names()
        agrees = generation == native.loaded_objects_generation() and all(isinstance(n, bytes) for n in names)
        before = native_pools.pools()
        ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")  # a library that is no pool
        same = native_pools.pools() is before
        ctypes.CDLL({omp_kernel!r})  # and libgomp with it: a pool candidate
        names = [os.path.basename(n) for n in native.loaded_object_names()[1]]
        print(json.dumps([agrees, same, os.path.basename({omp_kernel!r}).encode() in names,
                          any(pool.name.startswith("openmp") for pool in native_pools.pools())]))
    """, domain)
    assert seen == [True, True, True, True]
