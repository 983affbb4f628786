"""An unchanged program for test_launched_pools.py: stdlib pools, native tasks, no composepar import.

    python -m composepar -n 4 stdlib_pools.py KIND LIBRARY POOL METHOD

Prints one JSON line: the ledger's verdict, each task's (pid, budget, team),
a lone task's budget, and what the main thread held while it waited.
"""

import concurrent.futures
import json
import multiprocessing
import multiprocessing.pool
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _workers  # noqa: E402  (the tests' worker functions)


def main_thread_while_waiting(expected):
    """Run in a task: the main process's open leases once its main thread waits for us.

    The main thread submits, then waits: poll (for 10 s at most) until its
    lease is given back, and report what was seen last.
    """
    import time

    from composepar import Arbiter  # reading stats only; the program itself never imports composepar

    deadline = time.monotonic() + 10
    while True:
        line = Arbiter().stats().process(int(os.environ["MAIN_PID"]))
        held = None if line is None else line.threads_active
        if held == expected or time.monotonic() > deadline:
            return held
        time.sleep(0.01)


def run(pool_kind, context, kind, library, capacity):
    ledger = _workers.Ledger(multiprocessing.get_context("spawn" if pool_kind == "thread" else context), 1)
    init = (os.environ["COMPOSEPAR_DOMAIN"], ledger, capacity, kind, library)
    if pool_kind in ("pool", "thread"):
        cls = multiprocessing.pool.ThreadPool if pool_kind == "thread" else multiprocessing.get_context(context).Pool
        with cls(2, initializer=_workers.init_native_worker, initargs=init) as pool:
            results = pool.map(_workers.native_task, [4_000_000] * 8, chunksize=1)
            lone = pool.apply(_workers.native_task, (4_000_000,))[1]
            main_held = pool.apply(main_thread_while_waiting, (1 if pool_kind == "thread" else 0,))
    else:
        cls = (concurrent.futures.ThreadPoolExecutor if pool_kind == "thread-executor"
               else concurrent.futures.ProcessPoolExecutor)
        extra = {} if pool_kind == "thread-executor" else {"mp_context": multiprocessing.get_context(context)}
        with cls(2, initializer=_workers.init_native_worker, initargs=init, **extra) as executor:
            results = list(executor.map(_workers.native_task, [4_000_000] * 8))
            lone = executor.submit(_workers.native_task, 4_000_000).result()[1]
            main_held = executor.submit(main_thread_while_waiting, 1 if pool_kind == "thread-executor" else 0).result()
    return {"violation": ledger.violation.value, "results": results, "lone": lone, "main_held": main_held}


if __name__ == "__main__":
    kind, library, pool_kind, context = sys.argv[1:5]
    os.environ["MAIN_PID"] = str(os.getpid())
    capacity = int(os.environ["COMPOSEPAR_CAPACITY"])
    print(json.dumps(run(pool_kind, context, kind, library, capacity)))
