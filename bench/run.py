"""composepar against the usual ways of taming nested parallelism, on the composability workloads.

    python bench/run.py [--quick] [--only NAME ...] [--modes M,...] [--cores N] [--repeats R]
                        [--json-out PATH] [--plot PATH] [--md-out PATH]
    python bench/run.py --render-only bench/results/suite.json   # tables again, no run

Where the results go (unless --json-out, --plot or --md-out say otherwise; the
tables and the chart follow --json-out): a full
run (every workload, every mode) writes bench/results/suite.{json,md,png};
--quick writes suite-quick.*; a run of some workloads or modes writes
suite-partial.* (suite-quick-partial.* with --quick). Only a full run replaces
the committed full results.

Every run is a fresh process, so modes never share a pool, a loaded library or
a budget; the modes are interleaved so the machine's drift hits them alike,
and their order rotates by one each repeat, so that no mode always runs
right after the same one (a run leaves the machine's memory and caches as
it found them only roughly: dask_qr's page-fault time, for one, depends on
what the run before freed)::

    runner (this script, idle while it waits)
    for each workload:
        physical limit: one process, 1 thread, each task alone  --> sum of task seconds / cores
        for each repeat:
            for each mode, rotated by the repeat:   fresh process, started as the mode says
                python [-m composepar ...] run.py --child NAME PARAMS
                    workload.run(params), timed inside   --> "BENCH_RESULT {json}" on stdout
                a non-zero exit is recorded as failed, with its stderr's first line

Modes (C = --cores, P = the workload's outer workers):
    default            plain python, nothing set
    static-env         OMP/OPENBLAS/MKL_NUM_THREADS = max(1, C // P) in the environment
    threadpoolctl      each pool worker calls threadpool_limits(max(1, C // P)) in its initializer
    joblib-inner       joblib workloads only: parallel_config(inner_max_num_threads=max(1, C // P))
    omp-passive        OpenMP workloads only: OMP_WAIT_POLICY=passive and nothing else
    tbb, tbb-ipc       python -m tbb [--ipc] (tbb4py: the bench extra installs it)
    composepar         python -m composepar -n C --domain bench-<pid>
    composepar-static  the same with --static
A workload lists the modes it alone can use in EXTRA_MODES.

The physical limit is measured in each repeat too, interleaved with the
modes (the machine drifts): its median over the repeats is the one reported.

The time is the workload's run() measured inside the child (pool start-up
included, interpreter start-up and imports not); for `independent`, whose run()
starts K programs, it is the wall clock of those programs, start-up included.

Every workload is checked for "composepar is not slower than default beyond
noise" (slower_than_default): composepar's median over default's median must
not exceed 1 + noise, where noise is the larger of 3% and each of the two
modes' median absolute deviation over its median. Tables mark a miss with
SLOWER_MARK, and the run ends with the list of misses.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import _results  # bench/_results.py: the script's folder is first in sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_PY = os.path.abspath(__file__)
MODES = ("default", "static-env", "threadpoolctl", "joblib-inner", "omp-passive", "tbb", "tbb-ipc", "composepar",
         "composepar-static")  # the order of the tables
EXTRA_MODES = ("joblib-inner", "omp-passive")  # only for the workloads that list them
REFERENCE_MODE = "composepar"
BASELINE_MODE = "default"  # composepar must not be slower than this beyond noise
NOISE_FLOOR = 0.03  # the least relative difference that counts as slower, whatever the spread
SLOWER_MARK = "⚠ slower than default"
RESULT_TAG = "BENCH_RESULT "
# Stripped from the children's environment so "default" really has nothing set.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS",
    "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "MKL_DYNAMIC",
)
STATIC_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------- in the child


def child_main(name, params_json):
    """--child: runs the workload once and prints its time."""
    from workloads import WORKLOADS

    workload = WORKLOADS[name]
    params = json.loads(params_json)
    start = time.perf_counter()
    workload.run(params)
    seconds = time.perf_counter() - start
    print(RESULT_TAG + json.dumps({"seconds": seconds}), flush=True)
    return 0


def limit_main(name, params_json):
    """--limit: each task alone with 1 thread, in this process; prints the task times."""
    import threadpoolctl

    from workloads import WORKLOADS

    workload = WORKLOADS[name]
    params = json.loads(params_json)
    task_seconds = []
    with threadpoolctl.threadpool_limits(1):
        for fn, args in workload.tasks(params):
            start = time.perf_counter()
            fn(*args)
            task_seconds.append(time.perf_counter() - start)
    print(RESULT_TAG + json.dumps({"task_seconds": task_seconds}), flush=True)
    return 0


# --------------------------------------------------------------- in the runner


def base_environment(cores, mode):
    env = {key: value for key, value in os.environ.items()
           if key not in THREAD_VARIABLES and not key.startswith("COMPOSEPAR_") and not key.startswith("BENCH_")}
    env["BENCH_MODE"] = mode
    env["BENCH_CORES"] = str(cores)
    return env


def mode_command(mode, workload, params, cores, domain):
    """(argv prefix, environment) that start one run of `workload` in `mode`."""
    env = base_environment(cores, mode)
    per_worker = max(1, cores // params["workers"])
    prefix = [sys.executable]
    if mode == "static-env":
        env.update({key: str(per_worker) for key in STATIC_VARIABLES})
    elif mode == "threadpoolctl":
        env["BENCH_THREADPOOLCTL"] = str(per_worker)
    elif mode == "joblib-inner":
        env["BENCH_JOBLIB_INNER"] = str(per_worker)
    elif mode == "omp-passive":
        env["OMP_WAIT_POLICY"] = "passive"
    elif mode in ("tbb", "tbb-ipc"):
        if not workload.LAUNCHES_OWN_PROGRAMS:
            prefix = [sys.executable, "-m", "tbb"] + (["--ipc"] if mode == "tbb-ipc" else [])
    elif mode in ("composepar", "composepar-static"):
        env["BENCH_DOMAIN"] = domain
        if not workload.LAUNCHES_OWN_PROGRAMS:
            prefix = [sys.executable, "-m", "composepar", "-n", str(cores), "--domain", domain]
            if mode == "composepar-static":
                prefix.append("--static")
    elif mode != "default":
        raise ValueError(f"mode must be one of {MODES}; got {mode!r} instead")
    return prefix, env


def _stderr_lines(stderr):
    lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    return (lines[0], lines[-1]) if lines else ("(no stderr)", "(no stderr)")


def run_child(argv, env, timeout):
    """Runs one child; returns {"ok", "seconds" or the failure, "wall"}."""
    start = time.perf_counter()
    try:
        completed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=HERE)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        first, last = _stderr_lines(stderr)
        return {"ok": False, "returncode": None, "error": f"timed out after {timeout} s",
                "stderr_first_line": first, "stderr_last_line": last, "wall": time.perf_counter() - start}
    wall = time.perf_counter() - start
    result = None
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if completed.returncode != 0 or result is None:
        first, last = _stderr_lines(completed.stderr)
        return {"ok": False, "returncode": completed.returncode,
                "error": f"exit status {completed.returncode}" + ("" if result is None else " after a result"),
                "stderr_first_line": first, "stderr_last_line": last, "wall": wall}
    return {"ok": True, **result, "wall": wall}


def remove_domain(domain):
    from composepar import _segments

    live = _segments.remove_segment(domain)
    if live:
        print(f"warning: segment of domain {domain!r} kept: live processes {live}", file=sys.stderr)


def measure_limit(name, params, cores, timeout):
    """One measurement of the physical limit: every task alone, 1 thread, in a fresh process."""
    env = base_environment(cores, "limit")
    env.update({key: "1" for key in STATIC_VARIABLES})
    outcome = run_child([sys.executable, RUN_PY, "--limit", name, json.dumps(params)], env, timeout)
    if not outcome["ok"]:
        return outcome
    total = sum(outcome["task_seconds"])
    return {"ok": True, "task_seconds": outcome["task_seconds"], "serial_seconds": total, "seconds": total / cores}


def summarize_limit(measurements, cores):
    """The limit reported: the median over the repeats' measurements."""
    passed = [m for m in measurements if m["ok"]]
    if not passed:
        failure = measurements[0]
        return {"ok": False, "measurements": measurements, "error": failure["error"],
                "stderr_last_line": failure["stderr_last_line"]}
    serial = statistics.median(m["serial_seconds"] for m in passed)
    return {"ok": True, "measurements": measurements, "serial_seconds": serial, "cores": cores,
            "seconds": serial / cores, "serial_seconds_min": min(m["serial_seconds"] for m in passed),
            "serial_seconds_max": max(m["serial_seconds"] for m in passed)}


