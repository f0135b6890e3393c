"""process_exe: what a running process executes, natively and under qemu-user emulation through binfmt_misc.

Live processes: this Python itself, and the arm64 test k0s (fixture k0s-small-zip-arm64, started as a controller on
free ports) run through the machine's qemu-aarch64 binfmt entry, as on the mixed-arch scenario's arm64 host, where
/proc/<pid>/exe names qemu and k0s_service used to restart k0s on every run (issue 22)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils.process_exe import process_executable

BINFMT = "/proc/sys/fs/binfmt_misc/qemu-aarch64"


def test_native_process_is_its_exe():
    assert process_executable(os.getpid()) == os.path.realpath(sys.executable)


def test_gone_process_is_none():
    p = subprocess.Popen(["true"])
    p.wait()
    assert process_executable(p.pid) is None


def _binfmt_arm64():
    try:
        with open(BINFMT) as f:
            return f.readline().strip() == "enabled"
    except OSError:
        return False


@pytest.fixture
def emulated_k0s(fixtures, tmp_path):
    """The arm64 test k0s started through a link (like /usr/bin/k0s -> the current release), yielding
    (process, the release's file, the link)."""
    if not _binfmt_arm64():
        pytest.skip("%s is not enabled (scripts/prepare-test-hosts enables it): no arm64 process to look at" % BINFMT)
    if "k0s-small-zip-arm64" not in fixtures:
        pytest.skip("fixture k0s-small-zip-arm64 not built (tests/fixtures/build_fixtures.py --set arch)")
    release = tmp_path / "releases" / "r1" / "k0s"
    release.parent.mkdir(parents=True)
    shutil.copy(fixtures["k0s-small-zip-arm64"]["path"], str(release))
    link = tmp_path / "k0s"
    link.symlink_to(release)
    env = dict(os.environ, FAKE_K0S_API_PORT="0", FAKE_K0S_JOIN_PORT="0")
    proc = subprocess.Popen([str(link), "controller", "--data-dir", str(tmp_path / "data")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while str(release) not in open("/proc/%d/maps" % proc.pid).read():   # qemu maps the program first
            assert proc.poll() is None and time.monotonic() < deadline, "the emulated k0s did not start"
            time.sleep(0.2)
        yield proc, release, link
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_emulated_process_is_the_program_not_qemu(emulated_k0s):
    proc, release, link = emulated_k0s
    assert os.path.basename(os.readlink("/proc/%d/exe" % proc.pid)).startswith("qemu-")   # what the kernel says
    assert process_executable(proc.pid) == str(release)


def test_emulated_process_keeps_the_file_it_started_from(emulated_k0s, tmp_path):
    """A switched link does not change what runs; a replaced file reads "(deleted)", as /proc/<pid>/exe would."""
    proc, release, link = emulated_k0s
    other = tmp_path / "releases" / "r2" / "k0s"
    other.parent.mkdir(parents=True)
    shutil.copy(str(release), str(other))
    os.unlink(str(link))
    link.symlink_to(other)
    assert process_executable(proc.pid) == str(release)
    os.unlink(str(release))
    assert process_executable(proc.pid) == str(release) + " (deleted)"
