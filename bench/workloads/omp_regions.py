"""(7) OpenMP across processes: pool workers each running many short OpenMP parallel regions.

The kernel, bench/kernels/omp_regions.c, runs `regions` parallel-for
reductions in a row, each over `n` square roots; n grows with the cores so
that a whole-machine team still gets about 20 microseconds of work per thread
per region. Each region's fork and join barrier is what oversubscription makes
slow: libgomp's threads spin at barriers, and the spinners of one process take
the cores the other process's team is waiting on.

    omp_pool2      Pool(2), 3 tasks per worker
    omp_pool4      Pool(4), 2 tasks per worker (P > C on 2 cores: the static split is max(1, C // P) = 1)
    omp_one_busy   Pool(C) given a single, longer task: the static split gives it C // C = 1
                   thread and leaves the idle workers' cores unused; a lease can give it all
    omp_long_tail  Pool(C), 2C short tasks then one 8x longer: the long one starts beside
                   the short ones and runs alone once they end; the static split keeps it at
                   1 thread, composepar grows its team at its next region (region hooks)

libgomp is not fork-safe: this process only runs gcc (in prepare(), or in
run() if that was skipped) and forks the pool; the kernel is loaded in each
worker's initializer, before the threadpoolctl mode's limit so that it limits
libgomp too, and runs only in the workers. The omp-passive mode
(OMP_WAIT_POLICY=passive) makes the threads sleep at barriers instead.
"""

import ctypes
import multiprocessing

import numpy as np

from . import _common, _kernels

DESCRIPTION = ("Pool({workers}), {tasks} task(s) of {regions} OpenMP parallel regions in a row, "
               "each a reduction of {n} sqrt{tail}")
LAUNCHES_OWN_PROGRAMS = False
EXTRA_MODES = ("omp-passive",)
KERNEL = "omp_regions"
COMPILE_FLAGS = ("-O2", "-fopenmp", "-shared", "-fPIC")


# Regions per task put each run at about 1 s on 2 cores in the modes that do
# not oversubscribe; --quick takes a quarter. The oversubscribed modes (default,
# tbb) vary a lot from run to run, as a spinning team waits a whole time slice
# for a descheduled member at some barriers: the number of regions bounds them.
def _params(cores, quick, workers, tasks, regions):
    return {"workers": workers, "tasks": tasks, "regions": regions // 4 if quick else regions, "n": 8000 * cores,
            "tail": ""}


def params_pool2(cores, quick):
    return _params(cores, quick, workers=2, tasks=3 * 2, regions=4000)


# Fewer regions than Pool(2): 4 processes of C threads each on C cores make
# every region about 10x slower in the default mode.
def params_pool4(cores, quick):
    return _params(cores, quick, workers=4, tasks=2 * 4, regions=2500)


def params_one_busy(cores, quick):
    return _params(cores, quick, workers=cores, tasks=1, regions=20000)


def params_long_tail(cores, quick):
    p = _params(cores, quick, workers=cores, tasks=2 * cores, regions=2000)
    p["tail_regions"] = 8 * p["regions"]
    p["tail"] = f", then one task of {p['tail_regions']}"
    return p


VARIANTS = {"omp_pool2": params_pool2, "omp_pool4": params_pool4, "omp_one_busy": params_one_busy,
            "omp_long_tail": params_long_tail}


def prepare(p):
    _kernels.build(KERNEL, COMPILE_FLAGS)


_omp_regions = None  # the kernel's function, once loaded in this process


def _load_kernel():
    global _omp_regions
    if _omp_regions is None:
        function = _kernels.load(KERNEL).omp_regions
        function.restype = ctypes.c_double
        function.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_double)
        _omp_regions = function


def _initializer():
    _load_kernel()  # loading runs no region, and must come before the limit
    _common.worker_initializer()


def regions_task(seed, regions, n):
    """Runs the kernel with offset `seed`; returns its result."""
    _load_kernel()
    return _omp_regions(regions, n, float(seed))


def expected_result(seed, regions, n):
    """What regions_task(seed, regions, n) must return, computed by NumPy (no OpenMP here)."""
    return regions * float(np.sqrt(seed + np.arange(n) + 0.5).sum())


def _items(p):
    items = [(seed, p["regions"], p["n"]) for seed in range(p["tasks"])]
    if "tail_regions" in p:
        items.append((p["tasks"], p["tail_regions"], p["n"]))  # the long one, submitted last
    return items


def tasks(p):
    # One thread each: the limit's process has OMP_NUM_THREADS=1 in its
    # environment, which libgomp reads when regions_task() loads it.
    return [(regions_task, item) for item in _items(p)]


def run(p):
    prepare(p)  # two stat() calls when the runner's prepare() has built it
    with multiprocessing.Pool(p["workers"], initializer=_initializer) as pool:
        results = pool.starmap(regions_task, _items(p), chunksize=1)
    wrong = [seed for (seed, regions, n), result in zip(_items(p), results)
             if not np.isclose(result, expected_result(seed, regions, n), rtol=1e-9, atol=0.0)]
    if wrong:
        raise AssertionError(f"omp_regions: {len(wrong)} of {len(results)} checksums wrong (first: task {wrong[0]})")
