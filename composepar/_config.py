"""Reading composepar's arguments and COMPOSEPAR_* environment variables.

Every value that enters from a user goes through one function here, which
either returns a clean value or raises with the name, the rule and what was
received.
"""

import os

from . import _cpus
from ._native import _arbiter as _native

__all__ = ["resolve_domain", "default_domain", "cpu_set_domain", "resolve_capacity", "resolve_flag",
           "segment_path", "check_positive_int"]

DEFAULT_DOMAIN = "default"
SHM_DIRECTORY = "/dev/shm"
# A domain is 1-64 of these, the first a letter or digit (checked without re:
# importing it costs every launched program ~4 ms).
_DOMAIN_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DOMAIN_CHARACTERS = _DOMAIN_FIRST | frozenset("._-")
_DOMAIN_MAX_LENGTH = 64


def _is_valid_domain(domain):
    return (0 < len(domain) <= _DOMAIN_MAX_LENGTH and domain[0] in _DOMAIN_FIRST
            and all(character in _DOMAIN_CHARACTERS for character in domain))


_domains_checked = set()  # domains found valid: the check runs at every task start


def check_domain(domain, source="domain"):
    if not isinstance(domain, str):
        raise TypeError(f"{source} must be a str; got {domain!r} instead")
    if domain in _domains_checked:
        return domain
    if not _is_valid_domain(domain):
        raise ValueError(
            f"{source} must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (it becomes part of a file name in {SHM_DIRECTORY}); got {domain!r} instead"
        )
    _domains_checked.add(domain)
    return domain


def resolve_domain(domain=None):
    """The domain to use: the argument, else $COMPOSEPAR_DOMAIN, else default_domain()."""
    if domain is not None:
        return check_domain(domain)
    from_env = os.environ.get("COMPOSEPAR_DOMAIN")
    if from_env:
        return check_domain(from_env, "COMPOSEPAR_DOMAIN")
    return default_domain()


_CPU_SET_PREFIX = "cpus-"
_cpu_set_domains = {}  # affinity mask -> its domain: resolve_domain() runs at every task start


def default_domain():
    """The domain of a process that names none: "default" if its affinity mask
    covers every online CPU, else one per CPU set (cpu_set_domain), so that
    jobs confined to different CPUs (taskset, cpusets, a batch scheduler's
    binding) do not share one budget."""
    cpus = _cpus.affinity_cpus()
    domain = _cpu_set_domains.get(cpus)
    if domain is None:
        domain = _cpu_set_domains[cpus] = cpu_set_domain(cpus, _cpus.online_cpus())
    return domain


def cpu_set_domain(cpus, online):
    """ "default" when `cpus` include every CPU of `online`; else "cpus-" and the
    list with "." for ",", e.g. "cpus-0-3.8" for 0-3,8, or, past 64 characters,
    "cpus-" and the count and a hash of the list."""
    if set(online) <= set(cpus):
        return DEFAULT_DOMAIN
    listed = _cpus.format_cpu_list(cpus)
    domain = _CPU_SET_PREFIX + listed.replace(",", ".")
    if len(domain) > _DOMAIN_MAX_LENGTH:
        import hashlib

        domain = f"{_CPU_SET_PREFIX}{len(cpus)}-{hashlib.sha256(listed.encode()).hexdigest()[:16]}"
    return domain


def check_positive_int(value, name, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {value!r} instead")
    if value < 1 or (maximum is not None and value > maximum):
        rule = f"between 1 and {maximum}" if maximum is not None else "at least 1"
        raise ValueError(f"{name} must be {rule}; got {value!r} instead")
    return value


def resolve_capacity(capacity=None):
    """The capacity asked for explicitly (argument, else $COMPOSEPAR_CAPACITY), or None."""
    if capacity is not None:
        return check_positive_int(capacity, "capacity", _native.MAX_CAPACITY)
    from_env = os.environ.get("COMPOSEPAR_CAPACITY")
    if from_env:
        try:
            value = int(from_env)
        except ValueError:
            value = None
        if value is None or not 1 <= value <= _native.MAX_CAPACITY:
            raise ValueError(
                f"COMPOSEPAR_CAPACITY must be an integer between 1 and {_native.MAX_CAPACITY}; "
                f"got {from_env!r} instead (unset it to use the usable CPUs)"
            )
        return value
    return None


def resolve_flag(name, given=False):
    """A switch: True if given on the command line, else $`name` ("1" on, "0" or unset off)."""
    if given:
        return True
    from_env = os.environ.get(name, "")
    if from_env not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0 or 1; got {from_env!r} instead")
    return from_env == "1"


def segment_path(domain):
    """/dev/shm/composepar-<uid>-<domain>: one segment per user and domain."""
    return f"{SHM_DIRECTORY}/composepar-{os.geteuid()}-{domain}"
