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
        from . import _hooks

        _hooks.install(static=os.environ.get("COMPOSEPAR_STATIC") == "1")
    except Exception as error:  # noqa: BLE001 - degrade to an unhooked process, loudly
        warnings.warn(
            f"composepar: could not install its hooks in this process ({type(error).__name__}: {error}); "
            f"it runs without coordinating its pools. Unset COMPOSEPAR_LAUNCHED to silence this",
            RuntimeWarning,
            stacklevel=1,
        )