def workload_modes(workload, modes):
    """The modes to run for `workload`: those asked for, minus extra modes it does not list."""
    extra = getattr(workload, "EXTRA_MODES", ())
    return [mode for mode in modes if mode not in EXTRA_MODES or mode in extra]


def summarize(runs):
    times = [run["seconds"] for run in runs if run["ok"]]
    summary = {"runs": runs, "times": times, "failed": sum(1 for run in runs if not run["ok"])}
    if times:
        summary.update(median=statistics.median(times), min=min(times), max=max(times))
    return summary


def relative_spread(times):
    """Median absolute deviation over the median: a spread one outlier in 3 runs does not inflate."""
    middle = statistics.median(times)
    return statistics.median(abs(t - middle) for t in times) / middle


def slower_than_default(modes):
    """The check "composepar is not slower than default beyond noise", or None without both medians.

    Slower beyond noise: composepar's median / default's median > 1 + noise,
    noise = max(NOISE_FLOOR, relative_spread of either mode's runs). With one
    run per mode the spread is not measured and the floor alone applies.
    """
    baseline, ours = modes.get(BASELINE_MODE, {}), modes.get(REFERENCE_MODE, {})
    if "median" not in baseline or "median" not in ours:
        return None
    noise = max(NOISE_FLOOR, relative_spread(baseline["times"]), relative_spread(ours["times"]))
    ratio = ours["median"] / baseline["median"]
    return {"ratio": ratio, "noise": noise, "slower": ratio > 1 + noise,
            "runs": min(len(baseline["times"]), len(ours["times"]))}


