"""deploy_k0s with k0s_overlay_format tar and cpio, real ansible-playbook runs on both small fixtures.

Each image is extracted with GNU tar / GNU cpio and compared entry by entry with the directory overlay the same
play writes (paths, kinds, modes, sha256, link targets), with owners 0/0 and the mtimes the issue asks for: the
legacy release files carry the executable's mtime, everything else SOURCE_DATE_EPOCH. The stripped k0s in the
extracted tree then stages itself in a chroot (as tests/integration/test_service_units.py does with the
directory overlay). Re-runs change nothing, check mode writes nothing, bad settings stop before the split.
"""
import json
import os
import re
import shutil
import stat
import subprocess

import pytest

from imagelib import extract_cpio, extract_tar, listing, newc_headers, strip_cpio_times
from testlib import FIXTURES, REPO, ansible_env, recap, run_playbook, sha256, stage_in_chroot

EPOCH = 1700000000
PLAYBOOK = str(REPO / "playbooks/deploy_k0s.yml")


def play(tmp_path, evars, *extra):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    env = ansible_env(TMPDIR=str(tmp), SOURCE_DATE_EPOCH=str(EPOCH))
    return run_playbook([PLAYBOOK, "-e", json.dumps(evars)] + list(extra), cwd=tmp_path, env=env)


def staging_left(tmp_path):
    return [n for n in os.listdir(str(tmp_path / "tmpdir")) if n.startswith("fleetsplit-k0s-image.")]


@pytest.mark.skipif(os.geteuid() != 0, reason="extracting owners 0/0 needs root")
# The compat run (oldest ansible-core) keeps zip/tar and legacy/cpio: the play is the same for every format, the
# writer is pure Python.
@pytest.mark.parametrize("image,fixture,fmt", [
    ("tar", "k0s-small-zip", "zip"), ("cpio", "k0s-small-legacy", "legacy"),
    pytest.param("cpio", "k0s-small-zip", "zip", marks=pytest.mark.newest_core_only),
    pytest.param("tar", "k0s-small-legacy", "legacy", marks=pytest.mark.newest_core_only)])
def test_image_equals_directory_overlay(tmp_path, fixture_index, fixture, fmt, image):
    exe = tmp_path / fixture
    shutil.copy2(str(FIXTURES / fixture), str(exe))   # private copy: its mtime is what legacy pins
    cache = str(tmp_path / "cache")
    (tmp_path / "images").mkdir()
    output = tmp_path / "images" / ("k0s." + image)
    evars = dict(k0s_executable=str(exe), k0s_controller_cache_dir=cache, k0s_overlay_format=image,
                 k0s_overlay_output=str(output))

    # Check mode on a fresh output: reports the change, writes no image and leaves no staging behind.
    proc, out = play(tmp_path, evars, "--check", "--diff")
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] > 0, out
    assert os.listdir(str(tmp_path / "images")) == [] and staging_left(tmp_path) == []

    proc, out = play(tmp_path, evars, "-v")
    assert proc.returncode == 0, out
    digest, size = sha256(output), output.stat().st_size
    assert "image: %s (%s)" % (output, image) in out and "size: %d bytes, sha256: %s" % (size, digest) in out, out
    # The overlay was staged in a private directory under TMPDIR, removed after packing.
    assert re.search(r'"path": "%s/fleetsplit-k0s-image\.[^"]+"' % re.escape(str(tmp_path / "tmpdir")), out), out
    assert staging_left(tmp_path) == []

    # The reference: the directory overlay of the same play and inputs.
    proc, ref_out = play(tmp_path, dict(k0s_executable=str(exe), k0s_controller_cache_dir=cache,
                                        k0s_overlay_root=str(tmp_path / "overlay")))
    assert proc.returncode == 0, ref_out
    ref = listing(tmp_path / "overlay")
    tree = tmp_path / "extracted"
    (extract_tar if image == "tar" else extract_cpio)(output, tree)
    got = listing(tree)
    pinned = exe.stat().st_mtime_ns // 10**9
    keep = {"usr/bin/k0s"} | {"usr/libexec/k0s/" + n for n in fixture_index[fixture]["binaries"]} \
        if fmt == "legacy" else set()
    # Same paths, kinds, modes, content and link targets; owned by root; mtimes pinned or the epoch.
    want = {p: (kind, mode, 0, 0, pinned if p in keep else EPOCH, content)
            for p, (kind, mode, uid, gid, mtime, content) in ref.items()}
    if fmt == "legacy":
        assert {ref[p][4] for p in keep} == {pinned}, "the directory overlay pins them too"
    if image == "cpio":
        assert strip_cpio_times(got) == strip_cpio_times(want)
        assert {h[0]: h[5] for h in newc_headers(output)} == {p: v[4] for p, v in want.items()}
        assert {(h[2], h[3]) for h in newc_headers(output)} == {(0, 0)}
    else:
        assert got == want

    # A re-run: nothing changes, the file keeps its bytes (and inode); check mode agrees.
    ino = output.stat().st_ino
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out
    assert sha256(output) == digest and output.stat().st_ino == ino
    proc, out = play(tmp_path, evars, "--check", "--diff")
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out
    assert sorted(os.listdir(str(tmp_path / "images"))) == [output.name] and staging_left(tmp_path) == []

    stage_in_chroot(tree, fmt, fixture_index[fixture]["binaries"])


