"""An unchanged program for test_launched_pools.py: pools that libraries create.

    python -m composepar -n 4 library_pools.py joblib-threads|joblib-loky|dask-threads

Prints one JSON line: each task's thread budget as composepar set it (None
would mean the task ran outside any lease) and how many ran at once.
"""

import json
import sys
import threading
import time

lock = threading.Lock()
running = [0, 0]  # now, most at once


def task(_):
    from composepar import _task  # reading the budget only; the program itself never imports composepar

    with lock:
        running[0] += 1
        running[1] = max(running)
    time.sleep(0.05)  # let the other worker's task start too
    budget = _task.current_budget()
    with lock:
        running[0] -= 1
    return budget


def task_in_process(_):
    """For process pools (loky): the budget, and the pid that ran it."""
    import os

    from composepar import _task

    time.sleep(0.05)
    return _task.current_budget(), os.getpid()


if __name__ == "__main__":
    if sys.argv[1] == "joblib-threads":
        import joblib

        budgets = joblib.Parallel(n_jobs=2, backend="threading")(joblib.delayed(task)(i) for i in range(8))
    elif sys.argv[1] == "joblib-loky":
        import joblib

        results = joblib.Parallel(n_jobs=2)(joblib.delayed(task_in_process)(i) for i in range(8))
        budgets = [budget for budget, _ in results]
        running[1] = len({pid for _, pid in results})  # worker processes that ran tasks
    else:
        import dask

        budgets = list(dask.compute(*[dask.delayed(task)(i) for i in range(8)], scheduler="threads", num_workers=2))
    print(json.dumps({"budgets": budgets, "most_at_once": running[1]}))
