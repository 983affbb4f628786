"""The C API (composepar.h, libcomposepar.so): a C program built here with gcc
against composepar.get_include() and composepar.get_library(), run as real
processes that share one budget with Python processes; real SIGKILL.

The C side is tests/native/capi_test.c: `selftest` checks error paths, fork and
threads inside one C process; `serve` answers one line per command on its
stdin, so a test steps it and waits on its answers (never on time).
"""

import ctypes
import errno
import os
import select
import shutil
import signal
import subprocess
import time

import pytest

import composepar
from composepar import Arbiter, _config, _segments
from conftest import wait_until as wait_until_within

DEADLINE = 60  # seconds any one answer or state may take before the test fails
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    """tests/native/capi_test.c linked against the installed libcomposepar.so."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the C API tests compile a C program against composepar.h")
    library = composepar.get_library()
    out = str(tmp_path_factory.mktemp("capi") / "capi_test")
    command = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{composepar.get_include()}",
               os.path.join(HERE, "native", "capi_test.c"), f"-L{os.path.dirname(library)}", "-lcomposepar",
               f"-Wl,-rpath,{os.path.dirname(library)}", "-pthread", "-o", out]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return out


def env_without_domain(**extra):
    env = {name: value for name, value in os.environ.items()
           if name not in ("COMPOSEPAR_DOMAIN", "COMPOSEPAR_CAPACITY", "COMPOSEPAR_LAUNCHED")}
    env.update(extra)
    return env


class CProcess:
    """capi_test in `serve` mode: a real process answering one line per command."""

    def __init__(self, program, env=None, pin=None):
        command = [program, "serve"] if pin is None else ["taskset", "-c", pin, program, "serve"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, bufsize=0, env=env or env_without_domain())
        self._buffer = b""

    @property
    def pid(self):
        return self.process.pid

    def send(self, command):
        self.process.stdin.write(command.encode() + b"\n")

    def answer(self):
        """The next line it writes; fails the test if none comes within DEADLINE."""
        deadline = time.monotonic() + DEADLINE
        out = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"the C program answered nothing within {DEADLINE} s")
            if select.select([out], [], [], remaining)[0]:
                chunk = os.read(out, 4096)
                if not chunk:
                    self.process.wait()
                    pytest.fail(f"the C program exited ({self.process.returncode}): "
                                f"{self.process.stderr.read().decode()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def ask(self, command):
        self.send(command)
        return self.answer()

    def attach(self, domain):
        """Attaches to `domain` ("-": NULL, the default); returns (domain, capacity)."""
        code, name, capacity = self.ask(f"attach {domain}").split(" ", 2)
        assert code == "0", capacity
        return name, int(capacity)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self):
        """Ends it the ordinary way (end of its stdin) and checks it exited cleanly."""
        self.process.stdin.close()
        assert self.process.wait(timeout=DEADLINE) == 0, self.process.stderr.read().decode()
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def c_process(c_program):
    started = []

    def start(**kwargs):
        started.append(CProcess(c_program, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        for stream in (process.process.stdin, process.process.stdout, process.process.stderr):
            stream.close()


def wait_until(condition, what):
    return wait_until_within(condition, what, DEADLINE)


def line_of(arbiter, pid):
    """The stats line of process `pid` in `arbiter`'s budget, or None."""
    return next((p for p in arbiter.stats().processes if p.pid == pid), None)


# ---------------------------------------------------------------- where it is


def test_get_include_and_get_library_name_the_header_and_the_library():
    include, library = composepar.get_include(), composepar.get_library()
    assert os.path.isabs(include) and os.path.isabs(library)
    with open(os.path.join(include, "composepar.h")) as header:
        text = header.read()
    for function in ("composepar_attach", "composepar_detach", "composepar_capacity", "composepar_lease_open",
                     "composepar_lease_threads", "composepar_lease_refresh", "composepar_lease_close",
                     "composepar_acquire", "composepar_release"):
        assert f"{function}(" in text
    assert "Thread safety" in text and "Fork and exec" in text
    assert os.path.basename(library) == "libcomposepar.so"
    assert {"get_include", "get_library"} <= set(composepar.__all__)


def test_the_library_exports_the_c_api_only():
    """The core inside it is a copy of the Python module's: none of its C++ symbols may be visible."""
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    result = subprocess.run(["nm", "-D", "--defined-only", composepar.get_library()], capture_output=True, text=True,
                            check=True)
    names = [line.split()[-1] for line in result.stdout.splitlines() if line.strip()]
    assert "composepar_attach" in names
    assert [name for name in names if not name.startswith("composepar_")] == []


# ---------------------------------------------------------------- in one C process


