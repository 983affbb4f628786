"""Cost of one token acquire + release pair, composepar against named baselines.

    python bench/bench_arbiter.py [--iterations N] [--repeats R] [--json-out PATH] [--no-cpp]

Everything is measured in this one run, so the ratios compare like with like::

    parent (this script)                      children (multiprocessing, 'fork')
    for each repeat, mechanism, P in (1, 2):
        fresh domain / semaphore, capacity P  --> P children: set up, warm up,
        Barrier(P) starts them together           time N pairs each
        mean of the children's ns per pair    <-- shared array
        remove the domain's segment
    median over the repeats
    bench/.build/arbiter_bench (C++), built here if missing or stale, run the same way

Python rows:
    composepar acquire_nowait + release   Arbiter(domain).acquire_nowait(1); release(1)
    composepar lease open + close         with arbiter.lease(0): pass
    multiprocessing.Semaphore             acquire(); release()   -- the baseline
    threading.Lock (reference)            acquire(); release()   -- process-private, no IPC
    composepar native handle (diagnostic) the binding without composepar's Python layer

Capacity (and the semaphore's value) equals the number of processes, so every
pair gets its token at once: "2 processes" measures contention on the shared
lock and cache lines, not waiting for tokens.

Goals: a Python composepar pair no slower than a multiprocessing.Semaphore
pair; a C++ pair under 100 ns uncontended.
"""

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

import composepar
from composepar import _segments

import _results  # bench/_results.py: the script's folder is first in sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NATIVE = os.path.join(ROOT, "composepar", "_native")
CPP_SOURCES = [
    os.path.join(HERE, "arbiter_bench.cpp"),
    os.path.join(NATIVE, "arbiter.cpp"),
    os.path.join(NATIVE, "posix.cpp"),
]
CPP_HEADERS = [os.path.join(NATIVE, name) for name in ("arbiter.hpp", "layout.hpp", "posix.hpp")]
CPP_BINARY = os.path.join(HERE, ".build", "arbiter_bench")
PROCESS_COUNTS = (1, 2)
BARRIER_TIMEOUT_S = 60
GOAL_CPP_NS = 100.0


# --------------------------------------------------------------- Python mechanisms
#
# Each mechanism is (setup, loop). setup(shared) runs in the child after the
# fork and returns what loop needs; loop(n, thing) runs n pairs and returns
# the elapsed ns. The loops bind methods to locals so the measured cost is
# the calls, not attribute lookups.


def _setup_composepar(shared):
    return composepar.Arbiter(shared["domain"], capacity=shared["processes"])


def _loop_composepar_acquire(n, arbiter):
    acquire_nowait, release = arbiter.acquire_nowait, arbiter.release
    start = time.perf_counter_ns()
    for _ in range(n):
        acquire_nowait(1)
        release(1)
    return time.perf_counter_ns() - start


def _loop_composepar_lease(n, arbiter):
    lease = arbiter.lease
    start = time.perf_counter_ns()
    for _ in range(n):
        with lease(0):
            pass
    return time.perf_counter_ns() - start


def _setup_native_handle(shared):
    return _setup_composepar(shared)._handle  # private: the binding, without the Python checks


def _loop_native_handle(n, handle):
    acquire_nowait, release = handle.acquire_nowait, handle.release
    start = time.perf_counter_ns()
    for _ in range(n):
        acquire_nowait(1, 1)
        release(1)
    return time.perf_counter_ns() - start


def _setup_semaphore(shared):
    return shared["semaphore"]  # made by the parent before the fork


def _setup_lock(shared):
    return threading.Lock()


def _loop_acquire_release(n, primitive):
    acquire, release = primitive.acquire, primitive.release
    start = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    return time.perf_counter_ns() - start


# (key, label, setup, loop, uses a composepar domain, uses the semaphore)
PYTHON_MECHANISMS = [
    ("composepar_acquire_nowait", "composepar `acquire_nowait(1)` + `release(1)`",
     _setup_composepar, _loop_composepar_acquire, True, False),
    ("composepar_lease", "composepar `with lease(0)` (open + close)",
     _setup_composepar, _loop_composepar_lease, True, False),
    ("multiprocessing_semaphore", "`multiprocessing.Semaphore` acquire + release (baseline)",
     _setup_semaphore, _loop_acquire_release, False, True),
    ("threading_lock", "`threading.Lock` acquire + release (reference, process-private)",
     _setup_lock, _loop_acquire_release, False, False),
    ("composepar_native_handle", "composepar native handle `acquire_nowait(1, 1)` + `release(1)` (diagnostic)",
     _setup_native_handle, _loop_native_handle, True, False),
]
BASELINE = "multiprocessing_semaphore"
GOAL_ROWS = ("composepar_acquire_nowait", "composepar_lease")

