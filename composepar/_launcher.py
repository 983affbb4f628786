"""Running a program under composepar: ``python -m composepar [options] script.py [args]``.

::

    _cli: options, Program(kind, target, args)
      |
    launch()  1  check the options and the COMPOSEPAR_* variables; open the script
              2  attach the budget of the domain (_segments.open_budget: created,
                 joined, or re-created if unused with another capacity) and take
                 a slot in it; at exit, remove it if no live process uses it
              3  export COMPOSEPAR_DOMAIN, _CAPACITY, _LAUNCHED (and _STATIC)
              4  set *_NUM_THREADS (to min(capacity, process_cpus())) and the
                 wait policies (_environment)
              5  install the hooks, open the main thread's lease
              6  run the program in a fresh __main__, as python would
      |
    every Python descendant (spawn, forkserver, subprocess) inherits step 3's
    variables; composepar-launcher.pth -> _bootstrap installs the hooks there

Step 4 must come before anything loads a BLAS or OpenMP runtime, which read
those variables once, at load: this module and everything it imports load
none (threadpoolctl only looks at what is already loaded).

Step 3 exports the capacity of the segment as attached, not the one asked
for, so a descendant that reads COMPOSEPAR_CAPACITY never meets a
CapacityMismatchError.

Step 6 does what CPython's own main does, so that the program cannot tell:

    sys.argv    [script as given, args] | [module's file, args] | ['-c', args] | ['-', args]
    sys.path[0] the script's real directory | the directory or zip itself |
                the working directory for -m | '' for -c and -  (nothing under -P / -I)
    __main__    a fresh module that stays in sys.modules after the program
                returns (non-daemon threads, atexit handlers and multiprocessing
                spawn still see the program's __main__); __file__ absolute
    -m, a directory or a zip with __main__.py: runpy._run_module_as_main, the
                function CPython's ``-m`` calls, with its error messages
    exit        the program's exceptions leave through Python's own exit path:
                SystemExit codes and messages, 1 and the traceback for an
                uncaught exception, and for KeyboardInterrupt the traceback then
                death by SIGINT after atexit handlers (the shell sees 130)

Tracebacks are cut at ``_run_program``: the frames of ``python -m composepar``
are not shown, so they read as under plain python (``-m`` keeps its two runpy
frames, as python shows them); composepar's frames in the middle (a patched
pool method between the program's call and the stdlib's frames) are dropped
too, for the exception and those chained to it.
"""

import builtins
import collections
import importlib.machinery
import importlib.util
import marshal
import os
import runpy
import sys
import types

from . import _arbiter, _config, _environment, _hooks, _segments, _task
from ._cpus import affinity_cpus, cgroup_cpu_limit, format_cpu_list, process_cpus

__all__ = ["Program", "launch"]

PROGRAM_KINDS = ("path", "module", "command", "stdin")


class Program(collections.namedtuple("Program", ("kind", "target", "args"))):
    """What to run, as python's own command line names it (immutable).

    kind    "path" (a script, a directory or a zip), "module" (-m), "command" (-c), "stdin" (-)
    target  the path as given, the module name, the code, or "-"
    args    sys.argv[1:] of the program, a tuple

    (A named tuple rather than a dataclass: importing dataclasses costs every
    launched program ~10 ms.)
    """

    __slots__ = ()

    def __new__(cls, kind, target, args=()):
        if kind not in PROGRAM_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PROGRAM_KINDS)}; got {kind!r} instead")
        return super().__new__(cls, kind, target, tuple(args))


