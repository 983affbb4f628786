"""composepar: one machine-wide budget of busy threads for nested parallelism.

See ``composepar._arbiter`` for the arbiter's policy and guarantees.
"""

from ._arbiter import Arbiter as Arbiter
from ._arbiter import ArbiterStats as ArbiterStats
from ._arbiter import Lease as Lease
from ._arbiter import ProcessStats as ProcessStats
from ._cpus import usable_cpus as usable_cpus
from ._errors import ArbiterError as ArbiterError
from ._errors import BrokenPoolError as BrokenPoolError
from ._errors import CapacityMismatchError as CapacityMismatchError
from ._errors import WouldBlock as WouldBlock
from ._limit import limit as limit
from ._pools import Pool as Pool
from ._pools import ProcessPoolExecutor as ProcessPoolExecutor
from ._pools import ThreadPool as ThreadPool
from ._pools import ThreadPoolExecutor as ThreadPoolExecutor

__version__ = "0.1.0"

__all__ = [
    "Arbiter",
    "ArbiterError",
    "ArbiterStats",
    "BrokenPoolError",
    "CapacityMismatchError",
    "Lease",
    "Pool",
    "ProcessPoolExecutor",
    "ProcessStats",
    "ThreadPool",
    "ThreadPoolExecutor",
    "WouldBlock",
    "limit",
    "usable_cpus",
]