def run_workload(name, workload, params, args, domain):
    description = workload.DESCRIPTION.format(**params)
    print(f"\n[{name}] {description}", file=sys.stderr, flush=True)
    prepare = getattr(workload, "prepare", None)
    if prepare is not None:
        prepare(params)  # e.g. builds a kernel, once, in the runner
    modes = workload_modes(workload, args.modes)
    runs = {mode: [] for mode in modes}
    limits = []
    for repeat in range(args.repeats):
        limit = measure_limit(name, params, args.cores, args.timeout)
        limit["repeat"] = repeat
        limits.append(limit)
        shown = f"{limit['seconds']:.3f} s ({limit['serial_seconds']:.3f} s single-threaded)" if limit["ok"] else \
            f"FAILED ({limit['error']}): {limit['stderr_last_line']}"
        print(f"  repeat {repeat + 1}/{args.repeats} {'physical limit':<18} {shown}", file=sys.stderr, flush=True)
        shift = repeat % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            prefix, env = mode_command(mode, workload, params, args.cores, domain)
            outcome = run_child(prefix + [RUN_PY, "--child", name, json.dumps(params)], env, args.timeout)
            if mode.startswith("composepar"):
                remove_domain(domain)
            outcome["repeat"] = repeat
            runs[mode].append(outcome)
            shown = f"{outcome['seconds']:.3f} s" if outcome["ok"] else \
                f"FAILED ({outcome['error']}): {outcome['stderr_last_line']}"
            print(f"  repeat {repeat + 1}/{args.repeats} {mode:<18} {shown}", file=sys.stderr, flush=True)
    limit = summarize_limit(limits, args.cores)
    modes = {mode: summarize(mode_runs) for mode, mode_runs in runs.items()}
    reference = modes.get(REFERENCE_MODE, {}).get("median")
    for summary in modes.values():
        summary["ratio_to_composepar"] = (summary["median"] / reference
                                          if reference and "median" in summary else None)
    finished = {mode: s["median"] for mode, s in modes.items() if "median" in s}
    best = min(finished, key=finished.get) if finished else None
    efficiency = limit["seconds"] / reference if limit["ok"] and reference else None
    return {"description": description, "params": params, "workers": params["workers"], "limit": limit,
            "modes": modes, "best_mode": best, "composepar_efficiency": efficiency,
            "vs_default": slower_than_default(modes)}


