"""composepar's compiled core (private). Built by CMake from the sources beside this file."""

import os

try:
    from . import _arbiter as _arbiter
except ImportError as error:  # pragma: no cover - only in a broken or shadowed install
    here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"composepar's compiled core (composepar._native._arbiter) is not in {here}. If that is "
        f"composepar's source checkout, Python imported the sources instead of the installed package: run "
        f"from another directory, or install with `pip install -e .` so the checkout is the package"
    ) from error
