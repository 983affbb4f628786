"""Usable CPUs: affinity mask capped by the cgroup quota (v1 and v2), read from real file trees; the CPU set
named, followed when it changes, and keying the default domain (real taskset in subprocesses)."""

import os
import shutil
import subprocess
import sys

import pytest

from composepar import _config, usable_cpus
from composepar._config import cpu_set_domain
from composepar._cpus import cgroup_cpu_limit, format_cpu_list, online_cpus, parse_cpu_list


def make_tree(tmp_path, cgroup_lines, files):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    root.mkdir(exist_ok=True)
    return str(proc), str(root)


@pytest.mark.parametrize(
    "cgroup_lines, files, expected",
    [
        (["0::/"], {"cpu.max": "max 100000\n"}, None),
        (["0::/job"], {"job/cpu.max": "150000 100000\n"}, 1.5),
        (["0::/a/b"], {"a/cpu.max": "100000 100000\n", "a/b/cpu.max": "300000 100000\n"}, 1.0),  # tightest wins
        (["0::/a"], {"a/cpu.max": "max\n"}, None),
        (["4:cpu,cpuacct:/docker/x"], {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n",
                                        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}, 0.5),
        (["4:cpu,cpuacct:/x"], {"cpu,cpuacct/x/cpu.cfs_quota_us": "-1\n",
                                 "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n"}, None),
        (["0::/x"], {"x/cpu.max": "garbage\n"}, None),
        ([], {}, None),
    ],
    ids=["v2-max", "v2-quota", "v2-nested", "v2-max-only", "v1-quota", "v1-unlimited", "v2-garbage", "none"],
)
def test_cgroup_limit(tmp_path, cgroup_lines, files, expected):
    proc, root = make_tree(tmp_path, cgroup_lines, files)
    assert cgroup_cpu_limit(proc, root) == expected


def test_quota_caps_the_affinity_and_rounds_up(tmp_path):
    proc, root = make_tree(tmp_path, ["0::/job"], {"job/cpu.max": "120000 100000\n"})
    assert usable_cpus(proc, root) == min(2, len(os.sched_getaffinity(0)))
    proc, root = make_tree(tmp_path / "small", ["0::/job"], {"job/cpu.max": "10000 100000\n"})
    assert usable_cpus(proc, root) == 1  # never 0


def test_affinity_mask_is_honoured():
    result = subprocess.run(
        [sys.executable, "-c", "import os, composepar; os.sched_setaffinity(0, {0}); print(composepar.usable_cpus())"],
        capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "1"


def test_usable_cpus_on_this_machine():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


# The CPU set: named in the kernel's list format, followed when it changes, and the key of the default domain.

@pytest.mark.parametrize("cpus, text", [((0,), "0"), ((0, 1, 2, 3, 8), "0-3,8"), ((1, 3, 5), "1,3,5"),
                                        ((4, 5, 6, 7, 9, 10), "4-7,9-10"), ((), "")])
def test_cpu_lists_in_the_kernels_format(cpus, text):
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text + "\n") == cpus


def test_online_cpus_read_from_sysfs(tmp_path):
    online = tmp_path / "online"
    online.write_text("0-3,8\n")
    assert online_cpus(str(online)) == (0, 1, 2, 3, 8)
    assert set(os.sched_getaffinity(0)) <= set(online_cpus())


@pytest.mark.parametrize(
    "cpus, online, domain",
    [((0, 1), (0, 1), "default"), ((0,), (0, 1), "cpus-0"), ((0, 1, 2, 3, 8), tuple(range(16)), "cpus-0-3.8"),
     ((1, 3), (0, 1, 2, 3), "cpus-1.3")],
)
def test_the_default_domain_is_keyed_by_cpu_set(cpus, online, domain):
    assert cpu_set_domain(cpus, online) == domain


def test_a_long_cpu_list_gives_a_valid_domain():
    every_other = tuple(range(0, 256, 2))
    domain = cpu_set_domain(every_other, range(256))
    assert domain.startswith("cpus-128-") and len(domain) <= 64
    assert _config.check_domain(domain) == domain
    assert cpu_set_domain(every_other[1:], range(256)) != domain


def in_subprocess(code, pin=None):
    """Runs `code` in a fresh python (pinned to the CPUs `pin` first, with taskset); its stdout."""
    env = {name: value for name, value in os.environ.items() if name != "COMPOSEPAR_DOMAIN"}
    command = [sys.executable, "-c", code] if pin is None else ["taskset", "-c", pin, sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
                                    reason="needs 2 CPUs and taskset")


@needs_two_cpus
def test_jobs_on_different_cpu_sets_get_different_default_domains():
    code = "from composepar import _config; print(_config.resolve_domain())"
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert in_subprocess(code, pin=str(first)) == f"cpus-{first}\n"
    assert in_subprocess(code, pin=str(second)) == f"cpus-{second}\n"
    if set(online_cpus()) <= os.sched_getaffinity(0):  # this process may use every CPU
        assert in_subprocess(code) == "default\n"
    # An explicit domain is shared whatever the CPUs.
    assert in_subprocess("import os; os.environ['COMPOSEPAR_DOMAIN'] = 'x'; " + code, pin=str(first)) == "x\n"


@needs_two_cpus
def test_process_cpus_follows_a_changed_affinity():
    code = """if True:
        import os, time
        from composepar._cpus import process_cpus, affinity_cpus
        before = process_cpus()
        first = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {first})
        deadline = time.monotonic() + 30
        while process_cpus() != 1 and time.monotonic() < deadline:  # within MAX_AGE (1 s)
            pass
        print(before, process_cpus(), process_cpus(max_age=0), affinity_cpus() == (first,))
    """
    before, after, fresh, named = in_subprocess(code).split()
    assert int(before) >= 2 and (after, fresh, named) == ("1", "1", "True")