# --------------------------------------------------------------- report


def markdown_table(name, result, repeats):
    lines = [f"### {name}: {result['description']}", "",
             "| mode | median (s) | min (s) | max (s) | median / composepar median | failed runs |",
             "|---|---:|---:|---:|---:|---|"]
    for mode, summary in result["modes"].items():
        failed = f"{summary['failed']}/{repeats}"
        if summary["failed"]:
            failure = next(run for run in summary["runs"] if not run["ok"])
            failed += f": {failure['error']}; stderr: `{failure['stderr_first_line']}` ... `{failure['stderr_last_line']}`"
        if "median" in summary:
            ratio = summary["ratio_to_composepar"]
            ratio_text = "n/a" if ratio is None else f"{ratio:.2f}x"
            label = f"**{mode}**" if mode == result["best_mode"] else mode
            if mode == REFERENCE_MODE and (result.get("vs_default") or {}).get("slower"):
                label += f" {SLOWER_MARK}"
            lines.append(f"| {label} | {summary['median']:.3f} | {summary['min']:.3f} | {summary['max']:.3f} "
                         f"| {ratio_text} | {failed} |")
        else:
            lines.append(f"| {mode} | failed | failed | failed | n/a | {failed} |")
    limit = result["limit"]
    lines.append("")
    if limit["ok"]:
        lines.append(f"Physical limit: {limit['seconds']:.3f} s ({limit['serial_seconds']:.3f} s of single-threaded "
                     f"task time / {limit['cores']} cores; median of {len(limit['measurements'])} measurements "
                     f"interleaved with the runs, {limit['serial_seconds_min']:.3f} to "
                     f"{limit['serial_seconds_max']:.3f} s).")
    else:
        lines.append(f"Physical limit: failed ({limit['error']}; `{limit['stderr_last_line']}`).")
    efficiency = result["composepar_efficiency"]
    lines.append("composepar efficiency (limit / composepar median): "
                 + ("n/a" if efficiency is None else f"{efficiency:.2f}") + f". Best mode: {result['best_mode']} "
                 "(bold).")
    lines.append(f"Against default: {vs_default_text(result.get('vs_default'))}.")
    return "\n".join(lines)


def vs_default_text(check):
    if check is None:
        return "n/a (default or composepar has no passed run)"
    verdict = SLOWER_MARK if check["slower"] else "not slower beyond noise"
    spread = "" if check["runs"] > 1 else ", 1 run: spread not measured"
    return f"composepar / default = {check['ratio']:.2f}x, noise {check['noise'] * 100:.0f}%{spread}: {verdict}"


def summary_table(report):
    """One row per workload: the check against default, misses marked."""
    lines = ["| workload | default median (s) | composepar median (s) | composepar / default | noise | "
             "slower than default beyond noise |", "|---|---:|---:|---:|---:|---|"]
    for name, result in report["workloads"].items():
        check = result.get("vs_default")
        if check is None:
            lines.append(f"| {name} | – | – | n/a | n/a | n/a |")
            continue
        modes = result["modes"]
        lines.append(f"| {name} | {modes[BASELINE_MODE]['median']:.3f} | {modes[REFERENCE_MODE]['median']:.3f} | "
                     f"{check['ratio']:.2f}x | {check['noise'] * 100:.0f}% | "
                     f"{SLOWER_MARK if check['slower'] else 'no'} |")
    return "\n".join(lines)


