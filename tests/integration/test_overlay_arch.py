"""Overlay mode with several architectures (issue 22, deploy_k0s.yml play 1): k0s_executables gives one k0s per
architecture key, and each gets its own output (k0s_overlay_root / k0s_overlay_output with {arch}). Real
ansible-playbook runs on the real amd64 and arm64 fixtures (tests/fixtures/build_fixtures.py --set arch): every file
in each output is checked for the ELF machine of its key, the arm64 tree's test k0s stages its binaries under
qemu-user (binfmt, when enabled), sysext images carry the ARCHITECTURE= of their executable and share one update
channel. Refusals come before the first write of any output.
"""
import json
import os
import shutil
import struct
import subprocess

import pytest

from imagelib import extract_tar
from testlib import FIXTURES, REPO, ansible_env, recap, run_playbook, sha256, stage_in_chroot, tree_snapshot

from ansible_collections.fleetsplit.k0s.plugins.module_utils import image_sysupdate as su

PLAYBOOK = str(REPO / "playbooks/deploy_k0s.yml")
PAIR = {"amd64": "k0s-small-zip", "arm64": "k0s-small-zip-arm64"}
# e_machine (ELF header offset 18, little-endian on all three) -> payload_split's elf_machine spelling.
E_MACHINE = {62: "x86_64", 183: "aarch64", 40: "arm"}
EMULATED = {"amd64": os.uname().machine == "x86_64",
            "arm64": os.path.exists("/proc/sys/fs/binfmt_misc/qemu-aarch64")
            and open("/proc/sys/fs/binfmt_misc/qemu-aarch64").readline().strip() == "enabled"}


def play(tmp_path, evars, *extra):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    return run_playbook([PLAYBOOK, "-e", json.dumps(evars)] + list(extra), cwd=tmp_path,
                        env=ansible_env(TMPDIR=str(tmp), SOURCE_DATE_EPOCH="1700000000"))


def executables(fixture_index):
    missing = [f for f in PAIR.values() if f not in fixture_index]
    if missing:
        pytest.fail("fixtures %s missing: run tests/fixtures/build_fixtures.py --set arch" % missing)
    return {key: str(FIXTURES / f) for key, f in PAIR.items()}


