"""Usable CPUs: affinity mask capped by the cgroup quota (v1 and v2), read from real file trees."""

import os
import subprocess
import sys

import pytest

from composepar import usable_cpus
from composepar._cpus import cgroup_cpu_limit


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