def launch(program, *, threads=None, domain=None, static=False, no_env=False, verbose=False):
    """Runs `program` under the domain's budget. Returns the exit status for a
    launch that failed (2: bad option or variable, or, as python, a script that
    cannot be opened; 1: the arbiter refused) or 0 once the program returned;
    the program's own exceptions, SystemExit included, propagate."""
    try:
        domain = _config.resolve_domain(domain)
        capacity_asked = _config.resolve_capacity(threads)
        static = _config.resolve_flag("COMPOSEPAR_STATIC", static)
        no_env = _config.resolve_flag("COMPOSEPAR_NO_ENV", no_env)
        verbose = _config.resolve_flag("COMPOSEPAR_VERBOSE", verbose)
        _config.resolve_flag("COMPOSEPAR_NO_REGION_HOOKS")  # read by _threadpools: checked here, once
    except (TypeError, ValueError) as error:
        print(f"composepar: error: {error}", file=sys.stderr)
        return 2
    prepared = _prepare(program)
    if isinstance(prepared, int):
        return prepared

    cpus = process_cpus(max_age=0)
    try:
        budget = _segments.open_budget(domain, capacity_asked or cpus)
    except (RuntimeError, OSError) as error:  # ArbiterError, or every slot taken: the message says what to do
        print(f"composepar: error: cannot attach to the budget of domain {domain!r}: {error}", file=sys.stderr)
        return 1
    capacity = budget.capacity
    _arbiter.remove_at_exit_if_unused(_config.segment_path(domain))
    source = "-n/--threads" if threads is not None else "COMPOSEPAR_CAPACITY"
    if budget.users and capacity_asked is not None:
        print(f"composepar: {_joined(domain, capacity, budget.users)}, not the {capacity_asked} asked for with "
              f"{source}; to get {capacity_asked}, run when they are done or choose another --domain",
              file=sys.stderr)

    os.environ["COMPOSEPAR_DOMAIN"] = domain
    os.environ["COMPOSEPAR_CAPACITY"] = str(capacity)  # the segment's: descendants never meet a mismatch
    os.environ["COMPOSEPAR_LAUNCHED"] = "1"
    if static:
        os.environ["COMPOSEPAR_STATIC"] = "1"
    threads_here = min(capacity, cpus)  # never more threads than this process's CPUs
    environment_set = {} if no_env else _environment.set_thread_environment(threads_here)
    if verbose:
        _report_start(domain, capacity, static, no_env, environment_set)
        _report_budget(domain, budget, capacity_asked, source, cpus)

    _hooks.install(static=static)
    _task.enter_main_thread()
    _run_program(prepared)
    return 0


def _prepare(program):
    """Step 1 for the program: opens a script as python does (reporting as python
    does), and returns the function that sets up sys and runs it; or an exit status."""
    argv = list(program.args)
    if program.kind == "module":
        return lambda: _run_module(program.target, argv)
    if program.kind == "command":
        return lambda: _run_source(program.target, "<string>", ["-c", *argv], "", {})
    if program.kind == "stdin":
        return lambda: _run_source(sys.stdin.buffer.read(), "<stdin>", ["-", *argv], "",
                                   {"__file__": "<stdin>", "__cached__": None})

    path = program.target
    absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)  # as python: not normalised
    if _path_importer(absolute) is not None:  # a directory or a zip: run its __main__ module
        return lambda: _run_main_of_path(absolute, [path, *argv])
    try:
        with open(absolute, "rb") as file:
            data = file.read()
    except OSError as error:
        print(f"{sys.executable}: can't open file {absolute!r}: [Errno {error.errno}] {error.strerror}",
              file=sys.stderr)
        return 2
    path0 = os.path.dirname(os.path.realpath(path))
    if absolute.endswith(".pyc") or data[:2] == importlib.util.MAGIC_NUMBER[:2]:
        loader = importlib.machinery.SourcelessFileLoader("__main__", absolute)
    else:
        loader = importlib.machinery.SourceFileLoader("__main__", absolute)
    return lambda: _run_source(data, absolute, [path, *argv], path0,
                               {"__file__": absolute, "__cached__": None, "__loader__": loader})


def _path_importer(path):
    """What pkgutil.get_importer(path) returns, uncached (pkgutil costs ~5 ms to
    import): the first sys.path_hooks entry that takes `path` (a directory or
    a zip), or None for anything else."""
    for hook in sys.path_hooks:
        try:
            return hook(path)
        except ImportError:
            continue
    return None


def _run_program(run):
    """Runs the program. Its tracebacks are cut at this frame (see _cut_tracebacks)."""
    try:
        run()
    except BaseException as error:
        if not isinstance(error, SystemExit):
            _cut_tracebacks()
        raise  # Python's own exit path: exit status, KeyboardInterrupt's SIGINT, atexit


