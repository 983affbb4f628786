"""The C kernels of bench/kernels/, compiled into bench/.build/ (gitignored) and loaded with ctypes.

build() runs the compiler in a subprocess and never loads what it built, so it
is safe in the runner and in a process that will fork (libgomp is not
fork-safe once a parallel region has run). load() is for the processes that
run the kernel.
"""

import ctypes
import os
import shutil
import subprocess

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = os.path.join(BENCH_DIR, "kernels")
BUILD_DIR = os.path.join(BENCH_DIR, ".build")


def source_path(name):
    return os.path.join(SOURCE_DIR, f"{name}.c")


def library_path(name):
    return os.path.join(BUILD_DIR, f"lib{name}.so")


def build(name, flags):
    """Compiles bench/kernels/<name>.c with gcc `flags` unless the built library is newer; returns its path."""
    source, library = source_path(name), library_path(name)
    if os.path.exists(library) and os.path.getmtime(library) >= os.path.getmtime(source):
        return library
    compiler = shutil.which("gcc")
    if compiler is None:
        raise RuntimeError(f"building {source} needs gcc ({' '.join(flags)}), and no gcc is on PATH; install it "
                           f"(e.g. apt-get install gcc) or leave this workload out of --only")
    os.makedirs(BUILD_DIR, exist_ok=True)
    partial = f"{library}.{os.getpid()}.partial"
    completed = subprocess.run([compiler, *flags, source, "-o", partial, "-lm"], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"gcc failed to build {source} (exit status {completed.returncode}):\n{completed.stderr}")
    # Renamed into place, so a run started meanwhile never loads half a file.
    os.replace(partial, library)
    return library


def load(name):
    """The built library of bench/kernels/<name>.c, loaded in this process."""
    library = library_path(name)
    if not os.path.exists(library):
        raise FileNotFoundError(f"{library} is not built; the workload's prepare() builds it (bench/run.py "
                                f"calls it before the workload's runs)")
    return ctypes.CDLL(library)
