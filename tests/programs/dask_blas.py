"""Dask distributed: a LocalCluster of 2 single-threaded worker processes runs eigh tasks."""

import logging

import numpy as np
from dask.distributed import Client, LocalCluster

from _probe import blas_threads, report, symmetric


def task(seed):
    total = sum(np.linalg.eigh(symmetric(160, seed * 100 + step))[0].sum() for step in range(5))
    return total, blas_threads()


if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        results = client.gather(client.map(task, range(6)))
    print(f"eigenvalue sum {sum(total for total, _ in results):.6g}")
    report("blas_in_task", (threads for _, threads in results))