CPP_MECHANISMS = [
    ("composepar_acquire_nowait", "C++ `Arbiter::acquire_nowait(1, 1)` + `release(1)`"),
    ("composepar_lease", "C++ `Arbiter::lease_open(0)` + `lease_close`"),
    ("posix_semaphore", "C++ POSIX named semaphore `sem_wait` + `sem_post`"),
]


def _child(index, setup, loop, iterations, shared, barrier, results):
    thing = setup(shared)
    loop(max(1, iterations // 10), thing)  # warm up: caches, slot registration, branch predictors
    barrier.wait(BARRIER_TIMEOUT_S)
    results[index] = loop(iterations, thing) / iterations


def measure_python(context, mechanism, processes, iterations, run_tag):
    """Mean ns per pair over `processes` children running the loop at once."""
    key, _label, setup, loop, uses_domain, uses_semaphore = mechanism
    shared = {"processes": processes}
    if uses_domain:
        shared["domain"] = f"bench-{os.getpid()}-{run_tag}-{key}-{processes}"
    if uses_semaphore:
        shared["semaphore"] = context.Semaphore(processes)
    barrier = context.Barrier(processes)
    results = context.Array("d", processes, lock=False)
    children = [
        context.Process(target=_child, args=(i, setup, loop, iterations, shared, barrier, results))
        for i in range(processes)
    ]
    try:
        for child in children:
            child.start()
        for child in children:
            child.join()
        failed = [child.exitcode for child in children if child.exitcode != 0]
        if failed:
            raise RuntimeError(f"{key} with {processes} process(es): children exited with {failed}")
        return statistics.fmean(results)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
        if uses_domain:
            _remove_domain(shared["domain"])


def _remove_domain(domain):
    # The children exited without detaching (multiprocessing ends them with
    # os._exit); removing the segment reaps their slots first.
    live = _segments.remove_segment(domain)
    if live:
        print(f"warning: segment of domain {domain!r} kept: live processes {live}", file=sys.stderr)


def run_python(iterations, repeats):
    context = multiprocessing.get_context("fork")
    samples = {key: {p: [] for p in PROCESS_COUNTS} for key, *_ in PYTHON_MECHANISMS}
    for repeat in range(repeats):
        for mechanism in PYTHON_MECHANISMS:
            for processes in PROCESS_COUNTS:
                ns = measure_python(context, mechanism, processes, iterations, f"r{repeat}")
                samples[mechanism[0]][processes].append(ns)
    return samples


# --------------------------------------------------------------- C++


def _cpp_binary_is_stale():
    if not os.path.exists(CPP_BINARY):
        return True
    built = os.path.getmtime(CPP_BINARY)
    return any(os.path.getmtime(path) > built for path in CPP_SOURCES + CPP_HEADERS)


def build_cpp():
    """Builds bench/.build/arbiter_bench if missing or older than its sources; returns its path or None."""
    if not _cpp_binary_is_stale():
        return CPP_BINARY
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        print("warning: no C++ compiler (set CXX); skipping the C++ rows", file=sys.stderr)
        return None
    os.makedirs(os.path.dirname(CPP_BINARY), exist_ok=True)
    command = [compiler, "-std=c++17", "-O2", "-I", NATIVE, *CPP_SOURCES, "-lpthread", "-o", CPP_BINARY]
    shown = [command[0]] + [os.path.relpath(part, ROOT) if part.startswith(ROOT) else part for part in command[1:]]
    print("building the C++ benchmark:", " ".join(shown), file=sys.stderr)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"warning: building the C++ benchmark failed; skipping the C++ rows:\n{completed.stderr}",
              file=sys.stderr)
        return None
    return CPP_BINARY


def run_cpp(binary, iterations, repeats):
    samples = {key: {p: [] for p in PROCESS_COUNTS} for key, _ in CPP_MECHANISMS}
    for _ in range(repeats):
        for processes in PROCESS_COUNTS:
            completed = subprocess.run(
                [binary, "--iterations", str(iterations), "--processes", str(processes), "--json"],
                capture_output=True, text=True, check=True,
            )
            results = json.loads(completed.stdout)["results"]
            for key, _ in CPP_MECHANISMS:
                samples[key][processes].append(results[key])
    return samples


# --------------------------------------------------------------- report


def medians(samples):
    return {key: {p: statistics.median(values) for p, values in by_count.items()} for key, by_count in samples.items()}


def markdown_table(python, cpp):
    baseline = python[BASELINE]
    lines = [
        "| mechanism | uncontended (ns per pair) | 2 processes (ns per pair) "
        "| ratio vs multiprocessing.Semaphore (uncontended / 2 processes) |",
        "|---|---:|---:|---:|",
    ]
    for key, label, *_ in PYTHON_MECHANISMS:
        row = python[key]
        ratio = " / ".join(f"{row[p] / baseline[p]:.2f}x" for p in PROCESS_COUNTS)
        lines.append(f"| Python: {label} | {row[1]:,.0f} | {row[2]:,.0f} | {ratio} |")
    if cpp is not None:
        for key, label in CPP_MECHANISMS:
            row = cpp[key]
            lines.append(f"| {label} | {row[1]:,.1f} | {row[2]:,.1f} | n/a |")
    return "\n".join(lines)


def goals(python, cpp):
    baseline = python[BASELINE][1]
    checks = []
    for key in GOAL_ROWS:
        ratio = python[key][1] / baseline
        checks.append({
            "goal": f"Python {key} pair no slower than multiprocessing.Semaphore's pair (uncontended)",
            "measured": f"{python[key][1]:.0f} ns vs {baseline:.0f} ns ({ratio:.2f}x)",
            "met": ratio <= 1.0,
        })
    if cpp is not None:
        for key in ("composepar_acquire_nowait", "composepar_lease"):
            ns = cpp[key][1]
            checks.append({
                "goal": f"C++ {key} pair under {GOAL_CPP_NS:.0f} ns uncontended",
                "measured": f"{ns:.1f} ns",
                "met": ns < GOAL_CPP_NS,
            })
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200_000,
                        help="pairs each Python process times per measurement (default 200000)")
    parser.add_argument("--cpp-iterations", type=int, default=1_000_000,
                        help="pairs each C++ process times per measurement (default 1000000)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per cell; the median is reported")
    parser.add_argument("--json-out", default=os.path.join(HERE, "results", "arbiter.json"),
                        help="where to write the results (default bench/results/arbiter.json)")
    parser.add_argument("--no-cpp", action="store_true", help="skip building and running the C++ benchmark")
    args = parser.parse_args(argv)
    for name in ("iterations", "cpp_iterations", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)} instead")

    started = time.monotonic()
    python_samples = run_python(args.iterations, args.repeats)
    python = medians(python_samples)
    cpp_samples = cpp = None
    if not args.no_cpp:
        binary = build_cpp()
        if binary is not None:
            cpp_samples = run_cpp(binary, args.cpp_iterations, args.repeats)
            cpp = medians(cpp_samples)
    elapsed = time.monotonic() - started

    print(f"## Token acquire + release pair (median of {args.repeats}; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {args.iterations:,} Python / {args.cpp_iterations:,} C++ "
          f"pairs per process)\n")
    print(markdown_table(python, cpp))
    print("\nCapacity (and semaphore value) = number of processes: every pair gets its token at once.")
    print("Goals:")
    checks = goals(python, cpp)
    for check in checks:
        print(f"- [{'x' if check['met'] else ' '}] {check['goal']}: {check['measured']}")
    print(f"\n({elapsed:.1f} s)")

    report = {
        "unit": "ns per pair",
        "statistic": f"median of {args.repeats}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "composepar": composepar.__version__},
        "iterations": {"python": args.iterations, "cpp": args.cpp_iterations},
        "process_counts": list(PROCESS_COUNTS),
        "python": {key: {str(p): ns for p, ns in row.items()} for key, row in python.items()},
        "python_samples": {key: {str(p): v for p, v in row.items()} for key, row in python_samples.items()},
        "cpp": None if cpp is None else {key: {str(p): ns for p, ns in row.items()} for key, row in cpp.items()},
        "cpp_samples": None if cpp_samples is None else
        {key: {str(p): v for p, v in row.items()} for key, row in cpp_samples.items()},
        "goals": checks,
        "seconds": round(elapsed, 1),
    }
    _results.write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
