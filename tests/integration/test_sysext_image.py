"""The sysext image of the directory overlay (plugins/module_utils/image_sysext.py, issue 14 item 2).

Directory overlays are built by the real deploy_k0s playbook from the small fixtures (zip and legacy payloads,
with k0s_config and k0s_env so the factory /etc files and the 0600 env file are exercised). Images are packed by
the real mksquashfs / mkfs.erofs and read back with the standard tools (unsquashfs -d, unsquashfs -lln,
fsck.erofs --extract, a read-only loop mount); the tmpfiles.d drop-in is applied by the real systemd-tmpfiles;
the image is merged by the real systemd-sysext (--root, in a private mount namespace) and the fixture k0s is
staged in a chroot of the merged tree.
"""
import collections
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from testlib import FIXTURES, REPO, assert_staged, in_namespace, run_playbook, sha256, stage_in_chroot

from ansible_collections.fleetsplit.k0s.plugins.module_utils import image_sysext as sx

# The library, mksquashfs/mkfs.erofs, systemd-sysext and systemd-tmpfiles: nothing here depends on ansible-core
# (the overlays come from the playbook, which the compat run exercises in test_service_units and test_image_outputs).
pytestmark = pytest.mark.newest_core_only

EPOCH = 1700000000
FIXTURE_FORMATS = [("k0s-small-zip", "zip"), ("k0s-small-legacy", "legacy")]
FILESYSTEMS = ["squashfs", "erofs"]
GENERATED = {"usr/lib/extension-release.d/extension-release.k0s", sx.TMPFILES, sx.KUBELET_PLUGINS,
             "usr/lib/systemd/system/multi-user.target.d/10-k0scontroller.conf"}

Entry = collections.namedtuple("Entry", "path kind mode mtime size sha256 target source")


def scan(root, epoch, keep=()):
    """The entries image_tree.scan (engineer A, issue 14) returns: sorted, mode bits, epoch mtime except ``keep``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, str(root))
            st = os.lstat(p)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
            out.append(Entry(rel, kind, stat.S_IMODE(st.st_mode),
                             st.st_mtime_ns // 10 ** 9 if rel in keep else epoch,
                             st.st_size if kind == "file" else None, sha256(p) if kind == "file" else None,
                             os.readlink(p) if kind == "symlink" else None, p))
    return sorted(out, key=lambda e: e.path.encode())


def pinned(root):
    path = root / "usr/share/fleetsplit-k0s/manifest.json"
    man = json.loads(path.read_text()) if path.exists() else {}
    if man.get("format") != "legacy":
        return []
    return ["usr/bin/k0s"] + ["usr/libexec/k0s/" + f["name"] for f in man["files"]]


@pytest.fixture(scope="module")
def overlays(tmp_path_factory):
    """{fixture: overlay root} built by the real playbook (controller role, a config and an env file)."""
    tmp = tmp_path_factory.mktemp("sysext-overlays")
    out = {}
    for fixture, dummy in FIXTURE_FORMATS:
        exe = tmp / fixture
        shutil.copy2(str(FIXTURES / fixture), str(exe))
        root = tmp / ("overlay-" + fixture)
        evars = dict(k0s_executable=str(exe), k0s_controller_cache_dir=str(tmp / "cache"), k0s_overlay_root=str(root),
                     k0s_config={"spec": {"api": {"port": 6443}}}, k0s_env={"HTTPS_PROXY": "http://proxy:3128"})
        proc, log = run_playbook([str(REPO / "playbooks/deploy_k0s.yml"), "-e", json.dumps(evars)], cwd=tmp)
        assert proc.returncode == 0, log
        out[fixture] = root
    return out


def build(root, dest, **opts):
    options = dict(name="k0s", architecture="x86_64", filesystem="squashfs", epoch=EPOCH)
    options.update(opts)
    return sx.build_sysext(scan(root, options["epoch"], pinned(root)), str(root), str(dest), options)


def extract(image, fs, dest):
    if fs == "squashfs":
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(image)], check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run(["fsck.erofs", "--extract=%s" % dest, str(image)], check=True, stdout=subprocess.DEVNULL)
    return dest


def tree(root):
    """{relative path: (kind, mode, mtime, sha256 or link target)} of an extracted or mounted tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
            out[os.path.relpath(p, str(root))] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns // 10 ** 9,
                                                  sha256(p) if kind == "file" else os.readlink(p) if kind == "symlink"
                                                  else None)
    return out


