"""``python -m composepar``: the command line.

    python -m composepar [options] (script.py | -m module | -c code | -) [args ...]
    python -m composepar status  [--domain D] [--json]
    python -m composepar cleanup [--domain D] [--force]

A first argument ``status`` or ``cleanup`` is a subcommand; anything else
runs a program (see _launcher). As with python, the launcher's options end at
the program: ``python -m composepar -n 2 script.py -n 3`` gives ``-n 3`` to
the script. Usage errors print one line on stderr and exit with 2, as Python
does.

argparse is imported only for --help, a usage error, or a subcommand: the
common launch (``-n N``, ``--domain D``, flags) is read by _simple_options,
since importing argparse costs every launched program ~7 ms.
"""

import sys

from . import _config
from ._arbiter import Arbiter
from ._cpus import process_cpus
from ._errors import ArbiterError
from ._launcher import Program, launch
from ._native import _arbiter as _native
from ._segments import remove_segment, segment_exists

__all__ = ["main"]

_SUBCOMMANDS = ("status", "cleanup")
_OPTIONS_WITH_VALUE = ("-n", "--threads", "--domain")  # the launcher's; their value is the next argument

_USAGE = """python -m composepar [options] (script.py | -m module | -c code | -) [args ...]
       python -m composepar status  [--domain D] [--json]
       python -m composepar cleanup [--domain D] [--force]"""

_DESCRIPTION = """\
Runs a Python program as `python script.py`, `python -m module`, `python -c code`
or `python -` would, with every process of it sharing one budget of busy threads:
pools of processes and threads, and the BLAS/OpenMP threads of their tasks, are
kept at the capacity together. Options after the program are the program's.

  status    show the budget: capacity, free tokens, attached processes
  cleanup   remove a budget's segment that no live process uses"""

_EPILOG = """\
Each option has a variable, which the option overrides: COMPOSEPAR_CAPACITY,
COMPOSEPAR_DOMAIN, COMPOSEPAR_STATIC=1, COMPOSEPAR_NO_ENV=1, COMPOSEPAR_VERBOSE=1.
Exit status: the program's; 2 for a bad option (or, as python, a script that
cannot be opened); 1 when the budget cannot be attached."""


def _parser_class():
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"composepar: error: {message}\n")

    return _Parser


class _UsageError(Exception):
    """-m or -c without its value."""


def _threads_or_none(text):
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 1 <= value <= _native.MAX_CAPACITY else None


def _threads(text):
    value = _threads_or_none(text)
    if value is None:
        import argparse

        raise argparse.ArgumentTypeError(
            f"must be an integer between 1 and {_native.MAX_CAPACITY}; got {text!r} instead")
    return value


class _LaunchOptions:
    """The launcher's options, as _build_launcher_parser would parse them."""

    def __init__(self):
        self.threads = None
        self.domain = None
        self.static = False
        self.no_env = False
        self.verbose = False


_FLAGS = {"--static": "static", "--no-env": "no_env", "-v": "verbose", "--verbose": "verbose"}


def _simple_options(options):
    """Parses `options` (from _split) if each is a plain, valid use of an option;
    None for anything else (--help, an unknown or bad option): argparse then
    parses them and words the message."""
    parsed = _LaunchOptions()
    i = 0
    while i < len(options):
        option = options[i]
        name, equals, value = option.partition("=") if option.startswith("--") else (option, "", "")
        if option in _FLAGS:
            setattr(parsed, _FLAGS[option], True)
            i += 1
            continue
        if name not in _OPTIONS_WITH_VALUE:
            return None
        if not equals:
            if i + 1 >= len(options):
                return None
            value = options[i + 1]
            i += 1
        i += 1
        if name == "--domain":
            if value.startswith("-"):
                return None  # argparse refuses it as a value: let it say so
            parsed.domain = value
        else:
            parsed.threads = _threads_or_none(value)
            if parsed.threads is None:
                return None
    return parsed


def _build_launcher_parser():
    import argparse

    parser = _parser_class()(prog="python -m composepar", usage=_USAGE, description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("-n", "--threads", type=_threads, metavar="N",
                        help="capacity: busy threads for the whole domain (default $COMPOSEPAR_CAPACITY, "
                             "else the CPUs this process may use); a budget other live processes use keeps its "
                             "own, an unused one is re-created with N")
    parser.add_argument("--domain", metavar="D",
                        help="which budget to share (default $COMPOSEPAR_DOMAIN, else 'default' for a process "
                             "that may use every CPU, or one budget per CPU set, e.g. 'cpus-0-3')")
    parser.add_argument("--static", action="store_true",
                        help="split the capacity evenly over each pool's workers instead of a lease per task")
    parser.add_argument("--no-env", action="store_true",
                        help="do not set OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, ... and the OpenMP wait policy")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the budget, the variables set, and the native pools found at exit")
    return parser


def _split(argv):
    """Splits the arguments as python splits its own: the launcher's options,
    then the program, which starts at the first argument that is not an option
    (a script, or - for stdin), at -m MODULE or -c CODE, or after --.
    Returns (option arguments, Program or None)."""
    options = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1:]
            if not rest:
                return options, None
            kind = "stdin" if rest[0] == "-" else "path"
            return options, Program(kind, rest[0], tuple(rest[1:]))
        if arg == "-":
            return options, Program("stdin", "-", tuple(argv[i + 1:]))
        if not arg.startswith("-"):
            return options, Program("path", arg, tuple(argv[i + 1:]))
        if arg.startswith("--"):
            options.append(arg)
            if arg in _OPTIONS_WITH_VALUE and i + 1 < len(argv):
                options.append(argv[i + 1])
                i += 1
            i += 1
            continue
        # A cluster of short options, as python takes them: -v, -vn4, -vm module.
        for j in range(1, len(arg)):
            letter, attached = arg[j], arg[j + 1:]
            if letter in "mc":
                if not attached and i + 1 >= len(argv):
                    what = "a module name" if letter == "m" else "the code to run"
                    raise _UsageError(f"argument -{letter}: expected {what}")
                value = attached or argv[i + 1]
                rest = argv[i + 1:] if attached else argv[i + 2:]
                return options, Program("module" if letter == "m" else "command", value, tuple(rest))
            if letter == "n":
                options.append("-n")
                if attached:
                    options.append(attached)
                elif i + 1 < len(argv):
                    options.append(argv[i + 1])
                    i += 1
                break
            if letter in "hv":
                options.append(f"-{letter}")
                continue
            options.append(arg if j == 1 else f"-{arg[j:]}")  # argparse names it unrecognized
            break
        i += 1
    return options, None


