"""(1) Balanced eig in threads: ThreadPool(C) maps np.linalg.eig over many 256x256 matrices."""

from multiprocessing.pool import ThreadPool

from . import _common

NAME = "eig_threads"
DESCRIPTION = "ThreadPool(C) maps eig over {tasks} random {size}x{size} matrices"
LAUNCHES_OWN_PROGRAMS = False


def params(cores, quick):
    return {"workers": cores, "tasks": (16 if quick else 48) * cores, "size": 256}


def tasks(p):
    return [(_common.eig_check, (seed, p["size"])) for seed in range(p["tasks"])]


def run(p):
    with ThreadPool(p["workers"], initializer=_common.worker_initializer) as pool:
        results = pool.starmap(_common.eig_check, [(seed, p["size"]) for seed in range(p["tasks"])])
    _common.verify_traces(results, NAME)