@pytest.mark.parametrize("fs", FILESYSTEMS)
@pytest.mark.parametrize("fixture,fmt", FIXTURE_FORMATS)
def test_image_content_is_the_overlay_after_the_mapping(overlays, tmp_path, fixture, fmt, fs):
    root = overlays[fixture]
    result = build(root, tmp_path / "k0s.raw", filesystem=fs)
    got = tree(extract(tmp_path / "k0s.raw", fs, tmp_path / "x"))
    exe_mtime = (root / "usr/bin/k0s").stat().st_mtime_ns // 10 ** 9
    keep = set(pinned(root))
    assert (fmt == "legacy") == bool(keep)
    seen = set()
    for e in scan(root, EPOCH, keep):
        target = result["mapping"].get(e.path)
        if e.path.startswith(("etc/init.d/", "etc/conf.d/", "etc/runlevels/")):
            assert (e.path in result["dropped"]) == (e.kind != "dir") and target is None
            continue
        if e.path.startswith("var/lib/k0s/bin/"):
            assert target == sx.TMPFILES
            assert "L+ /%s - - - - %s\n" % (e.path, e.target) in result["tmpfiles"]
            continue
        if e.kind == "dir" or target is None:
            continue
        if e.path.endswith("multi-user.target.wants/k0scontroller.service"):
            assert got[target][3] == sha256_text("[Unit]\nUpholds=k0scontroller.service\n")
            continue
        seen.add(target)
        kind, mode, mtime, content = got[target]
        assert (kind, mode, content) == (e.kind, e.mode, e.sha256 or e.target), e.path
        assert mtime == (exe_mtime if e.path in keep else EPOCH), e.path
    # Every file of the overlay's release, the unit and the factory /etc copies are there; nothing else but
    # what the mapping generates and the directories holding them.
    assert {"usr/bin/k0s", "usr/lib/systemd/system/k0scontroller.service",
            "usr/share/fleetsplit-k0s/factory/etc/k0s/k0s.yaml",
            "usr/share/fleetsplit-k0s/factory/etc/k0s/k0scontroller.env"} <= seen
    extra = {p for p, v in got.items() if v[0] != "dir"} - seen - GENERATED
    assert extra == set()
    assert got["usr/share/fleetsplit-k0s/factory/etc/k0s/k0scontroller.env"][1] == 0o600
    assert got[sx.KUBELET_PLUGINS] == ("symlink", 0o777, EPOCH, "/var/lib/k0s/kubelet-plugins")
    assert all(v[2] == EPOCH for p, v in got.items() if v[0] == "dir")
    assert sorted(result["dropped"]) == ["etc/conf.d/k0scontroller", "etc/init.d/k0scontroller",
                                         "etc/runlevels/default/k0scontroller"]
    assert got["usr/lib/extension-release.d/extension-release.k0s"][3] == sha256_text(
        "ID=_any\nARCHITECTURE=x86-64\n") == sha256_text(result["extension_release"])
    assert result["size"] == (tmp_path / "k0s.raw").stat().st_size
    assert result["sha256"] == sha256(tmp_path / "k0s.raw")
    if fs == "squashfs":   # owners as the image records them, not as extraction as root makes them
        listing = subprocess.run(["unsquashfs", "-lln", str(tmp_path / "k0s.raw")], capture_output=True,
                                 text=True, check=True).stdout
        owners = {line.split()[1] for line in listing.splitlines() if line[:1] in "-dl" and "squashfs-root" in line}
        assert owners == {"0/0"}
    else:
        owners = set()
        for path in (p for p, v in got.items() if v[0] != "dir"):
            info = subprocess.run(["dump.erofs", "--path=/" + path, str(tmp_path / "k0s.raw")], capture_output=True,
                                  text=True, check=True).stdout
            owners.add(" ".join(info.split("Uid:")[1].split()[:3]))
        assert owners == {"0 Gid: 0"}


def sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("fs", FILESYSTEMS)
@pytest.mark.parametrize("fixture,fmt", FIXTURE_FORMATS)
def test_two_builds_from_moved_and_retimed_inputs_are_byte_identical(overlays, tmp_path, monkeypatch, fixture, fmt, fs):
    first = build(overlays[fixture], tmp_path / "a.raw", filesystem=fs)
    # A reproducible-build environment exports SOURCE_DATE_EPOCH (mksquashfs 4.5 then refuses -mkfs-time):
    # the epoch passed in decides, the variable changes nothing.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH + 7))
    moved = tmp_path / "elsewhere" / "deeper" / "overlay"
    shutil.copytree(str(overlays[fixture]), str(moved), symlinks=True)
    keep = set(pinned(moved))
    for dirpath, dirnames, filenames in os.walk(str(moved)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.relpath(p, str(moved)) not in keep:
                os.utime(p, (1234567, 1234567), follow_symlinks=False)
    os.chmod(str(moved), 0o700)
    time.sleep(1.1)   # another build time: erofs records it unless the library fixes it
    second = build(moved, tmp_path / "b.raw", filesystem=fs)
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "b.raw").read_bytes()
    # Not trivially equal: another epoch gives other bytes.
    third = build(moved, tmp_path / "c.raw", filesystem=fs, epoch=EPOCH + 1)
    assert third["sha256"] != first["sha256"]


@pytest.mark.parametrize("fs", FILESYSTEMS)
@pytest.mark.parametrize("fixture,fmt", FIXTURE_FORMATS)
def test_extracted_image_stages_k0s_after_systemd_tmpfiles(overlays, fixture_index, tmp_path, fixture, fmt, fs):
    build(overlays[fixture], tmp_path / "k0s.raw", filesystem=fs)
    root = extract(tmp_path / "k0s.raw", fs, tmp_path / "root")
    assert not (root / "var").exists() and not (root / "etc").exists()
    tmpfiles = shutil.which("systemd-tmpfiles")
    if not tmpfiles:
        pytest.skip("systemd-tmpfiles not installed")
    subprocess.run([tmpfiles, "--root=%s" % root, "--create", str(root / sx.TMPFILES)], check=True)
    for name in fixture_index[fixture]["binaries"]:
        assert os.readlink(str(root / "var/lib/k0s/bin" / name)) == "/usr/libexec/k0s/" + name
    assert (root / "var/lib/k0s/kubelet-plugins/volume/exec").is_dir()
    env = root / "etc/k0s/k0scontroller.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert env.read_bytes() == (overlays[fixture] / "etc/k0s/k0scontroller.env").read_bytes()
    assert (root / "etc/k0s/k0s.yaml").read_bytes() == (overlays[fixture] / "etc/k0s/k0s.yaml").read_bytes()
    stage_in_chroot(root, fmt, fixture_index[fixture]["binaries"])
    # k0s's volumePluginDir (/usr/libexec/k0s/kubelet-plugins/volume/exec) resolves, inside the image, to a
    # writable directory of the data dir.
    link = os.readlink(str(root / sx.KUBELET_PLUGINS))
    assert (root / link.lstrip("/") / "volume/exec").is_dir() and link.startswith("/var/lib/k0s/")


MERGE = """
mount --make-rshared /
mount -t tmpfs tmpfs /run
systemd-sysext --root="$1" merge
systemd-tmpfiles --root="$1" --create "$1/usr/lib/tmpfiles.d/fleetsplit-k0s.conf"
mount -t proc proc "$1/proc"
if touch "$1/usr/bin/k0s" 2>/dev/null; then echo "merged /usr is writable"; exit 3; fi
chroot "$1" /usr/bin/k0s stage --data-dir /var/lib/k0s
"""