def _run_source(source, filename, argv, path0, attributes):
    main = _fresh_main(attributes)
    sys.argv = argv
    _set_path0(path0)
    if isinstance(attributes.get("__loader__"), importlib.machinery.SourcelessFileLoader):
        if source[:4] != importlib.util.MAGIC_NUMBER:
            raise RuntimeError("Bad magic number in .pyc file")  # python's message
        code = marshal.loads(source[16:])  # after magic, flags and two words of source stamp
    else:
        code = compile(source, filename, "exec", dont_inherit=True)
        if filename == "<string>" and sys.version_info >= (3, 13):
            _show_in_tracebacks(source, filename)
    try:
        exec(code, main.__dict__)
    finally:
        if "__file__" in attributes:  # as python does once a script or stdin program is done
            main.__dict__.pop("__file__", None)
            main.__dict__.pop("__cached__", None)


def _show_in_tracebacks(source, filename):
    """Python 3.13+ puts -c code in linecache, so that tracebacks show its lines."""
    import linecache

    linecache.cache[filename] = (len(source), None, [line + "\n" for line in source.splitlines()], filename)


def _run_module(name, argv):
    _fresh_main({})
    sys.argv = ["-m", *argv]  # runpy puts the module's file in argv[0] once found, as python -m
    _set_path0(os.getcwd())
    runpy._run_module_as_main(name, alter_argv=True)


def _run_main_of_path(path, argv):
    _fresh_main({})
    sys.argv = argv
    _set_path0(path, required=True)  # the entry __main__ is imported from
    runpy._run_module_as_main("__main__", alter_argv=False)


def _fresh_main(attributes):
    """A new __main__ module like the one python starts with, left in sys.modules."""
    main = types.ModuleType("__main__")
    main.__loader__ = importlib.machinery.BuiltinImporter
    if sys.version_info < (3, 14):
        main.__annotations__ = {}
    main.__builtins__ = builtins
    main.__dict__.update(attributes)
    sys.modules["__main__"] = main
    return main


def _set_path0(entry, required=False):
    """Puts `entry` first in sys.path in place of the launcher's own entry
    (python -m composepar's working directory, or the console script's
    directory). Under -P, PYTHONSAFEPATH or -I there is none, and python adds
    none either, except a directory or zip it runs."""
    if not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
        sys.path[0] = entry
    elif required:
        sys.path.insert(0, entry)


def _cut_tracebacks():
    """Makes sys.excepthook, as it is now, show only the program's frames, for
    the exception and every exception chained to it (cause and context)."""
    hook = sys.excepthook

    def excepthook(exc_type, value, traceback):
        traceback = _program_frames(traceback)
        if isinstance(value, BaseException):
            value.__traceback__ = traceback  # 3.12+ print the exception's own traceback
            _cut_chained(value)
        hook(exc_type, value, traceback)

    sys.excepthook = excepthook


def _cut_chained(error):
    seen = {id(error)}
    pending = [error.__cause__, error.__context__]
    while pending:
        chained = pending.pop()
        if chained is None or id(chained) in seen:
            continue
        seen.add(id(chained))
        chained.__traceback__ = _program_frames(chained.__traceback__)
        if (type(chained).__module__, type(chained).__name__) in _REMOTE_TRACEBACKS and isinstance(
                getattr(chained, "tb", None), str):
            chained.tb = _without_package_frames(chained.tb)
        pending += [chained.__cause__, chained.__context__]


# The stdlib's carriers of a worker's formatted traceback (the cause of an
# exception a pool re-raises): their text holds the worker's frames.
_REMOTE_TRACEBACKS = {("multiprocessing.pool", "RemoteTraceback"),
                      ("concurrent.futures.process", "_RemoteTraceback")}


def _without_package_frames(text):
    """A formatted traceback without composepar's frames: each '  File "..."'
    line under the package and the indented source and caret lines after it."""
    lines = text.splitlines(keepends=True)
    kept, skipping = [], False
    for line in lines:
        if line.startswith('  File "'):
            skipping = line[len('  File "'):].startswith(_PACKAGE_DIRECTORY)
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return "".join(kept)


_PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _program_frames(traceback):
    """`traceback` as python would show it for the program: the part below
    _run_program (and this module's helpers under it), without composepar's
    frames in the middle (its pool hooks and task wrappers between the
    program's call and the stdlib's frames). A new chain: the frames are
    shared, the traceback objects the caller holds are left as they were."""
    entry = traceback
    while entry is not None and entry.tb_frame.f_code is not _run_program.__code__:
        entry = entry.tb_next
    if entry is not None:  # raised through the program: start below the launcher
        entry = entry.tb_next
        while entry is not None and entry.tb_frame.f_code.co_filename == _run_program.__code__.co_filename:
            entry = entry.tb_next
    else:
        entry = traceback
    kept = []
    while entry is not None:
        if not entry.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIRECTORY):
            kept.append(entry)
        entry = entry.tb_next
    cut = None
    for entry in reversed(kept):
        cut = types.TracebackType(cut, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return cut


def _report_start(domain, capacity, static, no_env, environment_set):
    mode = "static split over each pool's workers" if static else "a lease per task"
    print(f"composepar: domain {domain!r} ({_config.segment_path(domain)}), capacity {capacity}, {mode}",
          file=sys.stderr)
    if no_env:
        print("composepar: thread-count and wait-policy variables left as they are (--no-env)", file=sys.stderr)
    else:
        names = list(_environment.THREAD_COUNT_VARIABLES) + list(_environment.WAIT_POLICY_VARIABLES)
        set_text = " ".join(f"{name}={environment_set[name]}" for name in names if name in environment_set)
        kept = " ".join(f"{name}={os.environ[name]}" for name in names
                        if name not in environment_set and os.environ.get(name))
        unset = " ".join(name for name in names if name not in environment_set and not os.environ.get(name))
        print(f"composepar: set {set_text or 'nothing'}" + (f"; kept the user's {kept}" if kept else "")
              + (f"; left unset {unset}" if unset else ""), file=sys.stderr)
    import atexit

    atexit.register(_report_pools)  # registered before the program's handlers: runs after them


def _joined(domain, capacity, users):
    pids = ", ".join(str(pid) for pid in users[:5]) + (" ..." if len(users) > 5 else "")
    return (f"joined the budget of domain {domain!r} with its capacity {capacity}: {len(users)} live "
            f"process{'es' if len(users) > 1 else ''} use{'' if len(users) > 1 else 's'} it (pid {pids})")


def _report_budget(domain, budget, capacity_asked, source, cpus):
    """-v: how the budget was decided, and why, when it is not simply this process's CPUs."""
    if budget.replaced is not None:
        print(f"composepar: re-created the unused budget of domain {domain!r} (capacity {budget.replaced}) with "
              f"capacity {budget.capacity}, " + (f"as asked with {source}" if capacity_asked is not None
                                                 else "the CPUs this process may use"), file=sys.stderr)
    if budget.users:
        wanted = f"the {capacity_asked} asked for with {source}" if capacity_asked else f"this process's {cpus} CPUs"
        print(f"composepar: {_joined(domain, budget.capacity, budget.users)}; a used budget keeps its capacity, "
              f"not {wanted}", file=sys.stderr)
    if budget.capacity == cpus:
        return
    quota = cgroup_cpu_limit()
    where = f"affinity {format_cpu_list(affinity_cpus())}" + (f", cgroup quota {quota:g}" if quota else "")
    why = (f"asked with {source}" if budget.capacity == capacity_asked
           else "the budget is in use" if budget.users else "the domain's budget")
    cpus_text = f"{cpus} CPU" + ("s" if cpus > 1 else "")
    if budget.capacity > cpus:
        decision = (f"{why}; this process's tasks are capped at its {cpus_text} (never more threads than CPUs), "
                    f"the budget's other processes share the rest")
    else:
        decision = f"{why}; its processes together get at most {budget.capacity} busy threads"
    print(f"composepar: the budget has capacity {budget.capacity} and this process may use {cpus_text} "
          f"({where}): {decision}", file=sys.stderr)


def _report_pools():
    try:
        from ._threadpools import native_pools

        lines = native_pools.describe()
    except Exception as error:  # noqa: BLE001 - --verbose output only; the program's exit status stands
        lines = [f"could not list them: {type(error).__name__}: {error}"]
    print(f"composepar: native pools at exit: {len(lines) or 'none loaded'}", file=sys.stderr)
    for line in lines:
        print(f"composepar:   {line}", file=sys.stderr)
