"""What composepar costs when there is nothing to coordinate: start-up and per-task overhead.

    python bench/overhead.py [--quick] [--starts N] [--tasks N] [--repeats R] [--cores C]
                             [--json-out PATH]

Start-up: the wall clock of ``python FILE`` against ``python -m composepar
FILE`` on an empty script and on ``import numpy``, each started --starts
times, interleaved, after one untimed warm-up each (so both read cached
bytecode). The overhead is the difference of the medians (and of the minima).

Per task: a ``Pool(C)`` maps a trivial function over --tasks items, plain
against under the launcher, with the map's default chunksize and with
chunksize 1 (the worst case: a lease and a pickled Task per item). Each is
timed inside a fresh process after its pool has started and done one warm-up
map, --repeats times interleaved; the figure is microseconds per item and
composepar's ratio to plain. A ``ThreadPool(C)`` line shows the same without
pickling.

PYTHONDONTWRITEBYTECODE is removed from the children's environment: with it
set every import compiles its module again, which is not what users run.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import _results  # bench/_results.py: the script's folder is first in sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TAG = "OVERHEAD_RESULT "
STRIPPED = ("PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

PER_TASK_CHILD = """
import json, sys, time
from multiprocessing.pool import Pool, ThreadPool

def tiny(x):
    return x + 1

if __name__ == "__main__":
    kind, workers, tasks, chunksize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    chunksize = None if chunksize == "default" else int(chunksize)
    with (Pool if kind == "Pool" else ThreadPool)(workers) as pool:
        pool.map(tiny, range(tasks), chunksize)  # warm-up: workers started, code paths loaded
        start = time.perf_counter()
        results = pool.map(tiny, range(tasks), chunksize)
        seconds = time.perf_counter() - start
    assert results == [x + 1 for x in range(tasks)]
    print("OVERHEAD_RESULT " + json.dumps({"seconds": seconds}), flush=True)
"""


def environment():
    env = {key: value for key, value in os.environ.items()
           if key not in STRIPPED and not key.startswith("COMPOSEPAR_")}
    return env


def launcher(cores, domain):
    return [sys.executable, "-m", "composepar", "-n", str(cores), "--domain", domain]


def time_command(argv, env):
    start = time.perf_counter()
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=HERE)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {completed.returncode}: {completed.stderr.strip()[-500:]}")
    return seconds


def child_seconds(argv, env):
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=HERE)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])["seconds"]
    raise RuntimeError(f"{' '.join(argv)} exited {completed.returncode}: {completed.stderr.strip()[-500:]}")


def summary(seconds):
    return {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds),
            "max_ms": 1e3 * max(seconds), "runs": len(seconds)}


def measure_startup(directory, starts, cores, domain):
    scripts = {"empty script": "", "import numpy": "import numpy\n"}
    env = environment()
    results = {}
    for name, source in scripts.items():
        path = os.path.join(directory, name.replace(" ", "_") + ".py")
        with open(path, "w") as script:
            script.write(source)
        commands = {"python": [sys.executable, path], "python -m composepar": launcher(cores, domain) + [path]}
        for argv in commands.values():
            time_command(argv, env)  # warm-up: bytecode compiled and cached, files in the page cache
        times = {mode: [] for mode in commands}
        for _ in range(starts):
            for mode, argv in commands.items():
                times[mode].append(time_command(argv, env))
        plain, launched = summary(times["python"]), summary(times["python -m composepar"])
        results[name] = {"python": plain, "python -m composepar": launched,
                         "overhead_median_ms": launched["median_ms"] - plain["median_ms"],
                         "overhead_min_ms": launched["min_ms"] - plain["min_ms"]}
        print(f"  start-up, {name}: python {plain['median_ms']:.1f} ms, composepar {launched['median_ms']:.1f} ms "
              f"(median of {starts})", file=sys.stderr, flush=True)
    return results


def measure_per_task(directory, tasks, repeats, cores, domain):
    path = os.path.join(directory, "per_task.py")
    with open(path, "w") as script:
        script.write(PER_TASK_CHILD)
    env = environment()
    cases = [("Pool", "default"), ("Pool", "1"), ("ThreadPool", "default"), ("ThreadPool", "1")]
    results = {}
    for kind, chunksize in cases:
        args = [path, kind, str(cores), str(tasks), chunksize]
        commands = {"plain": [sys.executable] + args, "composepar": launcher(cores, domain) + args}
        times = {mode: [] for mode in commands}
        for _ in range(repeats):
            for mode, argv in commands.items():
                times[mode].append(child_seconds(argv, env))
        plain = statistics.median(times["plain"]) / tasks * 1e6
        launched = statistics.median(times["composepar"]) / tasks * 1e6
        name = f"{kind}({cores}).map, chunksize {chunksize}"
        results[name] = {"plain_us_per_task": plain, "composepar_us_per_task": launched,
                         "ratio": launched / plain, "times": times}
        print(f"  per task, {name}: plain {plain:.2f} us, composepar {launched:.2f} us "
              f"({launched / plain:.2f}x)", file=sys.stderr, flush=True)
    return results


def markdown(report):
    lines = [f"### Start-up (median of {report['starts']} starts, after a warm-up)", "",
             "| script | python (ms) | python -m composepar (ms) | overhead, medians (ms) | overhead, minima (ms) |",
             "|---|---:|---:|---:|---:|"]
    for name, result in report["startup"].items():
        lines.append(f"| {name} | {result['python']['median_ms']:.1f} | "
                     f"{result['python -m composepar']['median_ms']:.1f} | {result['overhead_median_ms']:.1f} | "
                     f"{result['overhead_min_ms']:.1f} |")
    lines += ["", f"### Per task ({report['tasks']} trivial tasks, median of {report['repeats']} runs)", "",
              "| map | plain (us/task) | composepar (us/task) | composepar / plain |", "|---|---:|---:|---:|"]
    for name, result in report["per_task"].items():
        lines.append(f"| {name} | {result['plain_us_per_task']:.2f} | {result['composepar_us_per_task']:.2f} | "
                     f"{result['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer starts and tasks: a smoke run")
    parser.add_argument("--starts", type=int, default=None, help="starts per command (default 30, --quick 5)")
    parser.add_argument("--tasks", type=int, default=10_000, help="items per map (default 10000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per map case (default 5, --quick 1)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="pool workers and capacity")
    parser.add_argument("--json-out", help="where to write the results (default bench/results/overhead.json, "
                                           "overhead-quick.json with --quick: a smoke run never replaces a full one)")
    args = parser.parse_args(argv)
    args.json_out = args.json_out or os.path.join(HERE, "results", "overhead-quick.json" if args.quick
                                                  else "overhead.json")
    args.starts = args.starts or (5 if args.quick else 30)
    args.repeats = args.repeats or (1 if args.quick else 5)
    for name in ("starts", "tasks", "repeats", "cores"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)} instead")
    domain = f"overhead-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="composepar-overhead-") as directory:
        startup = measure_startup(directory, args.starts, args.cores, domain)
        per_task = measure_per_task(directory, args.tasks, args.repeats, args.cores, domain)
    from composepar import _segments

    _segments.remove_segment(domain)
    report = {"starts": args.starts, "tasks": args.tasks, "repeats": args.repeats, "cores": args.cores,
              "python": platform.python_version(), "platform": platform.platform(), "startup": startup,
              "per_task": per_task}
    print(markdown(report))
    _results.write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
