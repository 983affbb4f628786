"""Inspecting, replacing and removing segment files.

The launcher's rule, in ``open_budget``, for the capacity it wants (``-n``,
else $COMPOSEPAR_CAPACITY, else the CPUs the process may use) and the
domain's segment:

    no segment                       created with the capacity wanted
    same capacity                    joined
    another capacity, unused         re-created with the capacity wanted
    another capacity, in use         joined as it is; the launcher says so

"In use" means a live process has a slot in it (it took tokens, or holds a
lease); the test and the removal happen under the segment's mutex
(``retire_and_unlink``), and a process that had opened the old file before
it was unlinked finds it retired when it takes its slot and attaches again,
so a domain never splits into two budgets.
"""

import collections
import os
import stat

from . import _arbiter, _config
from ._errors import ArbiterError, CapacityMismatchError, SegmentRetiredError

__all__ = ["segment_exists", "remove_segment", "open_budget", "Budget"]

_OPEN_ATTEMPTS = 20  # rounds of "re-created under us" before giving up


class Budget(collections.namedtuple("Budget", ("capacity", "replaced", "users"))):
    """What open_budget found and did (immutable).

    capacity  the segment's capacity, as attached
    replaced  the capacity of an unused segment it re-created with the one wanted, or None
    users     pids of the live processes of a segment it joined whose capacity
              differs from the one wanted; empty otherwise
    """

    __slots__ = ()


def open_budget(domain, capacity):
    """Attaches this process to `domain`'s budget under the rule above, wanting
    `capacity` tokens, and takes its slot (so that the segment is in use from
    now on). Returns a Budget."""
    path = _config.segment_path(domain)
    replaced = None
    for _ in range(_OPEN_ATTEMPTS):
        users = []
        try:
            handle = _arbiter._native_handle(path, capacity)
        except CapacityMismatchError:
            handle = _arbiter._native_handle(path, None)
            users = handle.retire_and_unlink()
            if not users:
                replaced = handle.capacity
                _arbiter._forget_handle(path)
                continue
        try:
            handle.open_lease(0, 0).close()  # takes this process's slot
        except SegmentRetiredError:  # retired by another process after we opened it
            _arbiter._forget_handle(path)
            continue
        if handle.capacity == capacity:
            return Budget(handle.capacity, replaced, ())
        return Budget(handle.capacity, None, tuple(users))
    raise ArbiterError(f"could not attach to {path}: other processes kept re-creating it with other capacities; "
                       f"give them and this program the same -n, or separate domains with --domain")


def segment_exists(domain):
    return os.path.lexists(_config.segment_path(domain))


def remove_segment(domain, force=False):
    """Removes the domain's segment if no live process uses it.

    Returns the pids of live processes that prevented it (empty when it was
    removed or absent). With ``force``, a segment that cannot be attached
    (corrupt, truncated, another release's layout) is removed too, after
    checking it is a regular file of this user.
    """
    path = _config.segment_path(domain)
    if not os.path.lexists(path):
        return []
    try:
        handle = _arbiter._native_handle(path, None)
    except ArbiterError:
        if not force:
            raise
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ArbiterError(f"{path} is a directory, not a segment; if it is yours and holds nothing you "
                               f"need, remove it with `rm -r {path}`") from None
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise ArbiterError(f"{path} is not a regular file; if it is yours, remove it with `rm {path}`") from None
        if st.st_uid != os.geteuid():
            raise ArbiterError(f"{path} belongs to uid {st.st_uid}, not to you; only its owner can remove it") from None
        os.unlink(path)
        return []
    live = handle.retire_and_unlink()
    if not live:
        _arbiter._forget_handle(path)
    return live
