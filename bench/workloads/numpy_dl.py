"""(4) Unbalanced nested NumPy: the issue's "numpy_dl", after the SciPy composability papers.

One joblib Parallel(n_jobs=C) on loky runs stages one after another:

    matmul stage    max(1, C // 2) products of two large square matrices: fewer tasks than
                    workers, so half the cores idle unless the busy tasks' BLAS takes them
    eig stages      many small eig of random matrices, one stage per size in eig_sizes,
                    with eig_tasks[i] of them: far more tasks than workers, each best
                    run with one thread

A static split fits one kind of stage: 1 thread per worker wastes the matmul
stage's idle cores, the whole machine per worker oversubscribes the eig stages.
"""

import numpy as np

from . import _common, _joblib

NAME = "numpy_dl"
DESCRIPTION = ("joblib Parallel(n_jobs=C), loky: {matmuls} matmul of {matmul_size}x{matmul_size}, then eig stages "
               "of sizes {eig_sizes} with {eig_tasks} tasks")
LAUNCHES_OWN_PROGRAMS = False
EXTRA_MODES = ("joblib-inner",)


def params(cores, quick):
    if quick:
        return {"workers": cores, "matmuls": max(1, cores // 2), "matmul_size": 1500,
                "eig_sizes": [64, 128], "eig_tasks": [32 * cores, 8 * cores]}
    return {"workers": cores, "matmuls": max(1, cores // 2), "matmul_size": 2500,
            "eig_sizes": [64, 128, 256], "eig_tasks": [64 * cores, 16 * cores, 4 * cores]}


def matmul_check(seed, size):
    """a @ b of random matrices; returns whether (a @ b) v == a (b v) for a random v."""
    a = _common.random_matrix(seed, size)
    b = _common.random_matrix(seed + 1, size)
    v = np.random.default_rng(seed + 2).random(size)
    return bool(np.allclose((a @ b) @ v, a @ (b @ v), rtol=1e-10, atol=0.0))


def _stages(p):
    """The stages' (fn, args) lists, in order; seeds differ across stages."""
    stages = [[(matmul_check, (3 * i, p["matmul_size"])) for i in range(p["matmuls"])]]
    for stage, (size, count) in enumerate(zip(p["eig_sizes"], p["eig_tasks"])):
        stages.append([(_common.eig_check, (1000 * (stage + 1) + seed, size)) for seed in range(count)])
    return stages


def tasks(p):
    return [task for stage in _stages(p) for task in stage]


def run(p):
    matmul_stage, *eig_stages = _stages(p)
    products_right = _joblib.run_parallel(matmul_stage, n_jobs=p["workers"])
    if not all(products_right):
        raise AssertionError(f"{NAME}: {products_right.count(False)} of {len(products_right)} products wrong")
    for stage in eig_stages:
        _common.verify_traces(_joblib.run_parallel(stage, n_jobs=p["workers"]), NAME)
