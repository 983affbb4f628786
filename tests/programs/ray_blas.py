"""Ray: ray.init(num_cpus=2) runs num_cpus=1 tasks of eigh."""

import numpy as np
import ray

from _probe import blas_threads, report, symmetric


@ray.remote(num_cpus=1)
def task(seed):
    total = sum(np.linalg.eigh(symmetric(160, seed * 100 + step))[0].sum() for step in range(5))
    return total, blas_threads()


if __name__ == "__main__":
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False, logging_level="ERROR",
             configure_logging=True)
    try:
        results = ray.get([task.remote(seed) for seed in range(6)])
    finally:
        ray.shutdown()
    print(f"eigenvalue sum {sum(total for total, _ in results):.6g}")
    report("blas_in_task", (threads for _, threads in results))
