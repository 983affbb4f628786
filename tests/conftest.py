import glob
import os
import subprocess
import sysconfig
import time
import uuid

import pytest

from composepar import _arbiter, _config


@pytest.fixture(scope="session", autouse=True)
def _never_the_users_budget():
    """Code under test that falls back to $COMPOSEPAR_DOMAIN lands in a throwaway domain."""
    name = f"test-session-{os.getpid()}"
    previous = os.environ.get("COMPOSEPAR_DOMAIN")
    os.environ["COMPOSEPAR_DOMAIN"] = name
    yield
    if previous is None:
        os.environ.pop("COMPOSEPAR_DOMAIN", None)
    else:
        os.environ["COMPOSEPAR_DOMAIN"] = previous
    try:
        os.unlink(_config.segment_path(name))
    except FileNotFoundError:
        pass
    _remove_stale_intel_openmp_files()


def _remove_stale_intel_openmp_files():
    """Intel OpenMP (loaded with MKL) leaves /dev/shm/__KMP_REGISTERED_LIB_<pid>_* behind
    when a worker is terminated; remove those of processes that are gone."""
    for path in glob.glob("/dev/shm/__KMP_REGISTERED_LIB_*"):
        pid = os.path.basename(path).split("_")[5]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(path)
            except OSError:
                pass


@pytest.fixture
def domain():
    """A domain no other test (or the user's real session) shares; removed afterwards."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    path = _config.segment_path(name)
    _arbiter._forget_handle(path)
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    except PermissionError:
        pass


START_METHODS = ["fork", "spawn", "forkserver"]


def wait_until(condition, what, seconds):
    """Polls `condition` (a state of the processes or the segment) until it holds; fails
    after `seconds`, a deadline that only a hang reaches, saying what it waited for."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.005)


def _compile(tmp_path_factory, name, command):
    out = tmp_path_factory.mktemp("kernels") / name
    result = subprocess.run(command + ["-o", str(out)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"could not build {name}: {' '.join(command)}\n{result.stderr}")
    return str(out)


KERNELS = os.path.join(os.path.dirname(__file__), "kernels")


@pytest.fixture(scope="session")
def omp_kernel(tmp_path_factory):
    """libomp_team.so: an OpenMP kernel built here with gcc -fopenmp."""
    return _compile(tmp_path_factory, "libomp_team.so",
                    ["gcc", "-O2", "-fopenmp", "-shared", "-fPIC", os.path.join(KERNELS, "omp_team.c")])


@pytest.fixture(scope="session")
def tbb_kernel(tmp_path_factory):
    """libtbb_team.so: a oneTBB kernel built against the tbb-devel wheel's headers and libtbb."""
    prefix = sysconfig.get_paths()["data"]
    include, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    if not os.path.exists(os.path.join(include, "oneapi", "tbb.h")):
        pytest.fail(f"tbb-devel is not installed in {prefix}: `pip install -e '.[test]'` installs it")
    return _compile(tmp_path_factory, "libtbb_team.so",
                    ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{include}", os.path.join(KERNELS, "tbb_team.cpp"),
                     f"-L{lib}", "-ltbb", f"-Wl,-rpath,{lib}"])


@pytest.fixture(scope="session")
def mkl_library():
    """libmkl_rt from the mkl wheel."""
    lib = os.path.join(sysconfig.get_paths()["data"], "lib")
    found = sorted(glob.glob(os.path.join(lib, "libmkl_rt.so*")))
    if found:
        return found[0]
    pytest.fail(f"the mkl wheel is not installed in {lib}: `pip install -e '.[test]'` installs it")
