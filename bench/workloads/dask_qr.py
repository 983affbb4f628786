"""(3) Dask QR on the threaded scheduler: tall-and-skinny QR of a random array, balanced or not.

    x = da.random.default_rng(seed).random((rows, cols), chunks=(about rows // k, cols))
    q, r = da.linalg.qr(x)          # tsqr: one QR per row chunk, then one of the stacked Rs
    da.allclose(q @ r, x).compute(scheduler="threads", num_workers=C)   # raises unless True

dask_qr runs it once with k = C chunks, every worker busy. dask_qr_unbalanced
runs it three times, with k = 1, C // 2 and C chunks (at least 1): in the first
stages most workers are idle, and a static split (P = C, so 1 thread per task)
cannot hand their cores to the busy ones.

The threadpoolctl mode applies its limit once in this process, before the
scheduler starts: OpenBLAS's thread count is per process, shared by dask's threads.
"""

import dask.array as da

from . import _common

DESCRIPTION = ("Dask threads (num_workers=C): QR of a {rows}x{cols} random array, one stage per chunk count "
               "in {chunks_per_stage}, checked q @ r == x")
LAUNCHES_OWN_PROGRAMS = False
SEED = 2016  # stage i's seed is SEED + i: every run factors the same matrices


def _params(cores, block_rows, chunks_per_stage):
    # block_rows: the rows of one chunk when there are C of them (at least cols,
    # so every chunk's QR is tall and skinny).
    return {"workers": cores, "rows": cores * block_rows, "cols": 1000, "chunks_per_stage": chunks_per_stage}


def params_balanced(cores, quick):
    return _params(cores, 1000 if quick else 3000, [cores])


# Smaller rows than the balanced one: its stages with one chunk run single-threaded
# under a static split, three stages in a row.
def params_unbalanced(cores, quick):
    return _params(cores, 1000 if quick else 1500, [1, max(1, cores // 2), cores])


VARIANTS = {"dask_qr": params_balanced, "dask_qr_unbalanced": params_unbalanced}


def _row_chunks(rows, chunks):
    """`rows` split into `chunks` sizes that differ by at most one."""
    return tuple(rows // chunks + (1 if i < rows % chunks else 0) for i in range(chunks))


def qr_stage(rows, cols, chunks, seed, scheduler, workers):
    """One stage: builds x, factors it, checks q @ r == x; raises AssertionError if not."""
    x = da.random.default_rng(seed).random((rows, cols), chunks=(_row_chunks(rows, chunks), (cols,)))
    q, r = da.linalg.qr(x)
    matches = da.allclose(q @ r, x).compute(scheduler=scheduler, num_workers=workers)
    if not matches:
        raise AssertionError(f"dask_qr: q @ r != x for a {rows}x{cols} array in {chunks} chunks")


def tasks(p):
    # The serial equivalent: each stage's whole dask graph (the same NumPy calls)
    # on the synchronous scheduler, one task per stage.
    return [(qr_stage, (p["rows"], p["cols"], chunks, SEED + stage, "synchronous", 1))
            for stage, chunks in enumerate(p["chunks_per_stage"])]


def run(p):
    _common.worker_initializer()
    for stage, chunks in enumerate(p["chunks_per_stage"]):
        qr_stage(p["rows"], p["cols"], chunks, SEED + stage, "threads", p["workers"])
