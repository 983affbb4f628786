"""composepar: one machine-wide budget of busy threads for nested parallelism.

See ``composepar._arbiter`` for the arbiter's policy and guarantees.

The public names are imported on first use (PEP 562): ``python -m composepar``
imports this package before every program it runs, and importing the pools
(multiprocessing, concurrent.futures) up front would cost each program ~40 ms
of start-up that only programs using them should pay.
"""

__version__ = "0.1.0"

# public name -> the private module defining it
_EXPORTS = {
    "Arbiter": "_arbiter",
    "Lease": "_arbiter",
    "ArbiterStats": "_stats",
    "ProcessStats": "_stats",
    "usable_cpus": "_cpus",
    "get_include": "_capi",
    "get_library": "_capi",
    "ArbiterError": "_errors",
    "CapacityMismatchError": "_errors",
    "WouldBlock": "_errors",
    "BrokenPoolError": "_broken",
    "limit": "_limit",
    "Pool": "_pools",
    "ProcessPoolExecutor": "_pools",
    "ThreadPool": "_pools",
    "ThreadPoolExecutor": "_pools",
}

__all__ = sorted(_EXPORTS)

TYPE_CHECKING = False  # type checkers read it as True and see the names statically
if TYPE_CHECKING:
    from ._arbiter import Arbiter as Arbiter
    from ._arbiter import Lease as Lease
    from ._broken import BrokenPoolError as BrokenPoolError
    from ._capi import get_include as get_include
    from ._capi import get_library as get_library
    from ._cpus import usable_cpus as usable_cpus
    from ._errors import ArbiterError as ArbiterError
    from ._errors import CapacityMismatchError as CapacityMismatchError
    from ._errors import WouldBlock as WouldBlock
    from ._limit import limit as limit
    from ._pools import Pool as Pool
    from ._pools import ProcessPoolExecutor as ProcessPoolExecutor
    from ._pools import ThreadPool as ThreadPool
    from ._pools import ThreadPoolExecutor as ThreadPoolExecutor
    from ._stats import ArbiterStats as ArbiterStats
    from ._stats import ProcessStats as ProcessStats


def __getattr__(name):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'composepar' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
