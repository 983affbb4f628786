"""Drop-in pools: the stdlib's behaviour, each task inside a lease, threads= (a dead worker: test_pool_breakage)."""

import concurrent.futures
import multiprocessing
import threading

import pytest

import _workers
import composepar
from composepar._cpus import process_cpus
from conftest import START_METHODS


@pytest.fixture
def budget(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    return composepar.Arbiter(domain, capacity=4)


def pool(method, processes=2, **kwargs):
    return composepar.Pool(processes, context=multiprocessing.get_context(method), **kwargs)


@pytest.mark.parametrize("method", START_METHODS)
def test_pool_methods_behave_like_the_stdlib(budget, method):
    with pool(method, initializer=_workers.remember_init, initargs=("ready",)) as p:
        assert p.apply(_workers.add, (2, 3)) == 5
        assert p.map(_workers.square, range(10)) == [x * x for x in range(10)]
        assert p.starmap(_workers.add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(p.imap(_workers.square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(p.imap_unordered(_workers.square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert p.map_async(_workers.square, [3]).get(60) == [9]
        assert p.starmap_async(_workers.add, [(5, 5)]).get(60) == [10]
        got = []
        p.apply_async(_workers.square, (4,), callback=got.append).wait(60)
        errors = []
        p.apply_async(_workers.fail, (1,), error_callback=errors.append).wait(60)
        with pytest.raises(KeyError, match="task 7 failed"):
            p.map(_workers.fail, [7])
        assert p.apply(_workers.initialized) == ["ready"]
    assert got == [16] and isinstance(errors[0], KeyError)
    assert budget.stats().tokens_free == 4
    assert budget.invariant_violations() == ""


def test_maxtasksperchild_close_and_join(budget):
    p = pool("fork", maxtasksperchild=1)
    pids = {pid for pid, _ in p.map(_workers.budget_now, range(6), chunksize=1)}
    p.close()
    p.join()
    assert len(pids) >= 3  # a fresh worker per task
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(_workers.square, (1,))


@pytest.mark.parametrize("method", START_METHODS)
def test_every_task_runs_inside_a_lease(budget, method):
    with pool(method) as p:
        results = p.map(_workers.budget_now, range(6), chunksize=1)
        _, lone = p.apply(_workers.budget_now)
    assert all(1 <= threads <= 4 for _, threads in results)
    assert lone == min(4, process_cpus())  # alone in the pool and on the machine: all it may use


def test_thread_pool_tasks_share_the_capacity(budget):
    barrier = threading.Barrier(2)

    def together(_):
        barrier.wait(10)  # both tasks hold their lease at once
        result = _workers.budget_now()
        barrier.wait(10)
        return result

    with composepar.ThreadPool(2) as p:
        results = p.map(together, range(2), chunksize=1)
    assert [threads for _, threads in results] == [2, 2]


def test_threads_request_waits_for_its_tokens(budget):
    budget.acquire(3)
    with pool("fork") as p:
        result = p.apply_async(_workers.budget_now, threads=2)
        assert not result.wait(0.3) and not result.ready()  # only 1 token free: it must wait
        budget.release(3)
        _, threads = result.get(60)
        assert threads == 2
        assert [t for _, t in p.map(_workers.budget_now, range(3), threads=1)] == [1, 1, 1]
    with pytest.raises(ValueError, match="threads must be at least 1"):
        composepar.Pool(1).apply(_workers.square, (1,), threads=0)


@pytest.mark.parametrize("executor", [composepar.ProcessPoolExecutor, composepar.ThreadPoolExecutor])
def test_executors_run_tasks_inside_leases(budget, executor):
    with executor(2) as ex:
        assert list(ex.map(_workers.square, range(5))) == [0, 1, 4, 9, 16]
        _, threads = ex.submit(_workers.budget_now).result(60)
        assert 1 <= threads <= 4
        with pytest.raises(KeyError):
            ex.submit(_workers.fail, 3).result(60)
    assert budget.stats().tokens_free == 4


def test_process_executor_still_reports_a_killed_worker(budget):
    with composepar.ProcessPoolExecutor(2) as ex:
        with pytest.raises(concurrent.futures.process.BrokenProcessPool):
            ex.submit(_workers.kill_self).result(60)