@pytest.mark.parametrize("image", [pytest.param("cpio", marks=pytest.mark.newest_core_only), "sysext"])
def test_default_output_and_format_change_is_reported(tmp_path, image):
    """No k0s_overlay_output: ./out/k0s.cpio or ./out/k0s-<version>-<arch>.raw in the working directory (out/
    created); check mode knows the exact bytes (the sysext is built in a private temp dir and removed), so an
    unchanged input is no change and a changed epoch is one, shown as sha256 before/after."""
    exe = tmp_path / "k0s"
    shutil.copy2(str(FIXTURES / "k0s-small-zip"), str(exe))
    evars = dict(k0s_executable=str(exe), k0s_controller_cache_dir=str(tmp_path / "cache"), k0s_overlay_format=image)
    proc, out = play(tmp_path, evars, "--check")
    assert proc.returncode == 0, out
    assert not (tmp_path / "out").exists()
    proc, out = play(tmp_path, evars)
    assert proc.returncode == 0, out
    [output] = (tmp_path / "out").iterdir()
    assert output.name == ("k0s.cpio" if image == "cpio" else "k0s-v1.36.3+k0s.0-x86-64.raw")
    first = sha256(output)
    proc, out = play(tmp_path, evars, "--check", "--diff")
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out
    proc, out = play(tmp_path, dict(evars, k0s_overlay_epoch=EPOCH + 1), "--check", "--diff")
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 1, out
    assert "-sha256 %s" % first in out, "the diff shows the sha256 before and after"
    assert sha256(output) == first and not staging_left(tmp_path)
    assert not [n for n in os.listdir(str(tmp_path / "tmpdir")) if n.startswith("fleetsplit-k0s-sysext-check.")]
    proc, out = play(tmp_path, dict(evars, k0s_overlay_epoch=EPOCH + 1))
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 1 and sha256(output) != first, out
    if image == "cpio":
        assert {h[5] for h in newc_headers(output)} >= {EPOCH + 1}


