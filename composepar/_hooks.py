"""Patches that coordinate the application's own pools (installed by the launcher).

(stub: the real patches land in the next commit)
"""

__all__ = ["install", "installed"]

_installed = False


def install(static=False):
    """Patches multiprocessing.pool.Pool, concurrent.futures executors and the
    result-waiting calls in this process. Idempotent. ``static``: a fixed
    split of the capacity over each pool's workers instead of leases."""
    global _installed
    _installed = True


def installed():
    return _installed
