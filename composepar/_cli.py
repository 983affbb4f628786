"""``python -m composepar``: the command line.

    python -m composepar status  [--domain D] [--json]
    python -m composepar cleanup [--domain D] [--force]

Usage errors print one line on stderr and exit with 2, as Python does.
"""

import argparse
import json
import sys

from . import _config
from ._arbiter import Arbiter
from ._cpus import usable_cpus
from ._errors import ArbiterError
from ._segments import remove_segment, segment_exists

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"composepar: error: {message}\n")


def _build_parser():
    parser = _Parser(prog="python -m composepar", description="Composable threading for nested parallelism.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    status = commands.add_parser("status", help="show the budget: capacity, free tokens, attached processes")
    status.add_argument("--domain", help="which budget (default $COMPOSEPAR_DOMAIN or 'default')")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    cleanup = commands.add_parser("cleanup", help="remove a segment that no live process uses")
    cleanup.add_argument("--domain", help="which budget (default $COMPOSEPAR_DOMAIN or 'default')")
    cleanup.add_argument(
        "--force", action="store_true", help="also remove a segment that cannot be attached (corrupt, other release)"
    )
    for sub in (status, cleanup):
        sub.error = parser.error.__get__(sub)
    return parser


def _status(args):
    domain = _config.resolve_domain(args.domain)
    if not segment_exists(domain):
        if args.json:
            print(json.dumps({"domain": domain, "path": _config.segment_path(domain), "exists": False}))
        else:
            print(f"composepar: no arbiter yet for domain {domain!r} ({_config.segment_path(domain)}); "
                  f"the first process to attach creates it with capacity {usable_cpus()}")
        return 0
    stats = Arbiter(domain).stats()
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
                 "tokens_wanted": p.tokens_wanted, "waiters": p.waiters, "tokens_waited": p.tokens_waited}
                for p in stats.processes
            ],
        }))
        return 0
    print(f"domain {stats.domain}  ({stats.path})")
    print(f"capacity {stats.capacity}  free {stats.tokens_free}  held {stats.tokens_held}  "
          f"overdrawn {stats.leases_overdrawn}  reclaimed {stats.tokens_reclaimed} tokens "
          f"from {stats.processes_reaped} dead processes")
    if stats.processes:
        print(f"{'PID':>8}  {'COMMAND':<15}  {'THREADS':>7}  {'EXTRA':>5}  {'ACQUIRED':>8}  {'WAITING':>7}")
        for p in stats.processes:
            print(f"{p.pid:>8}  {p.command:<15}  {p.threads_active:>7}  {p.tokens_extra:>5}  "
                  f"{p.tokens_explicit:>8}  {p.tokens_waited:>7}")
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