def _launch(argv):
    try:
        options, program = _split(argv)
    except _UsageError as error:
        _build_launcher_parser().error(str(error))
    args = _simple_options(options) if program is not None else None
    if args is None:
        parser = _build_launcher_parser()
        args = parser.parse_args(options)
    if program is None:
        parser.error("no program to run: give a script, -m module, -c code or - (the program on stdin); "
                     "see --help")
    return launch(program, threads=args.threads, domain=args.domain, static=args.static, no_env=args.no_env,
                  verbose=args.verbose)


_DOMAIN_HELP = "which budget (default $COMPOSEPAR_DOMAIN, else this process's: 'default' or its CPU set's)"


def _build_parser():
    parser = _parser_class()(prog="python -m composepar", description="Composable threading for nested parallelism.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    status = commands.add_parser("status", help="show the budget: capacity, free tokens, attached processes")
    status.add_argument("--domain", help=_DOMAIN_HELP)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    cleanup = commands.add_parser("cleanup", help="remove a segment that no live process uses")
    cleanup.add_argument("--domain", help=_DOMAIN_HELP)
    cleanup.add_argument(
        "--force", action="store_true", help="also remove a segment that cannot be attached (corrupt, other release)"
    )
    for sub in (status, cleanup):
        sub.error = parser.error.__get__(sub)
    return parser


def _status(args):
    import json

    domain = _config.resolve_domain(args.domain)
    if not segment_exists(domain):
        if args.json:
            print(json.dumps({"domain": domain, "path": _config.segment_path(domain), "exists": False}))
        else:
            print(f"composepar: no arbiter yet for domain {domain!r} ({_config.segment_path(domain)}); the first "
                  f"program launched in it creates it with its -n or COMPOSEPAR_CAPACITY, else the CPUs it may "
                  f"use ({process_cpus()} here)")
        return 0
    stats = Arbiter._as_is(domain).stats()  # COMPOSEPAR_CAPACITY is for creating a budget, not for looking
    if args.json:
        print(json.dumps({
            "domain": stats.domain, "path": stats.path, "exists": True, "capacity": stats.capacity,
            "tokens_free": stats.tokens_free, "tokens_held": stats.tokens_held,
            "leases_overdrawn": stats.leases_overdrawn, "tokens_reclaimed": stats.tokens_reclaimed,
            "processes_reaped": stats.processes_reaped,
            "processes": [
                {"pid": p.pid, "command": p.command, "threads_active": p.threads_active,
                 "leases_overdrawn": p.leases_overdrawn, "tokens_held": p.tokens_held,
                 "tokens_extra": p.tokens_extra, "tokens_explicit": p.tokens_explicit,
                 "tokens_wanted": p.tokens_wanted, "waiters": p.waiters, "tokens_waited": p.tokens_waited,
                 "pool_demand": p.pool_demand, "pool_leases_open": p.pool_leases_open}
                for p in stats.processes
            ],
        }))
        return 0
    print(f"domain {stats.domain}  ({stats.path})")
    print(f"capacity {stats.capacity}  free {stats.tokens_free}  held {stats.tokens_held}  "
          f"overdrawn {stats.leases_overdrawn}  reclaimed {stats.tokens_reclaimed} tokens "
          f"from {stats.processes_reaped} dead processes")
    if stats.processes:
        print(f"{'PID':>8}  {'COMMAND':<15}  {'THREADS':>7}  {'EXTRA':>5}  {'ACQUIRED':>8}  {'WAITING':>7}  "
              f"{'POOL TASKS':>10}")
        for p in stats.processes:
            print(f"{p.pid:>8}  {p.command:<15}  {p.threads_active:>7}  {p.tokens_extra:>5}  "
                  f"{p.tokens_explicit:>8}  {p.tokens_waited:>7}  {p.pool_leases_open:>4} / {p.pool_demand:<3}")
    else:
        print("no process attached")
    return 0


def _cleanup(args):
    domain = _config.resolve_domain(args.domain)
    path = _config.segment_path(domain)
    if not segment_exists(domain):
        print(f"composepar: nothing to remove: {path} does not exist")
        return 0
    live = remove_segment(domain, force=args.force)
    if live:
        pids = ", ".join(str(pid) for pid in live[:10]) + (" ..." if len(live) > 10 else "")
        print(f"composepar: not removing {path}: {len(live)} live process(es) use it (pid {pids}); "
              f"stop them first", file=sys.stderr)
        return 1
    print(f"composepar: removed {path}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in _SUBCOMMANDS:
        return _launch(argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return _status(args)
        return _cleanup(args)
    except (ValueError, TypeError) as error:  # bad --domain or COMPOSEPAR_* value
        print(f"composepar: error: {error}", file=sys.stderr)
        return 2
    except ArbiterError as error:
        print(f"composepar: {error}", file=sys.stderr)
        return 1
