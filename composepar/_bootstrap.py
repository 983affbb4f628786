"""Installs the hooks in every Python process started under the launcher.

The launcher exports COMPOSEPAR_LAUNCHED=1; multiprocessing spawn and
forkserver children, and Python programs started with subprocess, inherit it.
They are plain interpreters, so the launcher never runs in them: instead
``composepar-launcher.pth``, installed in site-packages, runs this at every
interpreter start::

    import os; os.environ.get("COMPOSEPAR_LAUNCHED") == "1" and __import__(...)

Without the variable the line costs one dictionary look-up and composepar is
not imported. (A child started with ``python -S`` skips .pth files and runs
without hooks.)
"""

import os
import warnings

__all__ = ["install_if_launched"]


def install_if_launched():
    """Installs the hooks if this process descends from the launcher. Never raises:
    a failure here would stop every Python program of the tree from starting."""
    if os.environ.get("COMPOSEPAR_LAUNCHED") != "1":
        return
    try:
        from . import _hooks, _task

        _hooks.install(static=os.environ.get("COMPOSEPAR_STATIC") == "1")
        if not _started_by_multiprocessing():
            # A Python program of the tree: its main thread holds a lease once it loads a native pool.
            _task.enter_main_thread_with_pools()
    except Exception as error:  # noqa: BLE001 - degrade to an unhooked process, loudly
        warnings.warn(
            f"composepar: could not install its hooks in this process ({type(error).__name__}: {error}); "
            f"it runs without coordinating its pools. Unset COMPOSEPAR_LAUNCHED to silence this",
            RuntimeWarning,
            stacklevel=1,
        )


# How multiprocessing and loky start their processes: `-c "from multiprocessing..."`
# (spawn's children, the forkserver, the resource tracker), `-m <loky's popen
# module>`, `-c "from joblib.externals.loky... import main"` (loky's resource
# tracker); and composepar's own command line (`-m composepar status`, a
# nested launcher: it takes its own lease).
_MULTIPROCESSING_STARTS = ("from multiprocessing.", "joblib.externals.loky.", "loky.",
                           "from joblib.externals.loky.", "from loky.", "composepar")


def _started_by_multiprocessing():
    """True if multiprocessing, loky or composepar's command line started
    this interpreter: a multiprocessing worker holds a lease while its
    target runs (or its tasks do, in a pool), which the hooks decide when it
    runs; the forkserver and the resource trackers hold none. On Python 3.9
    (no sys.orig_argv) a `python -c` or `-m` child cannot be told apart from
    them and holds none either, as with plain python."""
    import sys

    if "--multiprocessing-fork" in sys.argv:
        return True
    argv = getattr(sys, "orig_argv", None)
    if argv is None:
        return sys.argv[:1] in (["-c"], ["-m"])
    for flag in ("-c", "-m"):
        if flag in argv[1:-1]:
            return argv[argv.index(flag, 1) + 1].lstrip().startswith(_MULTIPROCESSING_STARTS)
    return False
