"""How many tasks this process's pools expect to run now, published to the arbiter.

    demand = sum over live pools of min(workers, outstanding tasks)

    multiprocessing Pool / ThreadPool   outstanding = pending results in pool._cache
                                        (a map counts its chunks not yet done)
    concurrent.futures executors        outstanding = submitted futures not done()
                                        (done() turns true before a waiter wakes, so
                                        a submit right after result() sees it)

Published at each submit and at each completion: a Pool's result (its result
handler thread calls ``settled``, _hooks), an executor's future (a done
callback), a pool terminated. The arbiter counts tasks expected but not yet
started as claimants, so the first task of a pool does not take its
siblings' share; a stale demand after the last task would cap the others
until the next publish, so every completion publishes (only a change
reaches the arbiter, and its followers hear of it there).
"""

import functools
import sys
import threading
import weakref

__all__ = ["before_submit", "after_submit", "publish", "settled"]

_lock = threading.Lock()  # guards the three fields below
_pools = weakref.WeakKeyDictionary()  # pool -> (workers, segment path it submits under)
_futures = weakref.WeakKeyDictionary()  # executor -> its submitted futures not yet done
_in_flight = weakref.WeakKeyDictionary()  # pool -> tasks being submitted, not yet in its cache
# Held from computing the demand to recording it, so two threads (a submit
# and a completion) cannot publish out of order.
_publish_lock = threading.Lock()
_published = {}  # segment path -> (arbiter, the demand last published there); under _publish_lock


def _outstanding(pool, workers):
    """Tasks of `pool` not yet done, counted up to `workers` (more changes nothing)."""
    futures = _futures.get(pool)
    if futures is not None:
        return len(futures)  # a done callback takes each one out (_future_done)
    # A multiprocessing pool: its module is loaded (not imported here, for start-up's sake).
    mp_pool = sys.modules["multiprocessing.pool"]
    if getattr(pool, "_state", None) == mp_pool.TERMINATE:
        return 0  # its pending results will never run
    cache = getattr(pool, "_cache", {})
    if len(cache) >= workers:
        return workers  # each entry is a result not yet complete: at least one task each
    total = 0
    for result in list(cache.values()):
        if isinstance(result, mp_pool.MapResult):
            total += max(0, result._number_left)
        elif isinstance(result, mp_pool.IMapIterator):
            length = result._length
            # _index counts the results received in order; _unsorted holds those received early.
            total += workers if length is None else max(0, length - result._index - len(result._unsorted))
        else:
            total += 0 if result.ready() else 1
    return total


def _demand(path):
    """The demand of the pools that submit under the segment at `path`."""
    with _lock:
        pools = [(pool, workers, _in_flight.get(pool, 0))
                 for pool, (workers, pool_path) in _pools.items() if pool_path == path]
    return sum(min(workers, _outstanding(pool, workers) + in_flight) for pool, workers, in_flight in pools)


def publish(arbiter):
    """Publishes the demand to `arbiter`'s segment if it changed there; returns it."""
    with _publish_lock:
        demand = _demand(arbiter.path)
        if demand != _published.get(arbiter.path, (None, None))[1]:
            arbiter.set_pool_demand(demand)
            _published[arbiter.path] = (arbiter, demand)
    return demand


def settled(pool):
    """A task of `pool` completed (or the pool stopped): publishes again in
    the segment it submitted under, whatever the environment says now.
    Never raises: it runs in the pool's own threads (a result handler, a
    future's done callback), which must not die of it."""
    try:
        with _lock:
            entry = _pools.get(pool)
        if entry is None:
            return
        published = _published.get(entry[1])
        if published is not None:
            publish(published[0])
    except Exception as error:  # noqa: BLE001 - the pool's thread must go on; the next publish corrects it
        _warn_once(error)


_warned = False


def _warn_once(error):
    global _warned
    if not _warned:
        _warned = True
        import warnings

        warnings.warn(f"composepar: publishing a pool's demand failed ({type(error).__name__}: {error}); it is "
                      f"published again at the next submit", RuntimeWarning, stacklevel=3)


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
    if future is not None:
        # Runs in the thread that completes it (at once if done already).
        future.add_done_callback(functools.partial(_future_done, weakref.ref(pool)))


def _future_done(pool_ref, future):
    pool = pool_ref()
    if pool is None:
        return
    with _lock:
        futures = _futures.get(pool)
        if futures is not None:
            futures.discard(future)
    settled(pool)


def reset_after_fork():
    global _lock
    _lock = threading.Lock()
    global _publish_lock
    _publish_lock = threading.Lock()
    _pools.clear()
    _futures.clear()
    _in_flight.clear()
    _published.clear()
