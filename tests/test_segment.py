"""The segment file: permissions, other users, and files that are not ours to use."""

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

import composepar
from composepar import Arbiter, ArbiterError, _config
from composepar._native import _arbiter as native

SIZE = native.SEGMENT_BYTES


def _valid_segment_bytes(tmp_domain):
    """The bytes of a freshly made segment (made in another process)."""
    subprocess.run([sys.executable, "-c", f"import composepar; composepar.Arbiter({tmp_domain!r}, capacity=2)"],
                   check=True)
    path = _config.segment_path(tmp_domain)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    os.unlink(path)
    return data


def _write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def test_segment_is_private_to_its_user(domain):
    arbiter = Arbiter(domain)
    st = os.stat(arbiter.path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert arbiter.path == f"/dev/shm/composepar-{os.geteuid()}-{domain}"
    assert st.st_size == SIZE


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda data: bytes(SIZE), "not a composepar segment (bad magic)"),
        (lambda data: os.urandom(SIZE), "not a composepar segment"),
        (lambda data: bytes(data[:100]), f"is 100 bytes, not the {SIZE}"),
        (lambda data: b"", f"is 0 bytes, not the {SIZE}"),
        (lambda data: bytes(data) + b"\0" * 4096, f"is {SIZE + 4096} bytes"),
        (lambda data: data[:8] + (99).to_bytes(4, "little") + data[12:], "has layout version 99 but this composepar uses"),
        (lambda data: data[:24] + (0).to_bytes(4, "little") + data[28:], "has a corrupt header"),
        (lambda data: data[:28] + (7).to_bytes(4, "little") + data[32:], "has a corrupt header"),
    ],
    ids=["zeros", "random", "truncated", "empty", "too-long", "foreign-abi", "capacity-0", "slot-count"],
)
def test_a_foreign_or_corrupt_segment_is_refused_with_the_fix(domain, make, message):
    data = _valid_segment_bytes(domain + "-src")
    path = _config.segment_path(domain)
    _write(path, make(data))
    with pytest.raises(ArbiterError, match=re.escape(message)) as info:
        Arbiter(domain)
    assert path in str(info.value)
    assert f"`python -m composepar cleanup --force --domain {domain}` (or `rm {path}`)" in str(info.value)
    # The CLI says the same in one line and the fix works.
    status = subprocess.run([sys.executable, "-m", "composepar", "status", "--domain", domain],
                            capture_output=True, text=True)
    assert status.returncode == 1 and "Traceback" not in status.stderr and message.split(" (")[0] in status.stderr
    refused = subprocess.run([sys.executable, "-m", "composepar", "cleanup", "--domain", domain],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and os.path.exists(path)
    forced = subprocess.run([sys.executable, "-m", "composepar", "cleanup", "--force", "--domain", domain],
                            capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert Arbiter(domain).stats().tokens_free == composepar.usable_cpus()


def test_a_valid_copy_of_a_segment_is_accepted(domain):
    data = _valid_segment_bytes(domain + "-src")
    _write(_config.segment_path(domain), data)
    assert Arbiter(domain).capacity == 2  # proves the refusals above are about the damage


def test_a_readable_by_others_segment_is_refused(domain):
    _write(_config.segment_path(domain), _valid_segment_bytes(domain + "-src"), mode=0o644)
    with pytest.raises(ArbiterError, match="has mode 0644; it must be 0600"):
        Arbiter(domain)


def test_a_symlink_is_not_followed(domain, tmp_path):
    target = tmp_path / "segment"
    target.write_bytes(_valid_segment_bytes(domain + "-src"))
    os.chmod(target, 0o600)
    os.symlink(target, _config.segment_path(domain))
    with pytest.raises(ArbiterError, match="is a symbolic link"):
        Arbiter(domain)


def test_a_directory_is_refused(domain):
    path = _config.segment_path(domain)
    os.mkdir(path)
    try:
        with pytest.raises(ArbiterError, match="is a directory"):
            Arbiter(domain)
    finally:
        shutil.rmtree(path)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@needs_root
def test_a_segment_owned_by_another_user_is_refused(domain):
    path = _config.segment_path(domain)
    _write(path, _valid_segment_bytes(domain + "-src"))
    os.chown(path, 12345, 12345)
    with pytest.raises(ArbiterError, match="belongs to uid 12345, not to you"):
        Arbiter(domain)


@needs_root
def test_another_user_can_neither_attach_to_nor_change_our_budget(domain):
    ours = Arbiter(domain, capacity=2)
    ours.acquire(1)
    nobody = 65534
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            os.setgid(nobody)
            os.setuid(nobody)
            report = []
            try:
                open(ours.path, "r+b")
                report.append("opened")
            except PermissionError:
                report.append("denied")
            theirs = Arbiter(domain, capacity=2)  # same domain name, their own segment
            report.append(theirs.path)
            report.append(str(theirs.acquire(2)))
            os.write(write_fd, "|".join(report).encode())
            theirs.release(2)
            os.unlink(theirs.path)
        finally:
            os._exit(0)
    os.close(write_fd)
    report = os.read(read_fd, 4096).decode().split("|")
    os.waitpid(pid, 0)
    assert report == ["denied", f"/dev/shm/composepar-{nobody}-{domain}", "2"]
    assert ours.stats().tokens_free == 1  # untouched by the other user
    ours.release(1)
