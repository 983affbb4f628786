"""numexpr: an expression evaluated in the main thread and in Pool tasks."""

import multiprocessing

import numexpr
import numpy as np


def evaluate(seed):
    a = np.random.default_rng(seed).random(400_000)
    b = np.random.default_rng(seed + 1).random(400_000)
    total = float(numexpr.evaluate("sum(sin(a) * cos(b) + a * b)"))
    return total, numexpr.get_num_threads()


if __name__ == "__main__":
    total, threads = evaluate(0)
    print(f"main: {total:.6g}")
    print(f"THREADS numexpr_main {threads}")
    with multiprocessing.Pool(2) as pool:
        results = pool.map(evaluate, range(1, 7), chunksize=1)
    print(f"tasks: {sum(total for total, _ in results):.6g}")
    print(f"THREADS numexpr_in_task {max(threads for _, threads in results)}")
