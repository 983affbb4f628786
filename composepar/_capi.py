"""Where the C API is: the header composepar.h and the shared library libcomposepar.so.

Native runtimes and applications build against them to ask the same budget
as composepar's Python processes (see composepar.h for the calls, their
thread safety and fork behaviour)::

    LIB="$(python -c 'import composepar, os; print(os.path.dirname(composepar.get_library()))')"
    cc app.c -I"$(python -c 'import composepar; print(composepar.get_include())')" \\
       -L"$LIB" -lcomposepar -Wl,-rpath,"$LIB"

The header ships with the package sources (composepar/include); the library
is built by CMake and installed beside the compiled Python module
(composepar/_native), which in an editable install is not the source tree.
"""

import os

__all__ = ["get_include", "get_library"]

LIBRARY_NAME = "libcomposepar.so"


def get_include() -> str:
    """The directory holding ``composepar.h``: pass it to the compiler with ``-I``.

    Returns an absolute path (str). Raises ``FileNotFoundError`` naming the
    fix when the header is not there (a damaged install).
    """
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")
    if not os.path.isfile(os.path.join(directory, "composepar.h")):
        raise FileNotFoundError(
            f"composepar.h is not in {directory}: this composepar install is incomplete; reinstall it with "
            f"`pip install --force-reinstall composepar` (from a checkout: `pip install -e .`)"
        )
    return directory


def get_library() -> str:
    """The path of ``libcomposepar.so``, the C API's shared library.

    Link with it by path, or with ``-L<its directory> -lcomposepar``; add
    ``-Wl,-rpath,<its directory>`` (or set ``LD_LIBRARY_PATH``) so the program
    finds it when it runs. Returns an absolute path (str). Raises
    ``FileNotFoundError`` naming the fix when the library was not built (an
    install from before the C API, or a build without it).
    """
    from ._native import _arbiter  # the library is installed beside the compiled module

    directory = os.path.dirname(os.path.abspath(_arbiter.__file__))
    path = os.path.join(directory, LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{LIBRARY_NAME} is not in {directory} beside composepar's compiled module: this install was built "
            f"without the C API; rebuild it with `pip install -e .` from a checkout (or reinstall composepar)"
        )
    return path
