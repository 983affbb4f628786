"""composepar.limit: caps a block's native pools, borrowing from the arbiter; nests; restores."""

import ctypes
import threading

import pytest
from threadpoolctl import threadpool_info

import composepar


def openblas_threads():
    return [info["num_threads"] for info in threadpool_info() if info["internal_api"] == "openblas"]


@pytest.fixture
def omp(omp_kernel):
    return ctypes.CDLL(omp_kernel)


@pytest.fixture
def budget(domain, monkeypatch):
    monkeypatch.setenv("COMPOSEPAR_DOMAIN", domain)
    # 2: a block never gets more threads than the process's CPUs, and this
    # machine (and CI's) has 2; the rules below need no more to show.
    if composepar.usable_cpus() < 2:
        pytest.skip("needs 2 usable CPUs")
    return composepar.Arbiter(domain, capacity=2)


def test_limit_caps_openmp_and_openblas_and_restores(budget, omp):
    import numpy  # noqa: F401 - loads OpenBLAS

    before_omp, before_blas = omp.omp_budget(), openblas_threads()
    with composepar.limit(2) as block:
        assert block.threads == 2
        # Only the ICV is read here: running an OpenMP region in the pytest
        # process would make every later fork-started worker's region hang
        # (libgomp is not fork-safe). Real regions run in test_native_libs.
        assert omp.omp_budget() == 2
        assert set(openblas_threads()) == {2}
        assert budget.stats().tokens_free == 0  # borrowed from the arbiter
    assert omp.omp_budget() == before_omp and openblas_threads() == before_blas
    assert budget.stats().tokens_free == 2


def test_inner_limit_never_exceeds_the_outer(budget, omp):
    with composepar.limit(2):
        with composepar.limit(3) as inner:
            assert inner.threads == 2 and omp.omp_budget() == 2
        with composepar.limit(1) as inner:
            assert inner.threads == 1 and omp.omp_budget() == 1
        assert omp.omp_budget() == 2


def test_limit_restores_on_exceptions(budget, omp):
    before = omp.omp_budget()
    with pytest.raises(KeyError):
        with composepar.limit(1):
            raise KeyError("boom")
    assert omp.omp_budget() == before
    assert budget.stats().tokens_free == 2
    assert budget.invariant_violations() == ""


def test_limit_borrows_less_on_a_busy_machine(budget, omp):
    budget.acquire(1)
    with composepar.limit(2) as block:
        assert block.threads == 1  # its own token, the only one free, not 2
        assert omp.omp_budget() == 1
    budget.release(1)


def test_limit_none_is_the_fair_share(budget, omp):
    with composepar.limit() as block:
        assert block.threads == 2  # alone: everything
    budget.acquire(1)
    with composepar.limit() as block:
        assert block.threads == 1
    budget.release(1)


def test_limit_as_a_decorator_is_reentrant(budget, omp):
    seen = []

    @composepar.limit(1)
    def work(depth):
        seen.append(omp.omp_budget())
        if depth:
            work(depth - 1)

    work(2)
    assert seen == [1, 1, 1]
    assert budget.stats().tokens_free == 2


def test_limits_are_per_thread(budget, omp):
    inside, go = threading.Event(), threading.Event()
    seen = {}

    def other():
        with composepar.limit(1):
            seen["other"] = omp.omp_budget()
            inside.set()
            go.wait(10)

    before = omp.omp_budget()
    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    seen["main, outside any block"] = omp.omp_budget()
    with composepar.limit(2) as block:
        seen["main"] = omp.omp_budget()
        assert block.threads == 1  # the other thread's block holds the other token
    go.set()
    thread.join()
    assert seen == {"other": 1, "main, outside any block": before, "main": 1}


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_bad_limits_name_the_problem(bad, error):
    with pytest.raises(error, match="n must be"):
        composepar.limit(bad)
