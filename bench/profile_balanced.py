"""Balanced pools of short BLAS tasks: what composepar's own work costs against OPENBLAS_NUM_THREADS=1.

    python bench/profile_balanced.py [--repeats R] [--workloads pool,joblib] [--modes M,...]
                                     [--cores C] [--json-out PATH]

Two workloads from the do-no-harm issue, where the best static answer is
simply one BLAS thread per task, so anything composepar adds is overhead:

    pool     multiprocessing Pool(C).map of eigh over --tasks random --size^2
             matrices, default chunksize
    joblib   joblib Parallel(n_jobs=C) (loky, its default backend) over eigh of
             --joblib-tasks random --joblib-size^2 matrices

Modes, interleaved (for repeat: for workload: for mode), each run a fresh process:

    plain-1             python, OPENBLAS_NUM_THREADS=1 (the baseline)
    composepar          python -m composepar -n C
    composepar-1        python -m composepar -n C, OPENBLAS_NUM_THREADS=1 preset
                        (the launcher keeps a variable the user set)
    composepar-static   python -m composepar -n C --static          (not run by default)
    plain               python, nothing set: OpenBLAS at one thread per core (not run by default)

Three figures per run: the workload timed inside the program (pool start-up
included, interpreter start-up and imports not), the wall clock of the whole
program, and the CPU seconds (user + system) of the program and every process
it waited for (getrusage of the children: pool workers included). On a shared
machine the CPU seconds move least with the neighbours' load; the wall times
are what users see. Each figure's median, with its spread (median absolute
deviation over the median), and each mode's median over the baseline's.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import _results  # bench/_results.py: the script's folder is first in sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TAG = "PROFILE_RESULT "
BASELINE = "plain-1"
MODES = ("plain-1", "composepar", "composepar-1", "composepar-static", "plain")
DEFAULT_MODES = ("plain-1", "composepar", "composepar-1")
WORKLOADS = ("pool", "joblib")
# Stripped from the children's environment: each mode sets what it means.
STRIPPED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "OMP_WAIT_POLICY",
            "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "MKL_DYNAMIC", "PYTHONDONTWRITEBYTECODE")

CHILD = r"""
import json, os, sys, time
import numpy as np


COUNT = os.environ.get("PROFILE_COUNT_THREADS") == "1"
_openblas = []  # this worker's OpenBLAS controller, with --count-threads


def openblas_threads():
    if not _openblas:
        from threadpoolctl import ThreadpoolController

        _openblas.append(ThreadpoolController().select(internal_api="openblas").lib_controllers[0])
    return _openblas[0].get_num_threads()


def task(seed, size):
    # eigh of a random symmetric matrix: (its smallest eigenvalue, the most OpenBLAS threads seen, or 0)
    before = openblas_threads() if COUNT else 0
    a = np.random.default_rng(seed).random((size, size))
    value = float(np.linalg.eigh(a + a.T)[0][0])
    return value, max(before, openblas_threads()) if COUNT else 0


def pool(workers, tasks, size):
    import multiprocessing

    with multiprocessing.Pool(workers) as p:
        return p.starmap(task, [(seed, size) for seed in range(tasks)])


def joblib_eigh(workers, tasks, size):
    import joblib

    return joblib.Parallel(n_jobs=workers)(joblib.delayed(task)(seed, size) for seed in range(tasks))


if __name__ == "__main__":
    name, workers, tasks, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if name == "joblib":
        import joblib  # imported before the clock starts, as numpy is
    start = time.perf_counter()
    values = (pool if name == "pool" else joblib_eigh)(workers, tasks, size)
    seconds = time.perf_counter() - start
    assert len(values) == tasks and all(v == v for v, _ in values)  # no NaN: the results are real
    result = {"seconds": seconds}
    if COUNT:
        result["wide_tasks"] = sum(1 for _, threads in values if threads > 1)
    print("PROFILE_RESULT " + json.dumps(result), flush=True)
"""


def command(mode, script, workload, args, domain):
    env = {key: value for key, value in os.environ.items()
           if key not in STRIPPED and not key.startswith("COMPOSEPAR_")}
    prefix = [sys.executable]
    if mode in ("plain-1", "composepar-1"):
        env["OPENBLAS_NUM_THREADS"] = "1"
    if mode.startswith("composepar"):
        prefix += ["-m", "composepar", "-n", str(args.cores), "--domain", domain]
        if mode == "composepar-static":
            prefix.append("--static")
    if args.count_threads:
        env["PROFILE_COUNT_THREADS"] = "1"
    tasks, size = (args.tasks, args.size) if workload == "pool" else (args.joblib_tasks, args.joblib_size)
    return prefix + [script, workload, str(args.cores), str(tasks), str(size)], env


def run_once(argv, env):
    """One run in a fresh process: the time inside, the wall clock, the CPU seconds of the process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"profile_balanced: {' '.join(argv)} failed:\n{completed.stderr}")
    result = next(json.loads(line[len(RESULT_TAG):]) for line in completed.stdout.splitlines()
                  if line.startswith(RESULT_TAG))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**result, "wall": wall, "cpu": cpu}


def spread(values):
    """Median absolute deviation over the median."""
    middle = statistics.median(values)
    return statistics.median(abs(v - middle) for v in values) / middle


