"""Inspecting and removing segment files without attaching a slot to them."""

import os
import stat

from . import _arbiter, _config
from ._errors import ArbiterError

__all__ = ["segment_exists", "remove_segment"]


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
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise ArbiterError(f"{path} is not a regular file; remove it by hand if it is yours") from None
        if st.st_uid != os.geteuid():
            raise ArbiterError(f"{path} belongs to uid {st.st_uid}, not to you; only its owner can remove it") from None
        os.unlink(path)
        return []
    live = handle.retire_and_unlink()
    if not live:
        _arbiter._forget_handle(path)
    return live
