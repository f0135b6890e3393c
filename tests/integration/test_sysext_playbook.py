"""fleetsplit.k0s.deploy_sysext's controller-side checks, run for real with ansible-playbook against a local
host: they stop the play before any host module runs. The images are real squashfs files made with mksquashfs
(squashfs-tools, installed by scripts/prepare-test-hosts). Merging, upgrade and rollback need a systemd host:
the molecule scenario `sysext` (docs/sysext-hosts.md)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from testlib import ansible_env, run_playbook

PLAYBOOK = "fleetsplit.k0s.deploy_sysext"
pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools not installed")


def squashfs(tmp_path, name, units, arch="x86-64"):
    tree = tmp_path / ("tree-" + name)
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d" / ("extension-release." + name)).write_text(
        "ID=_any\nARCHITECTURE=%s\n" % arch)
    (tree / "usr/lib/systemd/system").mkdir(parents=True)
    for u in units:
        (tree / "usr/lib/systemd/system" / (u + ".service")).write_text("[Service]\nExecStart=/usr/bin/k0s\n")
    out = tmp_path / name / (name + ".raw")
    out.parent.mkdir()
    subprocess.run(["mksquashfs", str(tree), str(out), "-noappend", "-all-root", "-quiet"], check=True)
    return str(out)


@pytest.fixture
def inv(tmp_path):
    state = tmp_path / "host"
    inv = {"all": {"children": {"k0s_workers": {"hosts": {"w1": None}}},
                   "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                            # Never this machine's paths, should a check fail to stop the play.
                            "k0s_sysext_store_dir": str(state / "store"),
                            "k0s_sysext_extensions_dir": str(state / "extensions"),
                            "k0s_store_dir": str(state / "release-store"), "k0s_bin_dir": str(state / "bin")}}}
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inv))
    return str(path), state


def play(inv, *args):
    return run_playbook(["-i", inv, PLAYBOOK] + list(args), env=ansible_env())


def test_refuses_without_an_image(inv):
    proc, out = play(inv[0])
    assert proc.returncode != 0 and "k0s_sysext_image is not set" in out, out
    assert not os.path.exists(str(inv[1]))


def test_refuses_a_file_that_is_not_a_sysext(inv, tmp_path):
    junk = tmp_path / "k0s.raw"
    junk.write_bytes(b"not an image" * 100)
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % junk)
    assert proc.returncode != 0 and "no readable usr/lib/extension-release.d/extension-release.k0s" in out, out
    assert "Query the host" not in out


def test_refuses_an_image_of_another_name(inv, tmp_path):
    img = squashfs(tmp_path, "k0s", ["k0sworker"])
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % img, "-e", "k0s_sysext_name=other")
    assert proc.returncode != 0 and "extension-release.other" in out, out


def test_refuses_an_image_without_the_unit_of_the_role(inv, tmp_path):
    img = squashfs(tmp_path, "k0s", ["k0scontroller"])
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % img)
    assert proc.returncode != 0, out
    assert "needs k0sworker.service" in out and "carries k0scontroller" in out, out
    assert "Query the host" not in out and not os.path.exists(str(inv[1]))


def test_refuses_a_bad_role_and_state(inv, tmp_path):
    img = squashfs(tmp_path, "k0s", ["k0sworker"])
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % img, "-e", "k0s_role=master")
    assert proc.returncode != 0 and "k0s_role must be one of" in out, out
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % img, "-e", "k0s_sysext_state=absent")
    assert proc.returncode != 0 and "k0s_sysext_state must be one of" in out, out


def test_refuses_a_name_that_is_no_extension_name(inv, tmp_path):
    img = squashfs(tmp_path, "k0s", ["k0sworker"])
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % img, "-e", "k0s_sysext_name=../k0s")
    assert proc.returncode != 0 and "k0s_sysext_name ../k0s is not a plain extension name" in out, out
    assert "Hash the image" not in out


# Mixed fleets (issue 22): k0s_sysext_image with {arch}, each host's key from its platform facts. This machine is the
# host w1 (x86_64 -> amd64); the arm64 image beside it must never be the one it takes.
def arch_images(tmp_path, amd64=("k0sworker",), amd64_arch="x86-64", with_amd64=True):
    images = tmp_path / "images"
    images.mkdir()
    for key, units, arch in ([("amd64", amd64, amd64_arch)] if with_amd64 else []) + [("arm64", ["k0sworker"], "arm64")]:
        work = tmp_path / ("build-" + key)
        work.mkdir()
        shutil.move(squashfs(work, "k0s", units, arch), str(images / ("k0s-%s.raw" % key)))
    return str(images / "k0s-{arch}.raw")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="w1 is this machine, expected amd64")
def test_each_host_takes_the_image_of_its_architecture(inv, tmp_path):
    # The amd64 image lacks the worker unit: the refusal names that image, so it is the one w1 took.
    pattern = arch_images(tmp_path, amd64=["k0scontroller"])
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % pattern)
    assert proc.returncode != 0, out
    assert "needs k0sworker.service but %s carries k0scontroller" % pattern.replace("{arch}", "amd64") in out, out
    assert "k0s-arm64.raw carries" not in out and not os.path.exists(str(inv[1]))


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="w1 is this machine, expected amd64")
def test_a_host_without_an_image_of_its_architecture_stops_the_run(inv, tmp_path):
    pattern = arch_images(tmp_path, with_amd64=False)
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % pattern)
    assert proc.returncode != 0, out
    assert "has no image for w1 (x86_64 -> amd64: %s is not a file on the controller)" % \
        pattern.replace("{arch}", "amd64") in out, out
    assert "Query the host" not in out and not os.path.exists(str(inv[1]))


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="w1 is this machine, expected amd64")
def test_an_image_of_another_architecture_under_the_key_is_refused(inv, tmp_path):
    pattern = arch_images(tmp_path, amd64_arch="arm64")
    proc, out = play(inv[0], "-e", "k0s_sysext_image=%s" % pattern)
    assert proc.returncode != 0, out
    assert "w1 (x86_64 -> amd64) would take %s, built for ARCHITECTURE=arm64" % pattern.replace("{arch}", "amd64") in out, out
    assert "Query the host" not in out and not os.path.exists(str(inv[1]))