def render(report):
    """The whole markdown report: the check against default, one table per workload, the machine."""
    for result in report["workloads"].values():
        if "vs_default" not in result:  # results written before the check existed
            result["vs_default"] = slower_than_default(result["modes"])
    parts = [f"## composepar against the peers ({'--quick, ' if report['quick'] else ''}{report['cores']} cores, "
             f"median of {report['repeats']} interleaved runs, seconds per run of the workload)",
             "### composepar against default",
             f"Slower beyond noise: composepar's median / default's median > 1 + noise, noise = the larger of "
             f"{NOISE_FLOOR * 100:.0f}% and each mode's median absolute deviation / median over its runs.",
             summary_table(report)]
    parts += [markdown_table(name, result, report["repeats"]) for name, result in report["workloads"].items()]
    parts.append(machine_text(report["machine"]))
    parts.append(f"({report['seconds']:.0f} s in all)")
    return "\n\n".join(parts) + "\n"


def slower_workloads(report):
    return [name for name, result in report["workloads"].items() if (result.get("vs_default") or {}).get("slower")]


MACHINE_PROBE = """
import importlib.metadata, json, os, platform, numpy, threadpoolctl
info = threadpoolctl.threadpool_info()
versions = {}
for name in ("scipy", "joblib", "dask", "threadpoolctl", "tbb", "tbb4py"):
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
print(json.dumps({"python": platform.python_version(), "numpy": numpy.__version__, "packages": versions,
                  "threadpools": [{k: pool.get(k) for k in ("internal_api", "version", "num_threads",
                                   "threading_layer", "architecture")} for pool in info]}))
"""


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}
    probe = subprocess.run([sys.executable, "-c", MACHINE_PROBE], capture_output=True, text=True,
                           env=base_environment(os.cpu_count(), "probe"))
    if probe.returncode == 0:
        info.update(json.loads(probe.stdout))
    else:
        info["probe_error"] = _stderr_lines(probe.stderr)[1]
    try:
        import composepar

        info["composepar"] = composepar.__version__
    except ImportError:
        info["composepar"] = None
    return info


def machine_text(info):
    pools = ", ".join(f"{pool['internal_api']} {pool['version']} ({pool['threading_layer']}, "
                      f"{pool['architecture']}, {pool['num_threads']} threads by default)"
                      for pool in info.get("threadpools", [])) or "unknown"
    packages = ", ".join(f"{name} {version or 'not installed'}" for name, version in info.get("packages", {}).items())
    return (f"Machine: {info['cpu_count']} CPUs ({info['cpu_model']}), {info['platform']}; "
            f"Python {info.get('python', '?')}, NumPy {info.get('numpy', '?')}, native pools: {pools}; "
            f"{packages}; composepar {info.get('composepar')}.")


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed; no plot written (pip install -e \".[bench]\")")
        return False
    names = list(report["workloads"])
    modes = report["modes"]
    colors = {mode: f"C{index % 10}" for index, mode in enumerate(modes)}
    slots = max(len(result["modes"]) for result in report["workloads"].values())
    width = 0.85 / slots
    figure, axes = plt.subplots(figsize=(max(7, 1.3 * len(names) + 3), 5))
    labelled = set()
    for position, name in enumerate(names):
        # Only the modes this workload ran, side by side (extra modes are per workload).
        ran = [mode for mode in modes if mode in report["workloads"][name]["modes"]]
        for index, mode in enumerate(ran):
            ratio = report["workloads"][name]["modes"][mode]["ratio_to_composepar"]
            x = position + (index - (len(ran) - 1) / 2) * width
            label = None if mode in labelled else mode
            labelled.add(mode)
            axes.bar(x, ratio if ratio is not None else 0, width, color=colors[mode], label=label)
            if ratio is None:
                axes.text(x, 1.0, "failed", rotation=90, ha="center", va="bottom", fontsize=6)
    axes.axhline(1.0, color="black", linewidth=0.8)
    finite = [summary["ratio_to_composepar"] for result in report["workloads"].values()
              for summary in result["modes"].values() if summary["ratio_to_composepar"]]
    if finite and max(finite) > 10:
        axes.set_yscale("log")  # one oversubscribed mode at 40x would flatten every other bar
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=30, ha="right")
    axes.set_ylabel("median time / composepar median\n(lower is faster)")
    machine = report["machine"]
    axes.set_title(f"{report['cores']} cores ({machine['cpu_model']}), median of {report['repeats']}"
                   + (", --quick" if report["quick"] else ""))
    handles, labels = axes.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: modes.index(labels[i]))
    axes.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
                bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# --------------------------------------------------------------- main