def machine(path):
    with open(str(path), "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", path
    return E_MACHINE.get(struct.unpack("<H", head[18:20])[0])


def assert_tree_of(tree, key, fixture_index):
    """usr/bin/k0s and every usr/libexec/k0s/<name> are the key's fixture's, ELF for its machine."""
    fixture = fixture_index[PAIR[key]]
    binaries = fixture["binaries"]
    libexec = tree / "usr/libexec/k0s"
    assert sorted(os.listdir(str(libexec))) == sorted(binaries)
    for name, info in binaries.items():
        assert sha256(libexec / name) == info["sha256"], (key, name)
        assert machine(libexec / name) == fixture["elf_machine"], (key, name)
    assert machine(tree / "usr/bin/k0s") == fixture["elf_machine"]
    if EMULATED[key]:
        stage_in_chroot(tree, "zip", binaries)


def test_dir_overlays_one_per_architecture(tmp_path, fixture_index):
    """No k0s_overlay_root: out/overlay-amd64 and out/overlay-arm64; a re-run changes nothing."""
    evars = dict(k0s_executables=executables(fixture_index), k0s_controller_cache_dir=str(tmp_path / "cache"))
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0, out
    assert sorted(os.listdir(str(tmp_path / "out"))) == ["overlay-amd64", "overlay-arm64"]
    before = tree_snapshot(tmp_path / "out")
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out
    assert tree_snapshot(tmp_path / "out") == before
    for key in PAIR:
        assert_tree_of(tmp_path / "out" / ("overlay-" + key), key, fixture_index)


def test_tar_images_one_per_architecture(tmp_path, fixture_index):
    (tmp_path / "images").mkdir()
    evars = dict(k0s_executables=executables(fixture_index), k0s_controller_cache_dir=str(tmp_path / "cache"),
                 k0s_overlay_format="tar", k0s_overlay_output=str(tmp_path / "images/k0s-{arch}.tar"))
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0, out
    assert sorted(os.listdir(str(tmp_path / "images"))) == ["k0s-amd64.tar", "k0s-arm64.tar"]
    for key in PAIR:
        tree = tmp_path / ("tree-" + key)
        extract_tar(tmp_path / "images" / ("k0s-%s.tar" % key), tree)
        assert_tree_of(tree, key, fixture_index)


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools not installed")
@pytest.mark.newest_core_only   # the per-architecture playbook path is test_dir_overlays_one_per_architecture's
def test_sysext_images_carry_their_architecture_and_share_one_channel(tmp_path, fixture_index):
    """Default names (out/k0s-<version>-<arch>.raw) already differ; both land in one sysupdate channel whose
    SHA256SUMS lists both, and each architecture's client picks its own (test_sysext_channel.Client's rules)."""
    from test_sysext_channel import Client   # the sysupdate client of the channel tests

    channel = tmp_path / "channel"
    channel.mkdir()
    evars = dict(k0s_executables=executables(fixture_index), k0s_controller_cache_dir=str(tmp_path / "cache"),
                 k0s_overlay_format="sysext", k0s_sysext_channel_dir=str(channel),
                 k0s_sysext_channel_url="https://example.com/k0s/")
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0, out
    names = {"amd64": "k0s-v1.36.3+k0s.0-x86-64.raw", "arm64": "k0s-v1.36.3+k0s.0-arm64.raw"}
    assert sorted(os.listdir(str(tmp_path / "out"))) == sorted(names.values())
    for key, name in names.items():
        release = subprocess.run(["unsquashfs", "-cat", str(tmp_path / "out" / name),
                                  "usr/lib/extension-release.d/extension-release.k0s"],
                                 capture_output=True, text=True, check=True).stdout
        assert "ARCHITECTURE=%s\n" % {"amd64": "x86-64", "arm64": "arm64"}[key] in release, (key, release)
        tree = tmp_path / ("tree-" + key)
        subprocess.run(["unsquashfs", "-q", "-d", str(tree), str(tmp_path / "out" / name)], check=True,
                       capture_output=True)
        libexec = tree / "usr/libexec/k0s"
        binaries = fixture_index[PAIR[key]]["binaries"]
        assert {n: (sha256(libexec / n), machine(libexec / n)) for n in binaries} == \
            {n: (info["sha256"], fixture_index[PAIR[key]]["elf_machine"]) for n, info in binaries.items()}
        assert machine(tree / "usr/bin/k0s") == fixture_index[PAIR[key]]["elf_machine"]
    assert sorted(os.listdir(str(channel))) == sorted(["SHA256SUMS", "k0s.conf"] + list(names.values()))
    sums = (channel / "SHA256SUMS").read_text()
    assert sums == "".join("%s  %s\n" % (sha256(channel / n), n) for n in sorted(names.values()))
    conf = (channel / "k0s.conf").read_text()
    for arch in ("x86-64", "arm64"):
        # What sysupdate picks from that SHA256SUMS with the transfer file's pattern on a host of each architecture.
        client = Client(conf, tmp_path / ("host-" + arch), architecture=arch)
        assert su.newest(sums, "k0s", client.arch)[1] == "k0s-v1.36.3+k0s.0-%s.raw" % arch
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out


REFUSED = {
    # name: (extra variables, what the refusal says)
    "root without {arch}": (dict(k0s_overlay_root="{tmp}/overlay"),
                            'k0s_overlay_root "{tmp}/overlay" names one directory but k0s_executables has 2 '
                            "architectures (amd64, arm64): put {arch} in it"),
    "output without {arch}": (dict(k0s_overlay_format="tar", k0s_overlay_output="{tmp}/images/k0s.tar"),
                              'k0s_overlay_output "{tmp}/images/k0s.tar" names one file but k0s_executables has 2'),
    "one sysext architecture": (dict(k0s_overlay_format="sysext", k0s_sysext_architecture="x86-64"),
                                'k0s_sysext_architecture "x86-64" is one architecture but k0s_executables has 2'),
    "one directory missing": (dict(k0s_overlay_format="cpio", k0s_overlay_output="{tmp}/images/{arch}/k0s.cpio"),
                              'k0s_overlay_output "{tmp}/images/arm64/k0s.cpio": its directory {tmp}/images/arm64 '
                              "does not exist; create it first"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_the_split_and_any_write(tmp_path, fixture_index, case):
    extra, message = REFUSED[case]
    (tmp_path / "images/amd64").mkdir(parents=True)
    evars = dict(k0s_executables=executables(fixture_index), k0s_controller_cache_dir=str(tmp_path / "cache"))
    evars.update({k: v.replace("{tmp}", str(tmp_path)) for k, v in extra.items()})
    before = tree_snapshot(tmp_path)
    proc, out = play(tmp_path, evars)
    assert proc.returncode != 0, out
    # ansible-core 2.16 prints the message JSON-escaped (quotes)
    assert message.replace("{tmp}", str(tmp_path)) in out.replace('\\"', '"'), out
    assert not (tmp_path / "cache").exists(), "the split did not run"
    after = {p: v for p, v in tree_snapshot(tmp_path).items() if not p.startswith(str(tmp_path / "tmpdir"))}
    assert after == before


def test_a_root_that_leads_out_stops_every_architecture(tmp_path, fixture_index):
    """overlay-arm64/etc is a symlink out of its root: the confinement check of arm64 fails, and the amd64 root,
    checked and fine, is not written either (all roots are checked before the first write)."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "overlay-amd64").mkdir()
    (tmp_path / "overlay-arm64").mkdir()
    os.symlink(str(tmp_path / "outside"), str(tmp_path / "overlay-arm64/etc"))
    before = tree_snapshot(tmp_path)
    evars = dict(k0s_executables=executables(fixture_index), k0s_controller_cache_dir=str(tmp_path / "cache"),
                 k0s_overlay_root=str(tmp_path / "overlay-{arch}"))
    proc, out = play(tmp_path, evars)
    assert proc.returncode != 0, out
    assert "/etc -> %s is an absolute symlink" % (tmp_path / "outside") in out, out
    assert "Write k0s and its embedded binaries into the overlay" not in out, out
    after = {p: v for p, v in tree_snapshot(tmp_path).items() if not p.startswith((str(tmp_path / "cache"),
                                                                                   str(tmp_path / "tmpdir")))}
    assert after == before


def test_single_executable_fills_in_its_own_architecture(tmp_path, fixture_index):
    """One k0s_executable and {arch}: its split names the key (amd64, arm64) after the split, still before any write;
    a directory that does not exist for that key is refused then, and nothing is written."""
    (tmp_path / "images").mkdir()
    base = dict(k0s_executable=str(FIXTURES / PAIR["arm64"]), k0s_controller_cache_dir=str(tmp_path / "cache"),
                k0s_overlay_format="tar")
    proc, out = play(tmp_path, dict(base, k0s_overlay_output=str(tmp_path / "nope-{arch}/k0s.tar")))
    assert proc.returncode != 0, out
    assert "its directory %s/nope-arm64 does not exist; create it first" % tmp_path in out.replace('\\"', '"'), out
    assert os.listdir(str(tmp_path / "images")) == []
    proc, out = play(tmp_path, dict(base, k0s_overlay_output=str(tmp_path / "images/k0s-{arch}.tar")))
    assert proc.returncode == 0, out
    assert os.listdir(str(tmp_path / "images")) == ["k0s-arm64.tar"]
