"""An OpenMP C kernel (tests/kernels/omp_team.c, path in argv[1]) run in Pool tasks.

Each task returns the team size that omp_get_num_threads() reported inside a real parallel region.
"""

import ctypes
import multiprocessing
import sys


def task(path):
    return ctypes.CDLL(path).omp_team(ctypes.c_long(2_000_000))


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        teams = pool.map(task, [sys.argv[1]] * 6, chunksize=1)
    print(f"tasks {len(teams)}")
    print(f"THREADS omp_team_in_task {max(teams)}")
