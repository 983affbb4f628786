"""A program that sets impossible limits (0, negative) on its native pools, then works.

Whatever each library does with them (ignores them, raises, clamps) is what the program prints;
composepar must neither crash on them nor change what the library did. argv[1] is the OpenMP kernel.
"""

import ctypes
import multiprocessing
import sys

import numpy as np
from threadpoolctl import threadpool_limits

import _probe


def omp_after(path, value):
    omp = ctypes.CDLL(path)
    omp.omp_set_num_threads(value)
    return omp.omp_team(ctypes.c_long(200_000))


def blas_after(value):
    try:
        with threadpool_limits(limits=value, user_api="blas"):
            w = np.linalg.eigvalsh(_probe.symmetric(120, 1))
            return f"ok {w.sum():.6f} {_probe.blas_threads()}"
    except Exception as error:  # noqa: BLE001 - the library's own answer is what the program shows
        return f"{type(error).__name__}: {error}"


def task(args):
    path, value = args
    return omp_after(path, value), blas_after(value)


if __name__ == "__main__":
    path = sys.argv[1]
    for value in (0, -1):
        team = omp_after(path, value)
        print(f"main omp_set_num_threads({value})")
        print(f"THREADS omp_team_main {team}")
        print(f"main threadpool_limits({value}): {blas_after(value).rsplit(' ', 1)[0]}")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(task, [(path, 0), (path, -1)] * 2, chunksize=1)
    print(f"THREADS omp_team_task {max(team for team, _ in results)}")
    for _, blas in results:
        print(f"task threadpool_limits: {blas.rsplit(' ', 1)[0] if blas.startswith('ok') else blas}")
    try:
        import numba
    except ImportError:
        print("numba absent")
    else:
        try:
            numba.set_num_threads(0)
        except Exception as error:  # noqa: BLE001
            print(f"numba.set_num_threads(0): {type(error).__name__}")
