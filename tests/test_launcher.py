"""python -m composepar script.py: run as a user would, in subprocesses, next to plain python."""

import json
import os
import py_compile
import signal
import site
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from composepar import Arbiter, _environment

from conftest import START_METHODS

THREAD_VARIABLES = list(_environment.THREAD_COUNT_VARIABLES) + list(_environment.WAIT_POLICY_VARIABLES)

# Prints what a program can see of how it was started.
PROBE = """\
import json, os, sys
print(json.dumps({
    "argv": sys.argv, "name": __name__, "path0": sys.path[0], "file": globals().get("__file__"),
    "main_is_globals": sys.modules["__main__"].__dict__ is globals(),
    "globals": sorted(name for name in globals() if name.startswith("__")),
    "spec": getattr(__spec__, "name", None), "loader": type(__loader__).__name__,
}))
"""

FAILING = """\
def inner():
    raise ValueError("from the program")


def outer():
    inner()


outer()
"""


def clean_env(**extra):
    """The test's environment without COMPOSEPAR_* or thread-count variables, plus `extra`."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("COMPOSEPAR_") and name not in THREAD_VARIABLES}
    env.update(extra)
    return env


def run_python(*args, cwd=None, env=None, input=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env if env is not None else clean_env(), input=input)


def launch(domain, *args, cwd=None, env=None, input=None):
    """python -m composepar --domain D args..."""
    return run_python("-m", "composepar", "--domain", domain, *args, cwd=cwd, env=env, input=input)


def write(directory, name, text):
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def probes(tmp_path):
    """A working directory with the probe as a script, a module, a directory and a zip."""
    write(tmp_path, "sub/probe.py", PROBE)
    write(tmp_path, "sub/probemod.py", PROBE)
    write(tmp_path, "app/__main__.py", PROBE)
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as archive:
        archive.writestr("__main__.py", PROBE)
    os.symlink(tmp_path / "sub" / "probe.py", tmp_path / "link.py")
    py_compile.compile(str(tmp_path / "sub" / "probe.py"), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
    return tmp_path


@pytest.mark.parametrize(
    "program",
    [
        ["sub/probe.py", "a", "-n", "3"],  # options after the script are the script's
        ["./sub/../sub/probe.py"],
        ["link.py", "b"],  # sys.path[0] is the real file's directory
        ["app", "c"],  # a directory with __main__.py
        ["app.zip", "d"],
        ["compiled.pyc", "e"],
        ["-m", "sub.probemod", "e", "--domain", "x"],
        ["-m", "app", "e"],  # a package's __main__
        ["-c", PROBE, "f", "-v"],
        ["-", "g"],
    ],
    ids=["script", "dotted", "symlink", "directory", "zip", "pyc", "module", "package", "command", "stdin"],
)
def test_the_program_sees_what_plain_python_shows_it(probes, domain, program):
    stdin = PROBE if program[0] == "-" else None
    plain = run_python(*program, cwd=probes, input=stdin)
    assert plain.returncode == 0, plain.stderr
    launched = launch(domain, *program, cwd=probes, input=stdin)
    assert launched.returncode == 0, launched.stderr
    assert launched.stderr == ""
    seen, expected = json.loads(launched.stdout), json.loads(plain.stdout)
    assert seen == expected
    assert seen["name"] == "__main__" and seen["main_is_globals"]


def test_the_program_keeps_its_main_module_after_it_returns(tmp_path, domain):
    # What runs after the main module returned (non-daemon threads, atexit
    # handlers, and the spawn children they start, which import __main__)
    # still sees the program's __main__ and argv; __file__ is gone, as python
    # removes it.
    write(tmp_path, "late.py", """\
        import atexit, sys, threading, time

        def show(when):
            main = sys.modules["__main__"]
            print(when, main.show is show, getattr(main, "__file__", None), sys.argv, flush=True)

        atexit.register(show, "atexit")
        started = threading.Event()

        def later():
            started.set()
            time.sleep(0.2)
            show("thread")

        threading.Thread(target=later).start()
        started.wait()
    """)
    plain = run_python("late.py", "x", cwd=tmp_path)
    launched = launch(domain, "late.py", "x", cwd=tmp_path)
    assert launched.returncode == plain.returncode == 0, launched.stderr
    assert launched.stdout == plain.stdout == "thread True None ['late.py', 'x']\natexit True None ['late.py', 'x']\n"


@pytest.mark.parametrize(
    "source, returncode, stderr",
    [
        ("pass", 0, ""),
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit('goodbye')", 1, "goodbye\n"),
        ("raise SystemExit(None)", 0, ""),
    ],
)
def test_exit_status_is_the_programs(tmp_path, domain, source, returncode, stderr):
    script = write(tmp_path, "exits.py", source)
    result = launch(domain, str(script))
    assert (result.returncode, result.stderr) == (returncode, stderr)


@pytest.mark.parametrize("mode", ["script", "module", "command", "syntax error"])
def test_an_uncaught_exception_prints_the_same_traceback_as_python(tmp_path, domain, mode):
    write(tmp_path, "failing.py", FAILING)
    write(tmp_path, "broken.py", "def (\n")
    program = {"script": ["failing.py"], "module": ["-m", "failing"], "command": ["-c", FAILING],
               "syntax error": ["broken.py"]}[mode]
    plain = run_python(*program, cwd=tmp_path)
    launched = launch(domain, *program, cwd=tmp_path)
    assert launched.returncode == plain.returncode == 1
    assert launched.stderr == plain.stderr
    assert "_launcher.py" not in launched.stderr and "_cli.py" not in launched.stderr
    if mode == "script":
        assert f'File "{tmp_path / "failing.py"}", line 2, in inner' in launched.stderr


def test_a_program_excepthook_sees_only_the_programs_frames(tmp_path, domain):
    write(tmp_path, "hook.py", """\
        import sys, traceback

        def hook(exc_type, value, tb):
            print([frame.name for frame in traceback.extract_tb(tb)], exc_type.__name__, file=sys.stderr)

        sys.excepthook = hook

        def fail():
            raise KeyError(1)

        fail()
    """)
    result = launch(domain, "hook.py", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "['<module>', 'fail'] KeyError\n"


def test_stdin_passes_through(tmp_path, domain):
    script = write(tmp_path, "upper.py", "import sys; print(sys.stdin.read().upper(), end='')")
    result = launch(domain, str(script), input="hello\nworld\n")
    assert (result.returncode, result.stdout) == (0, "HELLO\nWORLD\n")


def wait_until_sleeping(pid):
    """Until the process is asleep (in time.sleep), so that SIGINT lands on that line (deadline 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "S":
                return
        time.sleep(0.001)  # polls the state, with a deadline
    raise AssertionError(f"process {pid} did not go to sleep within 60 s")


def test_sigint_ends_the_program_as_it_ends_plain_python(tmp_path, domain):
    write(tmp_path, "sleeper.py", """\
        import atexit, time
        atexit.register(print, "atexit ran", flush=True)
        print("ready", flush=True)
        time.sleep(60)
    """)
    outcomes = []
    for command in (["sleeper.py"], ["-m", "composepar", "--domain", domain, "sleeper.py"]):
        child = subprocess.Popen([sys.executable, *command], cwd=tmp_path, env=clean_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        wait_until_sleeping(child.pid)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        outcomes.append((child.returncode, out, err))
    assert outcomes[1] == outcomes[0]
    returncode, out, err = outcomes[1]
    assert returncode == -signal.SIGINT  # python re-raises SIGINT at exit: the shell sees 130
    assert out == "atexit ran\n"
    assert err.startswith("Traceback") and err.endswith("KeyboardInterrupt\n")
    assert "composepar" not in err


POOL_INTERRUPTED = """\
import multiprocessing, sys, threading

def work(x):
    if x == 0:
        print("running", flush=True)  # the test sends SIGINT once a task runs
    threading.Event().wait(60)
    return x

if __name__ == "__main__":
    with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:
        pool.map(work, range(4))
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_sigint_in_a_pool_program_prints_the_traceback_plain_python_prints(tmp_path, domain, start_method):
    write(tmp_path, "pool_interrupted.py", POOL_INTERRUPTED)
    outcomes = []
    for command in (["pool_interrupted.py", start_method],
                    ["-m", "composepar", "--domain", domain, "pool_interrupted.py", start_method]):
        child = subprocess.Popen([sys.executable, *command], cwd=tmp_path, env=clean_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "running\n"
        wait_until_sleeping(child.pid)  # the main thread waits in map()
        child.send_signal(signal.SIGINT)  # to the main process, as `kill -INT`; workers are the pool's to stop
        out, err = child.communicate(timeout=60)
        outcomes.append((child.returncode, err))
    assert outcomes[1] == outcomes[0]
    returncode, err = outcomes[1]
    assert returncode == -signal.SIGINT and err.endswith("KeyboardInterrupt\n")
    assert "composepar" not in err


def test_a_failed_pool_task_prints_the_traceback_plain_python_prints(tmp_path, domain):
    write(tmp_path, "pool_fails.py", """\
        import multiprocessing

        def work(x):
            raise ValueError("from a task")

        if __name__ == "__main__":
            with multiprocessing.Pool(1) as pool:
                pool.map(work, [0])
    """)
    plain = run_python("pool_fails.py", cwd=tmp_path)
    launched = launch(domain, "pool_fails.py", cwd=tmp_path)
    assert launched.returncode == plain.returncode == 1
    assert launched.stderr == plain.stderr  # the worker's traceback (the cause) too
    assert "composepar" not in launched.stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 a bare raise re-raises the traceback it caught, "
                    "so the worker's own print keeps composepar's Task.__call__ line (README, limits)")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_that_dies_of_an_exception_prints_what_plain_python_prints(tmp_path, domain, start_method):
    """The worker's own print (multiprocessing's "Process ForkPoolWorker-1:" and its traceback, as
    at a Ctrl-C that reaches the workers), which the main thread's traceback cutting never sees."""
    write(tmp_path, "worker_dies.py", f"""\
        import multiprocessing, time

        def work(x):
            raise KeyboardInterrupt

        if __name__ == "__main__":
            pool = multiprocessing.get_context({start_method!r}).Pool(1, maxtasksperchild=1)
            worker = pool._pool[0]
            result = pool.map_async(work, [0])
            pool.close()
            # Not a wait on its sentinel: the pool closes that descriptor when it
            # replaces the worker, and the next worker's pipe may reuse its number.
            deadline = time.monotonic() + 60
            while worker.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.01)
            pool.terminate()
    """)
    plain = run_python("worker_dies.py", cwd=tmp_path)
    launched = launch(domain, "worker_dies.py", cwd=tmp_path)
    assert launched.returncode == plain.returncode == 0
    assert "Process " in plain.stderr and "KeyboardInterrupt" in plain.stderr
    assert launched.stderr == plain.stderr
    assert "composepar" not in launched.stderr


def test_chained_exceptions_are_cut_too(tmp_path, domain):
    write(tmp_path, "chained.py", """\
        from multiprocessing.pool import ThreadPool

        def work(x):
            raise KeyError(x)

        with ThreadPool(1) as pool:
            try:
                pool.map(work, [0])
            except KeyError as error:
                raise RuntimeError("while mapping") from error
    """)
    plain = run_python("chained.py", cwd=tmp_path)
    launched = launch(domain, "chained.py", cwd=tmp_path)
    assert launched.returncode == plain.returncode == 1
    assert launched.stderr == plain.stderr
    assert "composepar" not in launched.stderr


@pytest.mark.parametrize(
    "args, env, returncode, message",
    [
        (["--bogus", "x.py"], {}, 2, "composepar: error: unrecognized arguments: --bogus"),
        ([], {}, 2, "composepar: error: no program to run"),
        (["-v"], {}, 2, "composepar: error: no program to run"),
        (["-m"], {}, 2, "composepar: error: argument -m: expected a module name"),
        (["-c"], {}, 2, "composepar: error: argument -c: expected the code to run"),
        (["-n", "0", "x.py"], {}, 2, "composepar: error: argument -n/--threads: must be an integer between 1"),
        (["-n", "abc", "x.py"], {}, 2, "got 'abc' instead"),
        (["--threads"], {}, 2, "composepar: error: argument -n/--threads: expected one argument"),
        (["--domain", "a/b", "x.py"], {}, 2, "composepar: error: domain must be 1-64 characters"),
        (["x.py"], {"COMPOSEPAR_DOMAIN": "../x"}, 2, "COMPOSEPAR_DOMAIN must be 1-64 characters"),
        (["x.py"], {"COMPOSEPAR_CAPACITY": "many"}, 2, "composepar: error: COMPOSEPAR_CAPACITY must be an integer"),
        (["x.py"], {"COMPOSEPAR_STATIC": "yes"}, 2, "composepar: error: COMPOSEPAR_STATIC must be 0 or 1"),
        (["frobnicate"], {}, 2, "can't open file"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, env, returncode, message):
    result = run_python("-m", "composepar", *args, cwd=tmp_path, env=clean_env(**env))
    assert result.returncode == returncode
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("program", [["missing.py"], ["empty_dir"], ["-m", "no_such_module"],
                                     ["-m", "json.no_such_module"]])
def test_a_program_that_cannot_be_found_fails_as_in_plain_python(tmp_path, domain, program):
    (tmp_path / "empty_dir").mkdir()
    plain = run_python(*program, cwd=tmp_path)
    launched = launch(domain, *program, cwd=tmp_path)
    assert (launched.returncode, launched.stderr) == (plain.returncode, plain.stderr)
    assert launched.returncode in (1, 2) and len(launched.stderr.splitlines()) == 1
    assert "Traceback" not in launched.stderr


@pytest.mark.parametrize(
    "spelling",
    [["-n2", "-c"], ["-n", "2", "-c"], ["--threads=2", "-c"], ["-vn2", "-c"], ["-vn", "2", "-c"],
     ["--threads", "2", "--static", "-c"], ["-n", "2", "-vc"]],
)
def test_options_are_read_as_python_reads_its_own(domain, spelling):
    code = "import os, sys; print(os.environ['COMPOSEPAR_CAPACITY'], sys.argv)"
    result = launch(domain, *spelling, code, "-n", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2 ['-c', '-n', '3']\n"


def test_help_lists_the_options_and_subcommands():
    result = run_python("-m", "composepar", "--help")
    assert result.returncode == 0
    for word in ("--threads", "--domain", "--static", "--no-env", "--verbose", "status", "cleanup", "-m module"):
        assert word in result.stdout


# The environment: COMPOSEPAR_* for every descendant, thread counts before any library loads.

REPORT_ENV = """\
import json, multiprocessing, os, subprocess, sys

NAMES = {names!r}

def environment():
    return {{name: os.environ.get(name) for name in NAMES}}

def child(queue):
    queue.put(environment())

if __name__ == "__main__":
    grandchild = subprocess.run(
        [sys.executable, "-c", "import json, os; print(json.dumps({{n: os.environ.get(n) for n in %r}}))" % NAMES],
        capture_output=True, text=True, check=True)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    spawned = queue.get(timeout=60)
    process.join()
    print(json.dumps({{"script": environment(), "subprocess": json.loads(grandchild.stdout), "spawn": spawned}}))
"""

COMPOSEPAR_VARIABLES = ["COMPOSEPAR_DOMAIN", "COMPOSEPAR_CAPACITY", "COMPOSEPAR_LAUNCHED", "COMPOSEPAR_STATIC"]


def report_env(tmp_path, domain, *options, env=None):
    script = write(tmp_path, "report_env.py", REPORT_ENV.format(names=COMPOSEPAR_VARIABLES + THREAD_VARIABLES))
    result = launch(domain, *options, str(script), env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_composepar_variables_reach_every_descendant(tmp_path, domain):
    seen = report_env(tmp_path, domain, "-n", "3", "--static")
    expected = {"COMPOSEPAR_DOMAIN": domain, "COMPOSEPAR_CAPACITY": "3", "COMPOSEPAR_LAUNCHED": "1",
                "COMPOSEPAR_STATIC": "1"}
    for where in ("script", "subprocess", "spawn"):
        assert {name: seen[where][name] for name in expected} == expected, where


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a budget below the CPUs needs 2")


@needs_two_cpus
def test_thread_counts_are_set_only_below_the_cpus_and_idle_threads_sleep(tmp_path, domain):
    seen = report_env(tmp_path, domain, "-n", "1")
    for where in ("script", "subprocess", "spawn"):
        for name in _environment.THREAD_COUNT_VARIABLES:
            assert seen[where][name] == "1", (where, name)
        assert seen[where]["GOMP_SPINCOUNT"] == "10000"
        assert seen[where]["OPENBLAS_THREAD_TIMEOUT"] == "24"
        assert seen[where]["KMP_BLOCKTIME"] == "0"
        assert seen[where]["MKL_DYNAMIC"] == "FALSE"
        assert seen[where]["COMPOSEPAR_STATIC"] is None


def test_thread_counts_stay_unset_on_a_budget_of_every_cpu(tmp_path, domain):
    """Engines set them in their workers only where unset (Dask's nanny, loky, Ray): theirs must win."""
    cpus = len(os.sched_getaffinity(0))
    seen = report_env(tmp_path, domain, "-n", str(cpus))
    for where in ("script", "subprocess", "spawn"):
        for name in _environment.THREAD_COUNT_VARIABLES:
            assert seen[where][name] is None, (where, name)
        assert seen[where]["KMP_BLOCKTIME"] == "0"


@needs_two_cpus
def test_a_variable_the_user_set_is_kept(tmp_path, domain):
    seen = report_env(tmp_path, domain, "-n", "1", env=clean_env(OMP_NUM_THREADS="3", KMP_BLOCKTIME="200"))
    assert seen["spawn"]["OMP_NUM_THREADS"] == "3"
    assert seen["spawn"]["KMP_BLOCKTIME"] == "200"
    assert seen["spawn"]["OPENBLAS_NUM_THREADS"] == "1"


@pytest.mark.parametrize("how", ["option", "variable"])
def test_no_env_sets_no_thread_variable(tmp_path, domain, how):
    options, env = (["--no-env"], clean_env()) if how == "option" else ([], clean_env(COMPOSEPAR_NO_ENV="1"))
    seen = report_env(tmp_path, domain, *options, env=env)
    assert all(seen["script"][name] is None for name in THREAD_VARIABLES)
    assert seen["script"]["COMPOSEPAR_LAUNCHED"] == "1"


def test_the_environment_is_set_before_numpy_loads(tmp_path, domain):
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    script = write(tmp_path, "blas.py", """\
        import sys
        assert "numpy" not in sys.modules
        import numpy, threadpoolctl
        print(sorted({info["num_threads"] for info in threadpoolctl.threadpool_info()}))
    """)
    result = launch(domain, "-n", "2", str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("[]", "[2]")  # [] where numpy has no threaded BLAS


def test_capacity_option_overrides_the_variable(tmp_path, domain):
    seen = report_env(tmp_path, domain, "-n", "2", env=clean_env(COMPOSEPAR_CAPACITY="3"))
    assert seen["script"]["COMPOSEPAR_CAPACITY"] == seen["spawn"]["COMPOSEPAR_CAPACITY"] == "2"


def test_capacity_comes_from_the_variable(tmp_path, domain):
    seen = report_env(tmp_path, domain, env=clean_env(COMPOSEPAR_CAPACITY="3"))
    assert seen["spawn"]["COMPOSEPAR_CAPACITY"] == "3"


def test_a_budget_in_use_keeps_its_capacity(tmp_path, domain):
    arbiter = Arbiter(domain, capacity=5)
    arbiter.acquire(1)  # in use by this process (tests/test_budget_rules.py has the whole rule)
    try:
        seen = report_env(tmp_path, domain)  # no -n: the segment's capacity is exported, not the CPU count
        assert seen["spawn"]["COMPOSEPAR_CAPACITY"] == "5"
        result = launch(domain, "-n", "3", "-c", "import os; print(os.environ['COMPOSEPAR_CAPACITY'])")
        assert (result.returncode, result.stdout) == (0, "5\n")
        assert "with its capacity 5" in result.stderr and "not the 3 asked for with -n/--threads" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    finally:
        arbiter.release(1)


def test_domain_comes_from_the_variable(tmp_path, domain):
    script = write(tmp_path, "domain.py", "import os; print(os.environ['COMPOSEPAR_DOMAIN'])")
    result = run_python("-m", "composepar", str(script), env=clean_env(COMPOSEPAR_DOMAIN=domain))
    assert result.stdout == f"{domain}\n"


@needs_two_cpus
def test_verbose_reports_the_budget_and_the_variables(tmp_path, domain):
    result = launch(domain, "-v", "-n", "1", "-c", "print('program')", env=clean_env(MKL_NUM_THREADS="3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "program\n"
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"composepar: domain {domain!r}") and "capacity 1" in lines[0]
    assert "OMP_NUM_THREADS=1" in lines[1] and "kept the user's MKL_NUM_THREADS=3" in lines[1]
    assert lines[2].startswith("composepar: the budget has capacity 1 and this process may use")  # -n below the CPUs
    assert lines[3].startswith("composepar: native pools at exit:")
    quiet = launch(domain, "-c", "print('program')", env=clean_env(COMPOSEPAR_VERBOSE="1"))
    assert quiet.stderr.startswith("composepar: domain")


# The .pth bootstrap: hooks in Python descendants, nothing in other Python processes.

HOOKS_IN_CHILDREN = """\
import multiprocessing, subprocess, sys

def state():
    # The program never imports composepar: only the .pth bootstrap can have.
    hooks = sys.modules.get("composepar._hooks")
    return hooks is not None and hooks.installed()

def child(queue):
    queue.put(state())

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    in_child = queue.get(timeout=60)
    process.join()
    check = "import sys; h = sys.modules.get('composepar._hooks'); print(h is not None and h.installed())"
    grandchild = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    grandchild = grandchild.stdout.strip()
    print(in_child, grandchild)
"""


@pytest.mark.parametrize("start_method", START_METHODS)
def test_python_children_of_the_program_install_the_hooks(tmp_path, domain, start_method):
    script = write(tmp_path, "children.py", HOOKS_IN_CHILDREN)
    result = launch(domain, str(script), start_method)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True True\n"


def test_plain_python_does_not_import_composepar():
    result = run_python("-c", "import sys; print(sorted(m for m in sys.modules if m.startswith('composepar')))")
    assert result.stdout == "[]\n"


def test_the_bootstrap_installs_the_hooks_in_a_launched_process(domain):
    code = "import sys; print(sys.modules['composepar._hooks'].installed())"
    result = run_python("-c", code, env=clean_env(COMPOSEPAR_LAUNCHED="1", COMPOSEPAR_DOMAIN=domain))
    assert result.stdout == "True\n", result.stderr


def test_the_bootstrap_is_installed_in_site_packages():
    directories = site.getsitepackages() + [site.getusersitepackages()]
    found = [d for d in directories if os.path.exists(os.path.join(d, "composepar-launcher.pth"))]
    assert found, f"composepar-launcher.pth is in none of {directories}: reinstall with `pip install -e .`"
    with open(os.path.join(found[0], "composepar-launcher.pth")) as pth:
        line = pth.read()
    assert line.startswith("import os;") and line.count("\n") == 1