def sysext_root(tmp_path, image, os_release="ID=debian\nVERSION_ID=12\n"):
    root = tmp_path / "host"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(os_release)
    (root / "var/lib/extensions").mkdir(parents=True)
    (root / "proc").mkdir()
    shutil.copy2(str(image), str(root / "var/lib/extensions/k0s.raw"))
    return root


@pytest.mark.parametrize("fs", FILESYSTEMS)
@pytest.mark.parametrize("fixture,fmt", FIXTURE_FORMATS)
def test_systemd_sysext_merges_the_image_and_k0s_stages_from_it(overlays, fixture_index, tmp_path, fixture, fmt, fs):
    if not shutil.which("systemd-sysext"):
        pytest.skip("systemd-sysext not installed")
    build(overlays[fixture], tmp_path / "k0s.raw", filesystem=fs)
    root = sysext_root(tmp_path, tmp_path / "k0s.raw")
    run = in_namespace(MERGE, root)
    assert_staged(run, fmt, fixture_index[fixture]["binaries"])


@pytest.mark.parametrize("opts,os_release,merged", [
    (dict(os_id="debian", version_id="12"), "ID=debian\nVERSION_ID=12\n", True),
    (dict(os_id="debian", version_id="11"), "ID=debian\nVERSION_ID=12\n", False),
    (dict(os_id="fedora", sysext_level="1.0"), "ID=debian\nVERSION_ID=12\n", False),
    (dict(os_id="flatcar", sysext_level="1.0"), "ID=flatcar\nVERSION_ID=3975.2.0\nSYSEXT_LEVEL=1.0\n", True),
    (dict(architecture="arm64"), "ID=debian\nVERSION_ID=12\n", os.uname().machine == "aarch64"),
], ids=["debian-12", "debian-11-on-12", "fedora-on-debian", "flatcar-level", "arm64"])
def test_extension_release_is_what_systemd_sysext_accepts(overlays, tmp_path, opts, os_release, merged):
    """The real systemd-sysext decides; the refused cases prove the fields are read, not ignored."""
    if not shutil.which("systemd-sysext"):
        pytest.skip("systemd-sysext not installed")
    result = build(overlays["k0s-small-zip"], tmp_path / "k0s.raw", **opts)
    root = sysext_root(tmp_path, tmp_path / "k0s.raw", os_release)
    run = in_namespace('mount --make-rshared / && mount -t tmpfs tmpfs /run && systemd-sysext --root="$1" merge '
                       '&& test -x "$1/usr/bin/k0s"', root)
    assert (run.returncode == 0) == merged, (result["extension_release"], run.stdout, run.stderr)


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_loop_mount_equals_extraction(overlays, tmp_path, fs):
    """The kernel mounts the image (for erofs: checks the superblock crc32c the library rewrote)."""
    build(overlays["k0s-small-legacy"], tmp_path / "k0s.raw", filesystem=fs)
    extracted = tree(extract(tmp_path / "k0s.raw", fs, tmp_path / "x"))
    (tmp_path / "mnt").mkdir()
    run = in_namespace('mount -t "$3" -o loop,ro "$1" "$2" && cd "$2" && find . -printf "%P\\t%m\\t%T@\\t%y\\n"',
                       tmp_path / "k0s.raw", tmp_path / "mnt", fs)
    if run.returncode != 0 and ("failed to setup loop device" in run.stderr or "free loop device" in run.stderr):
        pytest.skip("no loop devices here: " + run.stderr)
    assert run.returncode == 0, run.stderr
    mounted = {}
    for line in run.stdout.splitlines():
        path, mode, mtime, kind = line.split("\t")
        if path:
            mounted[path] = (int(mode, 8), int(float(mtime)), kind)
    assert mounted == {p: (v[1], v[2], {"dir": "d", "file": "f", "symlink": "l"}[v[0]]) for p, v in extracted.items()}


