"""(5) A pool whose tail is long: many eigh(1000), then one eigh(2000) the freed cores should help."""

import multiprocessing

from . import _common

NAME = "long_tail"
DESCRIPTION = "Pool(C), chunksize 1: eigh of {small_tasks} {small}x{small} then one {big}x{big}"
LAUNCHES_OWN_PROGRAMS = False


def params(cores, quick):
    if quick:
        return {"workers": cores, "small_tasks": 5 * cores, "small": 600, "big": 1200}
    return {"workers": cores, "small_tasks": 5 * cores, "small": 1000, "big": 2000}


def _items(p):
    return [(seed, p["small"]) for seed in range(p["small_tasks"])] + [(p["small_tasks"], p["big"])]


def tasks(p):
    return [(_common.eigh_check, item) for item in _items(p)]


def run(p):
    with multiprocessing.Pool(p["workers"], initializer=_common.worker_initializer) as pool:
        results = pool.starmap(_common.eigh_check, _items(p), chunksize=1)
    _common.verify_traces(results, NAME)