def test_c_selftest_error_paths_fork_and_threads(domain, c_program):
    arbiter = Arbiter(domain, capacity=4)
    result = subprocess.run([c_program, "selftest", domain], capture_output=True, text=True, timeout=300,
                            env=env_without_domain())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "selftest ok\n"
    stats = arbiter.stats()  # the C process and its fork child are gone: all came back
    assert stats.tokens_free == 4 and stats.processes == ()
    assert arbiter.invariant_violations() == ""


def test_the_example_builds_and_runs(domain, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the example is a C program")
    library_dir = os.path.dirname(composepar.get_library())
    out = str(tmp_path / "capi_example")
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{composepar.get_include()}",
                    os.path.join(HERE, os.pardir, "examples", "capi_example.c"), f"-L{library_dir}", "-lcomposepar",
                    f"-Wl,-rpath,{library_dir}", "-o", out], check=True)
    Arbiter(domain, capacity=2)
    result = subprocess.run([out], capture_output=True, text=True, timeout=DEADLINE,
                            env=env_without_domain(COMPOSEPAR_DOMAIN=domain))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"domain {domain}, capacity 2\n")


# ---------------------------------------------------------------- sharing a budget with Python


def test_c_and_python_share_explicit_tokens(domain, c_process):
    arbiter = Arbiter(domain, capacity=4)
    assert arbiter.acquire(3, min_tokens=3) == 3
    c = c_process()
    assert c.attach(domain) == (domain, 4)
    assert line_of(arbiter, c.pid) is not None  # attaching takes the process's slot
    assert c.ask("acquire 2 2 0").startswith(f"{-errno.ETIMEDOUT} could not get 2 of 4 tokens")
    assert c.ask("acquire 1 4 0") == "1"  # the one Python left
    stats = arbiter.stats()
    assert stats.tokens_free == 0 and line_of(arbiter, c.pid).tokens_explicit == 1
    assert c.ask("release 2").startswith(f"{-errno.EINVAL} cannot release 2 tokens: this process holds 1")
    assert c.ask("release 1") == "0"
    arbiter.release(3)
    assert c.ask("acquire 3 3 0") == "3"  # what Python gave back
    assert line_of(arbiter, c.pid).tokens_explicit == 3
    assert c.ask("release 3") == "0"
    assert arbiter.stats().tokens_free == 4
    assert c.ask("detach") == "0"
    assert line_of(arbiter, c.pid) is None  # its last handle gone: the slot is free
    c.close()
    assert arbiter.invariant_violations() == ""


def test_a_blocked_c_acquire_wakes_when_python_releases(domain, c_process):
    arbiter = Arbiter(domain, capacity=2)
    arbiter.acquire(2)
    c = c_process()
    c.attach(domain)
    c.send("acquire 1 2 -1")  # waits: nothing is free
    wait_until(lambda: getattr(line_of(arbiter, c.pid), "waiters", 0) == 1, "the C process to wait for a token")
    arbiter.release(2)  # wakes it through the segment's futex
    assert c.answer() == "2"
    assert line_of(arbiter, c.pid).tokens_explicit == 2 and arbiter.stats().tokens_free == 0
    assert c.ask("release 2") == "0"
    c.close()
    assert arbiter.stats().tokens_free == 2 and arbiter.invariant_violations() == ""


@pytest.mark.skipif(composepar.usable_cpus() < 2, reason="a lease never counts more threads than the CPUs: needs 2")
def test_c_and_python_leases_follow_the_fair_share(domain, c_process):
    """The README's fair-share walk, with A a C process and B this Python process."""
    arbiter = Arbiter(domain, capacity=2)
    c = c_process()
    c.attach(domain)
    assert c.ask("lease_open") == "0 2"  # alone: its own token and the other
    python_lease = arbiter.lease()  # nothing free: overdrawn
    assert python_lease.threads == 1 and not python_lease.own_token
    assert c.ask("refresh") == "1"  # someone below its share wants more: back to the share
    assert python_lease.refresh() == 1 and python_lease.own_token
    line = line_of(arbiter, c.pid)
    assert (line.threads_active, line.tokens_held) == (1, 1)
    python_lease.close()
    assert c.ask("refresh") == "2"  # grows into what Python freed
    assert c.ask("threads") == "2"
    assert c.ask("lease_close") == "0"
    c.close()
    assert arbiter.stats().tokens_free == 2 and arbiter.invariant_violations() == ""


def test_a_c_lease_counts_at_most_the_process_cpus(domain, c_process):
    """As the Python task scopes: min(capacity, usable CPUs), the CPUs read with the same rule."""
    arbiter = Arbiter(domain, capacity=64)
    c = c_process()
    c.attach(domain)
    assert c.ask("lease_open") == f"0 {min(64, composepar.usable_cpus())}"
    assert line_of(arbiter, c.pid).tokens_held == min(64, composepar.usable_cpus())
    c.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
                    reason="needs 2 CPUs and taskset")