def parse_args(argv):
    from workloads import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every workload at its smallest size (a smoke run)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these workloads (repeatable or comma-separated): {', '.join(WORKLOADS)}")
    parser.add_argument("--cores", type=int, default=os.cpu_count(),
                        help="cores to use: composepar's capacity, the static splits, and the workload sizes "
                             "(default: os.cpu_count())")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per (workload, mode), interleaved (default 3; 1 with --quick)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds before one run counts as failed (default 600)")
    parser.add_argument("--modes", metavar="MODE[,MODE...]",
                        help=f"run only these modes (default: all): {', '.join(MODES)}")
    parser.add_argument("--json-out", help="where to write the results (default: see above)")
    parser.add_argument("--plot", help="where to write the chart (default: see above)")
    parser.add_argument("--md-out", help="where to write the tables (default: see above)")
    parser.add_argument("--render-only", metavar="JSON",
                        help="run nothing: write the tables (and the chart, with --plot) from a results file; "
                             "the tables go next to it (.md) unless --md-out")
    args = parser.parse_args(argv)
    if args.render_only:
        return args
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    for name in ("cores", "repeats", "timeout"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)} instead")
    names = [name.strip() for item in (args.only or []) for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        parser.error(f"--only must name workloads among {', '.join(WORKLOADS)}; got {', '.join(unknown)} instead")
    args.workloads = [name for name in WORKLOADS if not names or name in names]
    modes = [mode.strip() for mode in (args.modes or "").split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"--modes must name modes among {', '.join(MODES)}; got {', '.join(unknown)} instead")
    args.modes = [mode for mode in MODES if not modes or mode in modes]
    # Only a full run may replace the committed full results.
    partial = len(args.workloads) < len(WORKLOADS) or len(args.modes) < len(MODES)
    stem = os.path.join(HERE, "results", "suite" + ("-quick" if args.quick else "") + ("-partial" if partial else ""))
    if args.json_out:
        stem = os.path.splitext(args.json_out)[0]  # the tables and the chart go beside it
    args.json_out = args.json_out or stem + ".json"
    args.plot = args.plot or stem + ".png"
    args.md_out = args.md_out or stem + ".md"
    return args


def write_text(text, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as out:
        out.write(text)
    print(f"wrote {path}")


def render_only(args):
    with open(args.render_only) as source:
        report = json.load(source)
    text = render(report)
    print(text)
    write_text(text, args.md_out or os.path.splitext(args.render_only)[0] + ".md")
    if args.plot and plot(report, args.plot):
        print(f"wrote {args.plot}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(*argv[1:3])
    if argv[:1] == ["--limit"]:
        return limit_main(*argv[1:3])
    from workloads import WORKLOADS

    args = parse_args(argv)
    if args.render_only:
        return render_only(args)
    domain = f"bench-{os.getpid()}"
    started = time.monotonic()
    machine = machine_info()
    results = {}
    for name in args.workloads:
        workload = WORKLOADS[name]
        results[name] = run_workload(name, workload, workload.params(args.cores, args.quick), args, domain)
    elapsed = time.monotonic() - started

    report = {
        "unit": "seconds per run of the workload",
        "statistic": f"median of {args.repeats} interleaved runs, each in a fresh process",
        "quick": args.quick, "cores": args.cores, "repeats": args.repeats, "modes": args.modes,
        "domain": domain, "machine": machine, "workloads": results, "seconds": round(elapsed, 1),
    }
    text = render(report)
    print(text)
    _results.write_json(report, args.json_out)
    write_text(text, args.md_out)
    if plot(report, args.plot):
        print(f"wrote {args.plot}")
    slower = slower_workloads(report)
    print("composepar slower than default beyond noise: " + (", ".join(slower) if slower else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