@pytest.mark.parametrize("change,message", [
    (lambda r: (r / "var/lib/k0s/images").mkdir() or (r / "var/lib/k0s/images/bundle.tar").write_bytes(b"x"),
     "k0s_airgap_bundles"),
    (lambda r: (r / "srv").mkdir() or (r / "srv/x").write_text("x"), "/srv is outside /usr and /opt"),
    (lambda r: (r / "var/lib/k0s/bin/extra").write_text("x"), "/var/lib/k0s/bin/extra is not a data-dir link"),
    (lambda r: (r / "usr/libexec/k0s/kubelet-plugins").mkdir(), "usr/libexec/k0s/kubelet-plugins"),
    (lambda r: (r / "usr/share/fleetsplit-k0s/manifest.json").unlink(), "manifest.json is missing"),
], ids=["airgap", "outside-usr", "data-dir-file", "kubelet-plugins", "no-manifest"])
def test_refused_overlays_name_the_path_and_write_nothing(overlays, tmp_path, change, message):
    root = tmp_path / "overlay"
    shutil.copytree(str(overlays["k0s-small-zip"]), str(root), symlinks=True)
    change(root)
    with pytest.raises(sx.SysextError, match=message.replace("+", "\\+")):
        build(root, tmp_path / "k0s.raw")
    assert sorted(os.listdir(str(tmp_path))) == ["overlay"]


@pytest.mark.parametrize("opts,message", [
    (dict(name="../k0s"), "name='../k0s'"),
    (dict(name="k0s.raw"), "without .raw"),
    (dict(os_id="debian"), "needs sysext_level or version_id"),
    (dict(os_id="Debian", version_id="12"), "os_id='Debian'"),
    (dict(os_id="debian", version_id="12\nID=_any"), "version_id="),
    (dict(sysext_level="1 0"), "sysext_level="),
    (dict(architecture="EM_MIPS"), "no systemd architecture known for the ELF machine 'EM_MIPS'"),
    (dict(filesystem="ext4"), "filesystem='ext4'"),
    (dict(filesystem="erofs", compression="xz"), "compression='xz'"),
    (dict(epoch=-1), "epoch"),
    (dict(reload_manager="yes"), "reload_manager"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refused_options(overlays, tmp_path, opts, message):
    with pytest.raises(sx.SysextError, match=message.replace("(", "\\(").replace(".", "\\.")):
        build(overlays["k0s-small-zip"], tmp_path / "k0s.raw", **opts)
    assert not (tmp_path / "k0s.raw").exists()


def test_missing_tool_names_the_debian_package(overlays, tmp_path, monkeypatch):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(sx.SysextError, match="install the Debian package erofs-utils"):
        build(overlays["k0s-small-zip"], tmp_path / "k0s.raw", filesystem="erofs")
    assert not (tmp_path / "k0s.raw").exists()


def test_extension_release_fields_and_architectures():
    # image_output passes the payload's elf_machine (uname spelling) instead of an architecture.
    assert sx.check_options(dict(elf_machine="aarch64"))["architecture"] == "arm64"
    with pytest.raises(sx.SysextError, match="architecture .* or elf_machine"):
        sx.check_options(dict(name="k0s"))
    opts = sx.check_options(dict(name="k0s", os_id="flatcar", sysext_level="1.0", architecture="EM_AARCH64",
                                 reload_manager=True, epoch=0))
    assert sx.extension_release(opts) == "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=arm64\nEXTENSION_RELOAD_MANAGER=1\n"
    machines = ("EM_X86_64", "EM_AARCH64", "EM_ARM", "EM_RISCV", "EM_PPC64", "EM_S390", "x86_64", "aarch64", "armv7l")
    assert [sx.systemd_architecture(m) for m in machines] == \
        ["x86-64", "arm64", "arm", "riscv64", "ppc64-le", "s390x", "x86-64", "arm64", "arm"]
