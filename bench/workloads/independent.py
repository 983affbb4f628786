"""(8) Independent programs: K copies of a BLAS-heavy script started at once, unaware of each other.

The run is the wall clock from starting the K copies to the last one's exit
(their interpreter start-up included). COPY is a script run() writes to a
temporary directory (python -m tbb takes a script path, not -c); each copy is
launched as its mode says:

    default, static-env   python COPY             (static-env: the *_NUM_THREADS inherited)
    threadpoolctl         python COPY             the copy calls threadpool_limits(C // K) first
    tbb, tbb-ipc          python -m tbb [--ipc] COPY
    composepar[-static]   python -m composepar -n C --domain D [--static] COPY   (one shared D)

The joblib-inner and omp-passive modes do not apply (no EXTRA_MODES).
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

from . import _common

NAME = "independent"
DESCRIPTION = "{copies} copies at once, each {repeats} x (matmul + eigh) of {size}x{size}"
LAUNCHES_OWN_PROGRAMS = True
BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def params(cores, quick):
    return {"workers": cores, "copies": cores, "repeats": 20 if quick else 60, "size": 400}


def copy_work(seed, repeats, size):
    """One copy's work; raises AssertionError if a result is wrong."""
    a = _common.random_matrix(seed, size, symmetric=True)
    for _ in range(repeats):
        b = a @ a / size
        w = np.linalg.eigh(b)[0]
        if not np.isclose(w.sum(), np.trace(b), rtol=1e-8, atol=1e-8):
            raise AssertionError(f"{NAME}: eigenvalue sum {w.sum()} != trace {np.trace(b)}")


def copy_main(seed, repeats, size):
    limit = os.environ.get("BENCH_THREADPOOLCTL")
    if limit:
        import threadpoolctl

        threadpoolctl.threadpool_limits(int(limit))
    copy_work(seed, repeats, size)


def tasks(p):
    return [(copy_work, (seed, p["repeats"], p["size"])) for seed in range(p["copies"])]


COPY_SCRIPT = f"""import sys
sys.path.insert(0, {BENCH_DIR!r})
from workloads.independent import copy_main
if __name__ == "__main__":
    copy_main(*(int(arg) for arg in sys.argv[1:]))
"""


def _launcher():
    """The argv that starts a Python script as the mode says, up to the script's path."""
    mode = _common.mode()
    if mode.startswith("composepar"):
        launcher = [sys.executable, "-m", "composepar", "-n", str(_common.cores()),
                    "--domain", os.environ["BENCH_DOMAIN"]]
        return launcher + (["--static"] if mode == "composepar-static" else [])
    if mode == "tbb":
        return [sys.executable, "-m", "tbb"]
    if mode == "tbb-ipc":
        return [sys.executable, "-m", "tbb", "--ipc"]
    return [sys.executable]


def run(p):
    with tempfile.TemporaryDirectory(prefix="bench-independent-") as directory:
        # Not "copy.py": the script's directory comes first on sys.path, and
        # the stdlib's copy module (imported by dataclasses, numpy) would be it.
        script = os.path.join(directory, "bench_independent_copy.py")
        with open(script, "w") as out:
            out.write(COPY_SCRIPT)
        launcher = _launcher()
        copies = [subprocess.Popen(launcher + [script, str(seed), str(p["repeats"]), str(p["size"])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                  for seed in range(p["copies"])]
        failures = []
        for seed, copy in enumerate(copies):
            _, stderr = copy.communicate()
            if copy.returncode != 0:
                lines = stderr.strip().splitlines() or ["(no stderr)"]
                failures.append(f"copy {seed} exited {copy.returncode}: {lines[-1]}")
    if failures:
        raise RuntimeError("; ".join(failures))