BAD = {
    # name: (extra variables, what the refusal says)
    "format": (dict(k0s_overlay_format="zip"), 'k0s_overlay_format "zip" is not one of dir'),
    "missing directory": (dict(k0s_overlay_format="tar", k0s_overlay_output="{tmp}/nope/k0s.tar"),
                          "does not exist; create it first"),
    "directory": (dict(k0s_overlay_format="tar", k0s_overlay_output="{tmp}/images"), "is a directory: name the image"),
    "symlink": (dict(k0s_overlay_format="cpio", k0s_overlay_output="{tmp}/images/link.cpio"),
                "is a symlink: the image is written by rename"),
    "newline": (dict(k0s_overlay_format="cpio", k0s_overlay_output="{tmp}/images/a\nb.cpio"),
                "contains a control character"),
    "output without format": (dict(k0s_overlay_output="{tmp}/images/k0s.tar"),
                              "names an image file, but k0s_overlay_format is dir"),
    "root with format": (dict(k0s_overlay_format="tar", k0s_overlay_root="{tmp}/overlay"),
                         "k0s_overlay_root ({tmp}/overlay) is the directory of a dir overlay"),
    "epoch": (dict(k0s_overlay_format="cpio", k0s_overlay_epoch="yesterday"),
              'k0s_overlay_epoch (or SOURCE_DATE_EPOCH) "yesterday" is not a number of seconds'),
    "sysext filesystem": (dict(k0s_overlay_format="sysext", k0s_sysext_filesystem="ext4"),
                          'k0s_sysext_filesystem "ext4" is not squashfs or erofs'),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_stop_before_the_split(tmp_path, case):
    extra, message = BAD[case]
    (tmp_path / "images").mkdir()
    os.symlink(str(tmp_path / "victim"), str(tmp_path / "images" / "link.cpio"))
    evars = dict(k0s_executable=str(FIXTURES / "k0s-small-zip"), k0s_controller_cache_dir=str(tmp_path / "cache"))
    evars.update({k: v.format(tmp=tmp_path) for k, v in extra.items()})
    proc, out = play(tmp_path, evars)
    assert proc.returncode != 0, out
    # ansible-core 2.16 prints the message JSON-escaped (quotes and backslashes)
    assert message.format(tmp=tmp_path) in out.replace('\\"', '"').replace("\\\\", "\\"), out
    assert not (tmp_path / "cache").exists(), "the split did not run"
    assert sorted(os.listdir(str(tmp_path / "images"))) == ["link.cpio"] and not (tmp_path / "victim").exists()
    assert not (tmp_path / "overlay").exists() and not (tmp_path / "out").exists()


def test_failure_after_staging_removes_the_staging(tmp_path):
    """The output directory made immutable (chattr +i: even root cannot create the temporary image there): the
    packing fails after the overlay was staged; the staging directory goes all the same and nothing is written."""
    images = tmp_path / "images"
    images.mkdir()
    if subprocess.run(["chattr", "+i", str(images)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i not possible here")
    try:
        evars = dict(k0s_executable=str(FIXTURES / "k0s-small-zip"), k0s_controller_cache_dir=str(tmp_path / "cache"),
                     k0s_overlay_format="tar", k0s_overlay_output=str(images / "k0s.tar"))
        proc, out = play(tmp_path, evars)
    finally:
        subprocess.run(["chattr", "-i", str(images)], check=True)
    assert proc.returncode != 0, out
    assert re.search(r"Pack the staged overlay.*\n.*cannot create .*k0s\.tar.*Operation not permitted", out), out
    assert "Remove the staging directory" in out, out
    assert staging_left(tmp_path) == [] and os.listdir(str(images)) == []


def private_entries(out):
    """image_output's private_entries from a -v run's output."""
    [found] = re.findall(r'"private_entries": \[([^\]]*)\]', out)
    return json.loads("[%s]" % found)


@pytest.mark.parametrize("image", ["tar", pytest.param("sysext", marks=pytest.mark.newest_core_only)])
def test_image_with_private_files_is_private_and_never_published(tmp_path, image):
    """A 0600 file in the image (k0s.yaml from k0s_config, the env file from k0s_env; OpenRC's conf.d in an
    archive) makes the image 0600 and is named; a sysext without one stays 0644 (conf.d is dropped from it).
    Publishing a private sysext in an update channel is refused, and the channel stays empty."""
    exe = tmp_path / "k0s"
    shutil.copy2(str(FIXTURES / "k0s-small-zip"), str(exe))
    (tmp_path / "images").mkdir()
    output = tmp_path / "images" / ("k0s." + ("tar" if image == "tar" else "raw"))
    base = dict(k0s_executable=str(exe), k0s_controller_cache_dir=str(tmp_path / "cache"), k0s_overlay_format=image,
                k0s_overlay_output=str(output))
    proc, out = play(tmp_path, base, "-v")
    assert proc.returncode == 0, out
    mode = stat.S_IMODE(output.stat().st_mode)
    assert mode == (0o600 if image == "tar" else 0o644), oct(mode)
    assert private_entries(out) == (["etc/conf.d/k0scontroller"] if image == "tar" else []), out

    secret = dict(base, k0s_config={"spec": {"api": {"port": 6443}}}, k0s_env={"HTTPS_PROXY": "http://proxy:3128"})
    proc, out = play(tmp_path, secret, "-v")
    assert proc.returncode == 0, out
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert {"etc/k0s/k0s.yaml", "etc/k0s/k0scontroller.env"} <= set(private_entries(out)), out
    if image == "sysext":
        channel = tmp_path / "channel"
        channel.mkdir()
        proc, out = play(tmp_path, dict(secret, k0s_sysext_channel_dir=str(channel),
                                        k0s_sysext_channel_url="http://127.0.0.1:1/k0s/"))
        assert proc.returncode != 0 and "must hold no private file" in out and "etc/k0s/k0s.yaml" in out, out
        assert os.listdir(str(channel)) == []