def summarize(runs, baseline_runs):
    summary = {}
    for figure in ("seconds", "wall", "cpu"):
        values = [run[figure] for run in runs]
        base = statistics.median(run[figure] for run in baseline_runs)
        summary[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                           "spread": spread(values), "ratio": statistics.median(values) / base}
    # Paired: each run against the baseline's run of the same repeat (drift between repeats cancels).
    summary["paired_ratios"] = [run["seconds"] / base["seconds"] for run, base in zip(runs, baseline_runs)]
    if "wide_tasks" in runs[0]:
        summary["wide_tasks"] = [run["wide_tasks"] for run in runs]
    return summary


def markdown(report):
    lines = []
    for workload, modes in report["results"].items():
        lines += ["", f"### {report['descriptions'][workload]}", "",
                  "| mode | inside (s): median [min, max] | spread | / plain-1 | paired / plain-1: median [min, max] "
                  "| wall (s) | / plain-1 | CPU (s) | / plain-1 |" + (" tasks with >1 OpenBLAS thread, per run |"
                                                                    if report["count_threads"] else ""),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if report["count_threads"] else "")]
        for mode, s in modes.items():
            inside, wall, cpu, paired = s["seconds"], s["wall"], s["cpu"], s["paired_ratios"]
            lines.append(f"| {mode} | {inside['median']:.3f} [{inside['min']:.3f}, {inside['max']:.3f}] | "
                         f"{inside['spread'] * 100:.1f}% | {inside['ratio']:.3f}x | {statistics.median(paired):.3f}x "
                         f"[{min(paired):.3f}, {max(paired):.3f}] | {wall['median']:.3f} | {wall['ratio']:.3f}x | "
                         f"{cpu['median']:.3f} | {cpu['ratio']:.3f}x |"
                         + (f" {s['wide_tasks']} |" if "wide_tasks" in s else ""))
    lines += ["", f"{report['repeats']} interleaved runs per cell, {report['cores']} cores, load average at start "
                  f"{report['load_at_start']}, at end {report['load_at_end']}; {report['seconds']:.0f} s in all."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per (workload, mode), interleaved (default 7)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"among {', '.join(WORKLOADS)}")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"among {', '.join(MODES)} (default {','.join(DEFAULT_MODES)}; plain-1 is always run)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="pool workers and capacity")
    parser.add_argument("--tasks", type=int, default=200, help="pool: matrices (default 200)")
    parser.add_argument("--size", type=int, default=256, help="pool: matrix order (default 256)")
    parser.add_argument("--joblib-tasks", type=int, default=100, help="joblib: matrices (default 100)")
    parser.add_argument("--joblib-size", type=int, default=300, help="joblib: matrix order (default 300)")
    parser.add_argument("--count-threads", action="store_true",
                        help="each task also reads OpenBLAS's thread count before and after its eigh (threadpoolctl, "
                             "in every mode alike); the tables then say how many tasks ran with more than one thread")
    parser.add_argument("--json-out", default=os.path.join(HERE, "results", "profile_balanced.json"))
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for given, allowed, option in ((workloads, WORKLOADS, "--workloads"), (modes, MODES, "--modes")):
        unknown = [item for item in given if item not in allowed]
        if unknown or not given:
            parser.error(f"{option} must name some of {', '.join(allowed)}; got {', '.join(unknown) or 'none'} instead")
    modes = [BASELINE] + [m for m in modes if m != BASELINE]
    for name in ("repeats", "cores", "tasks", "size", "joblib_tasks", "joblib_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)} instead")

    domain = f"profile-{os.getpid()}"
    descriptions = {
        "pool": f"pool: Pool({args.cores}).map of eigh over {args.tasks} matrices of {args.size}x{args.size}",
        "joblib": f"joblib: Parallel(n_jobs={args.cores}) (loky) of eigh over {args.joblib_tasks} matrices of "
                  f"{args.joblib_size}x{args.joblib_size}"}
    runs = {w: {m: [] for m in modes} for w in workloads}
    load_at_start = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="composepar-profile-") as directory:
        script = os.path.join(directory, "balanced.py")
        with open(script, "w") as out:
            out.write(CHILD)
        for workload in workloads:  # one untimed run each: bytecode cached, files in the page cache
            for mode in modes:
                run_once(*command(mode, script, workload, args, domain))
        for repeat in range(args.repeats):
            for workload in workloads:
                for mode in modes:
                    run = run_once(*command(mode, script, workload, args, domain))
                    runs[workload][mode].append(run)
                    wide = f", {run['wide_tasks']} tasks with >1 thread" if "wide_tasks" in run else ""
                    print(f"  {repeat + 1}/{args.repeats} {workload:<7} {mode:<18} {run['seconds']:.3f} s inside, "
                          f"{run['wall']:.3f} s wall, {run['cpu']:.3f} s CPU{wide}", file=sys.stderr, flush=True)
    import composepar
    from composepar import _segments

    _segments.remove_segment(domain)
    results = {w: {m: summarize(runs[w][m], runs[w][BASELINE]) for m in modes} for w in workloads}
    report = {"repeats": args.repeats, "cores": args.cores, "count_threads": args.count_threads, "descriptions": {w: descriptions[w] for w in workloads},
              "load_at_start": round(load_at_start, 2), "load_at_end": round(os.getloadavg()[0], 2),
              "seconds": time.monotonic() - started, "python": sys.executable,
              "composepar": os.path.dirname(composepar.__file__), "runs": runs, "results": results}
    print(markdown(report))
    _results.write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
