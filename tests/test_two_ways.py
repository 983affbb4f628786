"""The same program, two ways: `python prog.py` and `python -m composepar prog.py`, compared.

Each program in tests/programs/ is a small real program that prints its results on stdout; a line
`THREADS <what> <n>` is a native thread count it observed (inside the parallel region or the task,
where the runtime allows). Both runs get the same environment and differ only in `-m composepar`:

    plain     python prog.py ...              -+
                                               +--> exit status: equal
    launcher  python -m composepar prog.py ... -+    stdout without THREADS lines: equal
                                                     THREADS n: launcher <= plain, <= the CPUs
                                                     stderr: no line the plain run did not print

Every run is a subprocess in its own session under TIMEOUT seconds; a run past it is killed with its
whole process group, and the test fails with what the run had printed.
"""

import dataclasses
import difflib
import os
import re
import signal
import subprocess
import sys

import pytest

PROGRAMS = os.path.join(os.path.dirname(__file__), "programs")

TIMEOUT = 120  # seconds, per run

# What the launcher may set; a developer's own settings would make both runs something else than
# a plain run of the program, so neither run inherits them.
INHERITED_SETTINGS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "KMP_BLOCKTIME", "GOMP_SPINCOUNT",
    "MKL_DYNAMIC", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT",
)

THREADS_LINE = re.compile(r"THREADS (\S+) (\d+)$")


@dataclasses.dataclass(frozen=True)
class Program:
    """A program of tests/programs/ and how both runs start it."""

    script: str
    args: tuple = ()  # "{omp_kernel}" is replaced by the path of the kernel built by conftest
    env: tuple = ()  # (name, value) pairs, the same for both runs
    one_cpu: bool = False  # both runs under `taskset -c 0`
    existing_budget: bool = False  # the domain's budget exists first, at the whole machine's capacity
    # Engines whose own logging varies with the machine's load (raylet, nanny): only stderr lines that
    # look like a warning, an error or composepar's are compared for them.
    engine_logs: bool = False
    wheel_only_for: tuple = ()  # modules whose wheels exist only for some Pythons/platforms: skip without


NUMBA = ("numba", "the test extra installs numba on Python 3.10+ only (no wheels before)")
TORCH = ("torch", "the test extra installs torch==2.13.0+cpu on Python 3.10+ x86-64 only (no wheels elsewhere)")
RAY = ("ray", "ray publishes wheels for a few platforms only")

CORPUS = {
    # 1. threadpoolctl keeps OpenBLAS at one thread: the launcher must not raise it.
    "blas-limits-main-thread": Program("blas_limits_main.py"),
    "blas-limits-in-pool-tasks": Program("blas_limits_tasks.py"),
    "blas-limits-pool-initializer": Program("blas_limits_initializer.py"),
    # 2. numba imported by the parent, prange run only by fork-based workers.
    "numba-omp-fork-workers": Program("numba_fork_workers.py", env=(("NUMBA_THREADING_LAYER", "omp"),),
                                      wheel_only_for=(NUMBA,)),
    "numba-tbb-fork-workers": Program("numba_fork_workers.py", env=(("NUMBA_THREADING_LAYER", "tbb"),),
                                      wheel_only_for=(NUMBA,)),
    # 3. one CPU: a new budget, and a budget created before at the whole machine's capacity.
    "one-cpu-blas-loop": Program("blas_loop.py", one_cpu=True),
    "one-cpu-blas-loop-existing-budget": Program("blas_loop.py", one_cpu=True, existing_budget=True),
    # 4. cluster engines that give each task one CPU.
    "dask-distributed-local-cluster": Program("dask_blas.py", engine_logs=True),
    "ray-num-cpus-1-tasks": Program("ray_blas.py", engine_logs=True, wheel_only_for=(RAY,)),
    # Libraries with pools of their own.
    "sklearn-kmeans-random-forest": Program("sklearn_models.py"),
    "joblib-nested-parallel": Program("joblib_nested.py"),
    "numexpr-main-and-pool": Program("numexpr_eval.py"),
    "torch-cpu-in-pool": Program("torch_pool.py", wheel_only_for=(TORCH,)),
    "openmp-kernel-in-pool": Program("omp_kernel_pool.py", args=("{omp_kernel}",)),
    "fork-after-blas-threads": Program("fork_after_blas.py"),
    # Bad input: impossible limits (0, negative) get each library's own behaviour, not a composepar crash.
    "impossible-limits": Program("bad_limits.py", args=("{omp_kernel}",)),
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one run printed and returned, stdout split into results and THREADS counts."""

    returncode: int
    results: list  # stdout lines other than THREADS lines, in order
    threads: dict  # what -> the largest count printed for it
    stderr: str


def run(command, env):
    """Runs `command` in a session of its own; kills the session and fails the test past TIMEOUT."""
    process = subprocess.Popen(command, cwd=PROGRAMS, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_session(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"`{' '.join(command)}` ran past {TIMEOUT} s and was killed\n"
                    f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}")
    finally:
        _kill_session(process.pid)  # what the program left running (a cluster's daemons) goes too
    results, threads = [], {}
    for line in stdout.splitlines():
        match = THREADS_LINE.match(line)
        if match:
            threads[match[1]] = max(int(match[2]), threads.get(match[1], 0))
        else:
            results.append(line)
    return Outcome(process.returncode, results, threads, stderr)


def _kill_session(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _comparable(line):
    """A stderr line with pids, addresses and other numbers replaced, so that two runs compare."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", line.rstrip())