def test_a_c_process_bound_to_one_cpu_gets_one_thread(domain, c_process):
    arbiter = Arbiter(domain, capacity=2)
    c = c_process(pin=str(min(os.sched_getaffinity(0))))
    c.attach(domain)
    assert c.ask("lease_open") == "0 1"
    assert c.ask("refresh") == "1"
    assert arbiter.stats().tokens_free == 1  # the token it cannot use stays with the budget
    c.close()


def test_a_killed_c_process_gives_its_tokens_back(domain, c_process):
    arbiter = Arbiter(domain, capacity=4)
    c = c_process()
    c.attach(domain)
    assert c.ask("acquire 3 3 0") == "3"
    assert c.ask("lease_open").startswith("0 ")  # and the last token, for its lease
    assert arbiter.stats().tokens_free == 0
    os.kill(c.pid, signal.SIGKILL)
    c.process.wait()
    assert arbiter.acquire(4, min_tokens=4, timeout=DEADLINE) == 4  # the dead process is reaped
    stats = arbiter.stats()
    assert stats.tokens_reclaimed == 4 and line_of(arbiter, c.pid) is None
    arbiter.release(4)
    assert arbiter.invariant_violations() == ""


# ---------------------------------------------------------------- which budget


def test_null_domain_is_composepar_domain(domain, c_process):
    arbiter = Arbiter(domain, capacity=3)
    c = c_process(env=env_without_domain(COMPOSEPAR_DOMAIN=domain))
    assert c.attach("-") == (domain, 3)
    assert line_of(arbiter, c.pid) is not None
    c.close()


@pytest.mark.parametrize("from_env", [None, "3"])
def test_a_new_segment_gets_the_capacity_python_would_give_it(domain, c_process, from_env):
    """$COMPOSEPAR_CAPACITY, else the usable CPUs: the rule of composepar.Arbiter()."""
    env = env_without_domain() if from_env is None else env_without_domain(COMPOSEPAR_CAPACITY=from_env)
    c = c_process(env=env)
    expected = int(from_env) if from_env else composepar.usable_cpus()
    assert c.attach(domain) == (domain, expected)
    assert Arbiter(domain).capacity == expected
    c.close()


def test_an_existing_segment_is_joined_as_it_is(domain, c_process):
    arbiter = Arbiter(domain, capacity=2)
    c = c_process(env=env_without_domain(COMPOSEPAR_CAPACITY="5"))
    assert c.attach(domain) == (domain, 2)  # joined, never re-created
    assert arbiter.stats().capacity == 2
    c.close()


def test_a_corrupt_segment_is_refused_with_the_fix(domain, c_process):
    path = _config.segment_path(domain)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(b"not a segment")
    c = c_process()
    code, message = c.ask(f"attach {domain}").split(" ", 1)
    assert int(code) == -errno.EPROTO
    assert path in message and f"python -m composepar cleanup --force --domain {domain}" in message
    c.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
                    reason="needs 2 CPUs and taskset")
def test_a_confined_c_process_uses_the_domain_of_its_cpu_set(c_process):
    first = min(os.sched_getaffinity(0))
    expected = f"cpus-{first}"  # as test_cpus finds for a Python process pinned the same way
    existed = _segments.segment_exists(expected)
    c = c_process(pin=str(first))
    try:
        assert c.attach("-")[0] == expected
        assert c.ask("detach") == "0"
        c.close()
    finally:
        if not existed:  # this test made it: remove it unless someone else uses it now
            _segments.remove_segment(expected)


@pytest.mark.parametrize("cpus, online", [
    ((0, 1), (0, 1)),
    ((0, 1, 2, 3), (0, 1)),
    ((0,), (0, 1)),
    ((0, 1, 2, 3, 8), tuple(range(16))),
    ((1, 3), (0, 1, 2, 3)),
    (tuple(range(0, 128, 2)), tuple(range(128))),  # past 64 characters: a hash of the list
    (tuple(range(1, 1000, 7)), tuple(range(1024))),
])
def test_the_cpu_set_domain_rule_is_pythons(cpus, online):
    """The C library's twin of _config.cpu_set_domain, through its test hook, for lists this machine lacks."""
    hook = ctypes.CDLL(composepar.get_library()).composepar_internal_cpu_set_domain
    hook.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    hook.restype = ctypes.c_int
    out = ctypes.create_string_buffer(80)
    length = hook(_format(cpus), _format(online), out, len(out))
    assert out.value.decode() == _config.cpu_set_domain(cpus, online)
    assert length == len(out.value)


def _format(cpus):
    from composepar._cpus import format_cpu_list

    return format_cpu_list(cpus).encode()
