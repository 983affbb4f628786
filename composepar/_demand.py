"""How many tasks this process's pools expect to run now, published to the arbiter.

    demand = sum over live pools of min(workers, outstanding tasks)

    multiprocessing Pool / ThreadPool   outstanding = pending results in pool._cache
                                        (a map counts its chunks not yet done)
    concurrent.futures executors        outstanding = submitted futures not done()
                                        (done() turns true before a waiter wakes, so
                                        a submit right after result() sees it)

Published at each submit, when an executor's future completes, and by the
refresher every few milliseconds (a Pool's chunks finish in its result
thread, unseen). The arbiter counts tasks expected but not yet started as
claimants, so the first task of a pool does not take its siblings' share.
"""

import sys
import threading
import weakref

__all__ = ["before_submit", "after_submit", "publish", "republish", "has_demand"]

_lock = threading.Lock()  # guards the three fields below
_pools = weakref.WeakKeyDictionary()  # pool -> (workers, segment path it submits under)
_futures = weakref.WeakKeyDictionary()  # executor -> its submitted futures not yet seen done
_in_flight = weakref.WeakKeyDictionary()  # pool -> tasks being submitted, not yet in its cache
# Held from computing the demand to recording it, so two threads (a submit
# and the refresher) cannot publish out of order.
_publish_lock = threading.Lock()
_published = {}  # segment path -> (arbiter, the demand last published there); under _publish_lock


def _outstanding(pool):
    futures = _futures.get(pool)
    if futures is not None:
        pending = {future for future in futures if not future.done()}
        _futures[pool] = pending  # forget the finished ones
        return len(pending)
    # A multiprocessing pool: its module is loaded (not imported here, for start-up's sake).
    mp_pool = sys.modules["multiprocessing.pool"]
    if getattr(pool, "_state", None) == mp_pool.TERMINATE:
        return 0  # its pending results will never run
    total = 0
    for result in list(getattr(pool, "_cache", {}).values()):
        if isinstance(result, mp_pool.MapResult):
            total += max(0, result._number_left)
        elif isinstance(result, mp_pool.IMapIterator):
            length = result._length
            # _index counts the results received in order; _unsorted holds those received early.
            workers = _pools.get(pool, (1, None))[0]
            total += workers if length is None else max(0, length - result._index - len(result._unsorted))
        else:
            total += 0 if result.ready() else 1
    return total


def _demand(path):
    """The demand of the pools that submit under the segment at `path`."""
    with _lock:
        pools = [(pool, workers, _in_flight.get(pool, 0))
                 for pool, (workers, pool_path) in _pools.items() if pool_path == path]
    return sum(min(workers, _outstanding(pool) + in_flight) for pool, workers, in_flight in pools)


def has_demand():
    return any(demand for _, demand in list(_published.values()))


def publish(arbiter):
    """Publishes the demand to `arbiter`'s segment if it changed there; returns it."""
    with _publish_lock:
        demand = _demand(arbiter.path)
        if demand != _published.get(arbiter.path, (None, None))[1]:
            arbiter.set_pool_demand(demand)
            _published[arbiter.path] = (arbiter, demand)
    return demand


def republish():
    """The refresher's tick: publishes again wherever a demand was published
    (the segment the pools submitted under, whatever the environment says now)."""
    for arbiter, _ in list(_published.values()):
        publish(arbiter)


def before_submit(arbiter, pool, workers, new_tasks=None, executor=False):
    """Called before tasks are queued: publishes the demand with them counted,
    so no worker can start one while its siblings look absent. Returns the
    count to hand to after_submit. ``new_tasks`` None: a map of unknown
    length (every worker will be busy)."""
    workers = max(1, workers or 1)
    estimate = workers if new_tasks is None else new_tasks
    with _lock:
        _pools[pool] = (workers, arbiter.path)
        if executor:
            _futures.setdefault(pool, set())
        _in_flight[pool] = _in_flight.get(pool, 0) + estimate
    try:
        publish(arbiter)
    except BaseException:
        with _lock:
            _in_flight[pool] = max(0, _in_flight.get(pool, 0) - estimate)
        raise
    return estimate


def after_submit(arbiter, pool, estimate, future=None):
    """Called once the tasks are queued (in the pool's cache, or as `future`), or failed to be."""
    with _lock:
        _in_flight[pool] = max(0, _in_flight.get(pool, 0) - estimate)
        if future is not None:
            _futures[pool].add(future)
    publish(arbiter)


def reset_after_fork():
    global _lock
    _lock = threading.Lock()
    global _publish_lock
    _publish_lock = threading.Lock()
    _pools.clear()
    _futures.clear()
    _in_flight.clear()
    _published.clear()