WARNING_LIKE = re.compile(r"warn|error|traceback|exception|terminat|fork|composepar", re.IGNORECASE)


def differences(plain, launched, cpus, engine_logs=False):
    """What the launcher run did that the plain run did not, one line each (empty: nothing)."""
    found = []
    if launched.returncode != plain.returncode:
        found.append(f"exit status: plain {plain.returncode}, launcher {launched.returncode}")
    if launched.results != plain.results:
        diff = difflib.unified_diff(plain.results, launched.results, "plain", "launcher", lineterm="")
        found.append("stdout differs:\n    " + "\n    ".join(diff))
    for what in sorted(plain.threads.keys() | launched.threads.keys()):
        with_launcher, with_plain = launched.threads.get(what), plain.threads.get(what)
        if with_launcher is None or with_plain is None:
            found.append(f"THREADS {what}: plain {with_plain}, launcher {with_launcher} (printed by one run only)")
        elif with_launcher > with_plain:
            found.append(f"THREADS {what}: launcher {with_launcher} > plain {with_plain}")
        elif with_launcher > cpus:
            found.append(f"THREADS {what}: launcher {with_launcher} > the program's {cpus} CPUs")
    printed = {_comparable(line) for line in plain.stderr.splitlines()}
    added = [line for line in launched.stderr.splitlines() if line.strip() and _comparable(line) not in printed
             and (not engine_logs or WARNING_LIKE.search(line))]
    if added:
        found.append("new stderr lines under the launcher:\n    " + "\n    ".join(added[:10])
                     + (f"\n    ... {len(added) - 10} more" if len(added) > 10 else ""))
    return found


def report(plain, launched, cpus):
    """The two runs side by side, for a failure's message."""
    def threads(outcome):
        return " ".join(f"{what}={n}" for what, n in sorted(outcome.threads.items())) or "-"

    lines = [f"CPUs of the program: {cpus}", f"THREADS plain:    {threads(plain)}",
             f"THREADS launcher: {threads(launched)}"]
    for how, outcome in (("plain", plain), ("launcher", launched)):
        if outcome.stderr.strip():
            lines.append(f"--- {how} stderr (last 2000 characters)\n{outcome.stderr[-2000:]}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_launcher_changes_nothing_a_program_sees_but_fewer_threads(name, domain, request):
    program = CORPUS[name]
    for module, reason in program.wheel_only_for:
        pytest.importorskip(module, reason=reason)
    args = [arg.format(omp_kernel=request.getfixturevalue("omp_kernel")) if "{omp_kernel}" in arg else arg
            for arg in program.args]
    env = {variable: value for variable, value in os.environ.items()
           if not variable.startswith("COMPOSEPAR_") and variable not in INHERITED_SETTINGS}
    env.update(program.env, COMPOSEPAR_DOMAIN=domain)
    if program.existing_budget:
        created = run([sys.executable, "-m", "composepar", "-c", "pass"], env)
        assert created.returncode == 0, f"could not create the budget of domain {domain}:\n{created.stderr}"
    prefix = ["taskset", "-c", "0"] if program.one_cpu else []
    cpus = 1 if program.one_cpu else len(os.sched_getaffinity(0))

    plain = run(prefix + [sys.executable, program.script, *args], env)
    assert plain.returncode == 0, f"the program fails with plain python:\n{plain.stderr[-3000:]}"
    launched = run(prefix + [sys.executable, "-m", "composepar", program.script, *args], env)

    found = differences(plain, launched, cpus, program.engine_logs)
    if found:
        pytest.fail("\n".join(f"- {line}" for line in found) + "\n" + report(plain, launched, cpus), pytrace=False)
