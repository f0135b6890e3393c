"""Runs fleetsplit.k0s.k0s_release (and the install role) for real against a temporary root.

Every path the module touches lives under pytest's tmp_path. Streams are genuine gzip members made from
real binaries on this machine and, when the fixtures exist, from the fixture k0s executables via the
collection's own splitter.
"""
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from testlib import COLLECTIONS, FIXTURES, REPO, load_fixtures, run_playbook, tree_snapshot

MODULE = REPO / "plugins" / "modules" / "k0s_release.py"


def _real(path):
    return Path(path).read_bytes()


# Real executables as stand-ins for embedded binaries (genuine ELF files, real sizes): runc and xtables come
# from the Debian packages the fixtures are built from (never from this machine's own packages, which a fresh
# machine lacks), the others from coreutils, which every Debian has.
def _pick(*cands):
    for c in cands:
        if os.path.isfile(c):
            return c
    raise RuntimeError("none of %s exists" % (cands,))


def _fixture_bin(name):
    load_fixtures()
    return _pick(str(FIXTURES / "bins" / name))


RUNC = _fixture_bin("runc")
XT = _fixture_bin("xtables-nft-multi")
EXE_V1 = _pick("/bin/ls", "/usr/bin/ls")
EXE_V2 = _pick("/bin/cat", "/usr/bin/cat")
OTHER = _pick("/bin/cp", "/usr/bin/cp")


def spec(data):
    return dict(size=len(data), sha256=hashlib.sha256(data).hexdigest(), crc32=zlib.crc32(data))


class Host(object):
    """A relocated host: every directory of the module under one temp root."""

    def __init__(self, root):
        self.root = root
        self.store = root / "var/lib/fleetsplit-k0s"
        self.bin = root / "usr/bin"
        self.libexec = root / "usr/libexec/k0s"
        self.data = root / "var/lib/k0s"
        self.streams = root / "incoming"
        for d in (self.bin, self.streams, self.data.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def release(self, version, bins, exe):
        """bins: {name: bytes}; exe: bytes -> dict of module args describing that release."""
        files = [dict(name=n, **spec(d)) for n, d in sorted(bins.items())]
        return dict(k0s_version=version, files=files, executable=spec(exe), _content=dict(bins, k0s=exe))

    def upload(self, rel, names=None):
        for name, data in rel["_content"].items():
            if names is None or name in names:
                (self.streams / ("%s.gz" % name)).write_bytes(gzip.compress(data, 6))

    def run(self, state="present", rel=None, check=False, diff=False, expect_fail=False, wrap=(), **extra):
        args = dict(state=state, store_dir=str(self.store), bin_dir=str(self.bin), libexec_dir=str(self.libexec),
                    data_dir=str(self.data), streams_dir=str(self.streams), _ansible_check_mode=check,
                    _ansible_diff=diff)
        if rel is not None and state != "rollback":
            args.update((k, v) for k, v in rel.items() if not k.startswith("_"))
        args.update(extra)
        self.n += 1
        argfile = self.root / (".args-%d.json" % self.n)
        argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
        p = subprocess.run(list(wrap) + [sys.executable, str(MODULE), str(argfile)], capture_output=True, text=True,
                           env=env, check=False)
        argfile.unlink()
        try:
            res = json.loads(p.stdout)
        except ValueError:
            raise AssertionError("module printed no JSON: rc=%d\n%s\n%s" % (p.returncode, p.stdout, p.stderr))
        if expect_fail:
            assert res.get("failed"), res
        else:
            assert not res.get("failed"), res.get("msg")
        return res

    def rdir(self, rid):
        return self.store / "releases" / rid

    def current(self):
        return os.readlink(self.store / "current").split("/")[-1]

    def assert_installed(self, rel, rid):
        assert self.current() == rid
        content = rel["_content"]
        # What the host shows through the stable paths is exactly this release.
        assert _real(self.bin / "k0s") == content["k0s"]
        assert os.path.realpath(self.bin / "k0s") == str(self.rdir(rid) / "bin/k0s")
        for name, data in content.items():
            if name == "k0s":
                continue
            f = self.libexec / name
            assert _real(f) == data, name
            assert os.path.realpath(f) == str(self.rdir(rid) / "libexec" / name)
            link = self.data / "bin" / name
            assert os.readlink(link) == str(self.libexec / name)
            assert os.path.realpath(link) == os.path.realpath(f)
            st = os.stat(f)
            assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0 and st.st_gid == 0
        # <libexec_dir> is a real directory with one link per binary through `current` (k0s's entries beside them).
        assert not self.libexec.is_symlink()
        for name in content:
            if name != "k0s":
                assert os.readlink(self.libexec / name) == str(self.store / "current/libexec" / name)
        assert sorted(os.listdir(self.rdir(rid) / "libexec")) == sorted(n for n in content if n != "k0s")

    def snapshot(self):
        return tree_snapshot(self.root)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path / "root")


@pytest.fixture
def v1(host):
    return host.release("v1.0.0", {"runc": _real(RUNC), "xtables-nft-multi": _real(XT)}, _real(EXE_V1))


@pytest.fixture
def v2(host):
    # runc and the executable change, xtables stays the same.
    return host.release("v1.0.1", {"runc": _real(OTHER), "xtables-nft-multi": _real(XT)}, _real(EXE_V2))


def install(host, rel, **kw):
    q = host.run("query", rel)
    host.upload(rel, q["missing"])
    return q, host.run("present", rel, **kw)


# --------------------------------------------------------------------------- basic lifecycle

def test_fresh_install_then_rerun_is_unchanged(host, v1):
    q = host.run("query", v1)
    assert q["changed"] is False and q["up_to_date"] is False
    assert q["missing"] == ["k0s", "runc", "xtables-nft-multi"]
    assert not host.store.exists(), "query must not create anything"
    host.upload(v1, q["missing"])
    r = host.run("present", v1)
    assert r["changed"] and r["built"] and r["binaries_changed"]
    assert r["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "stream"}
    assert re.match(r"^v1\.0\.0-[0-9a-f]{12}$", r["release_id"])
    host.assert_installed(v1, r["release_id"])
    assert os.listdir(host.streams) == [], "used streams are removed"
    # Re-run: nothing to send, nothing changes.
    q2 = host.run("query", v1)
    assert q2["missing"] == [] and q2["up_to_date"] is True
    r2 = host.run("present", v1)
    assert r2["changed"] is False and r2["binaries_changed"] is False, r2["changes"]
    assert r2["release_id"] == r["release_id"]


def test_query_up_to_date_means_present_would_change_nothing(host, v1, v2):
    """The install role skips present when query says up to date: every kind of drift present repairs
    must make query say otherwise, and query must report host facts (plays gather none)."""
    dummy, r1 = install(host, v1)
    rid = r1["release_id"]
    q = host.run("query", v1)
    assert q["up_to_date"] is True and q["changes"] == []
    assert q["host"]["architecture"] == os.uname().machine
    assert q["host"]["service_mgr"]

    def drifted(why, undo):
        q = host.run("query", v1)
        assert q["up_to_date"] is False and q["changes"], why
        assert q["changed"] is False
        r = host.run("present", v1)
        assert r["changed"] is True, why
        assert host.run("query", v1)["up_to_date"] is True, why
        undo()

    os.chmod(host.rdir(rid) / "libexec/runc", 0o700)
    drifted("mode", lambda: None)
    (host.rdir(rid) / "libexec/stray").write_bytes(b"x")
    drifted("extra file in the release", lambda: None)
    (host.data / "bin/runc").unlink()
    drifted("data-dir link removed", lambda: None)
    (host.rdir(rid) / "libexec/.runc.fleetsplit-tmp-abc123").write_bytes(b"half")
    drifted("leftover of a killed run", lambda: None)
    (host.streams / "runc.gz").write_bytes(b"stale")
    drifted("stale stream", lambda: None)
    # A file whose mtime changed but whose content did not: present refreshes manifest.json (quietly), so
    # the query must not call that up to date, or every later run would re-hash the file.
    victim = host.rdir(rid) / "libexec/runc"
    os.utime(victim, ns=(1, 1))
    q = host.run("query", v1)
    assert q["up_to_date"] is False and q["missing"] == [] and q["changes"] == []
    assert host.run("present", v1)["changed"] is False
    assert json.loads((host.rdir(rid) / "manifest.json").read_text())["files"]["libexec/runc"]["mtime_ns"] == 1
    assert host.run("query", v1)["up_to_date"] is True
    # After a rollback, re-installing the rolled-back-to release must run present (it ends the rollback).
    dummy, r2 = install(host, v2)
    host.run("rollback")
    assert host.current() == rid
    q = host.run("query", v1)
    assert q["missing"] == [] and q["up_to_date"] is False
    host.run("present", v1)
    assert not (host.store / "rolled-back.json").exists()
    assert host.run("query", v1)["up_to_date"] is True


def test_one_changed_file_is_the_only_one_missing(host, v1, v2):
    dummy, r1 = install(host, v1)
    q = host.run("query", v2)
    # The executable changed too, so it is missing; xtables is already on the host.
    assert q["missing"] == ["k0s", "runc"]
    host.upload(v2, q["missing"])
    r2 = host.run("present", v2)
    assert r2["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "copy"}
    host.assert_installed(v2, r2["release_id"])
    assert r2["previous_release"] == r1["release_id"]
    # Unchanged content is copied on the host (not uploaded), into its own inode: releases stay independent.
    a = os.stat(host.rdir(r1["release_id"]) / "libexec/xtables-nft-multi")
    b = os.stat(host.rdir(r2["release_id"]) / "libexec/xtables-nft-multi")
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1
    assert host.run("present", v2)["changed"] is False


def test_corrupted_file_is_reported_and_repaired(host, v1):
    dummy, r = install(host, v1)
    rid = r["release_id"]
    victim = host.rdir(rid) / "libexec/runc"
    with open(victim, "r+b") as f:   # same size, different bytes: only the hash can tell
        f.seek(4096)
        f.write(b"\x00garbage\x00" * 16)
    q = host.run("query", v1)
    assert q["missing"] == ["runc"] and q["up_to_date"] is False
    assert q["corrupt"] == {"runc": "sha256 mismatch"}
    # Without its stream the repair fails clearly and leaves the host as it was.
    bad = host.run("present", v1, expect_fail=True)
    assert "runc" in bad["msg"] and str(host.streams / "runc.gz") in bad["msg"]
    host.upload(v1, ["runc"])
    r2 = host.run("present", v1)
    assert r2["changed"] and r2["repaired"] == {"runc": "sha256 mismatch"} and r2["binaries_changed"]
    host.assert_installed(v1, rid)
    assert host.run("present", v1)["changed"] is False


def test_verify_catches_corruption_that_kept_size_and_mtime(host, v1):
    dummy, r = install(host, v1)
    victim = host.rdir(r["release_id"]) / "libexec/xtables-nft-multi"
    st = os.stat(victim)
    data = bytearray(_real(victim))
    data[100] ^= 0xFF
    with open(victim, "r+b") as f:
        f.write(data)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    # The fast path trusts size+mtime recorded in manifest.json ...
    assert host.run("query", v1)["missing"] == []
    # ... verify: true re-hashes everything.
    q = host.run("query", v1, verify=True)
    assert q["missing"] == ["xtables-nft-multi"] and q["corrupt"] == {"xtables-nft-multi": "sha256 mismatch"}
    host.upload(v1, q["missing"])
    r2 = host.run("present", v1, verify=True)
    assert r2["repaired"] == {"xtables-nft-multi": "sha256 mismatch"}
    host.assert_installed(v1, r["release_id"])


def test_missing_stream_fails_and_current_is_untouched(host, v1, v2):
    dummy, r1 = install(host, v1)
    before = host.snapshot()
    host.upload(v2, ["k0s"])   # runc's stream is not there
    bad = host.run("present", v2, expect_fail=True)
    assert "runc" in bad["msg"] and "nothing was switched" in bad["msg"]
    assert host.current() == r1["release_id"]
    host.assert_installed(v1, r1["release_id"])
    assert sorted(os.listdir(host.store / "releases")) == [r1["release_id"]]
    after = host.snapshot()
    after.pop(str(host.streams / "k0s.gz"))
    for snap in (before, after):   # the upload itself touched the streams directory
        snap.pop(str(host.streams))
    assert {k: v for k, v in after.items() if not k.endswith("/.lock")} == \
        {k: v for k, v in before.items() if not k.endswith("/.lock")}


def test_corrupt_stream_is_rejected(host, v1):
    q = host.run("query", v1)
    host.upload(v1, q["missing"])
    good = _real(host.streams / "runc.gz")
    (host.streams / "runc.gz").write_bytes(good[:len(good) // 2])
    bad = host.run("present", v1, expect_fail=True)
    assert "runc" in bad["msg"]
    assert not (host.store / "current").exists()
    assert list(os.listdir(host.store / "releases")) == [], "the temp release dir is removed"


def test_killed_mid_build_is_cleaned_up_and_converges(host, v1, v2):
    dummy, r1 = install(host, v1)
    q = host.run("query", v2)
    host.upload(v2, q["missing"])
    rid2 = q["release_id"]
    # What a kill during a build leaves: a temp release dir with a half-written file, a temp link.
    tmp = host.store / "releases" / (".%s.tmp-deadbeef0000" % rid2)
    (tmp / "libexec").mkdir(parents=True)
    (tmp / "libexec/runc").write_bytes(_real(OTHER)[:1000])
    os.symlink("releases/" + rid2, host.store / ".current.fleetsplit-tmp-0123456789ab")
    half = host.rdir(r1["release_id"]) / "libexec" / ".runc.fleetsplit-tmp-aaaaaaaaaaaa"
    half.write_bytes(b"half")
    r2 = host.run("present", v2)
    assert sorted(r2["cleaned"]) == sorted([str(tmp), str(host.store / ".current.fleetsplit-tmp-0123456789ab"),
                                            str(half)])
    assert not tmp.exists() and not half.exists()
    host.assert_installed(v2, rid2)
    assert host.run("present", v2)["changed"] is False


def test_rollback(host, v1, v2):
    bad = host.run("rollback", expect_fail=True)
    assert "nothing to roll back to" in bad["msg"]
    dummy, r1 = install(host, v1)
    dummy, r2 = install(host, v2)
    chk = host.run("rollback", check=True, diff=True)
    assert chk["changed"] and host.current() == r2["release_id"]
    rb = host.run("rollback")
    assert rb["changed"] and rb["release_id"] == r1["release_id"] and rb["binaries_changed"]
    assert rb["current_release"] == r1["release_id"] and rb["previous_release"] == r2["release_id"]
    host.assert_installed(v1, r1["release_id"])
    # A re-run does not flip back.
    again = host.run("rollback")
    assert again["changed"] is False and host.current() == r1["release_id"]
    # A rollback killed between its two renames (current switched, previous not yet) is finished.
    os.unlink(host.store / "previous")
    os.symlink("releases/" + r1["release_id"], host.store / "previous")
    fin = host.run("rollback")
    assert fin["changed"] and os.readlink(host.store / "previous") == "releases/" + r2["release_id"]
    assert host.current() == r1["release_id"]
    # Installing v2 again switches forward; no upload needed, it is still in the store.
    assert host.run("query", v2)["missing"] == []
    fwd = host.run("present", v2)
    assert fwd["changed"] and fwd["built"] is False
    host.assert_installed(v2, r2["release_id"])


def test_keep_releases_prunes_oldest_but_never_current_or_previous(host):
    rels = []
    for i in range(4):
        rel = host.release("v1.0.%d" % i, {"runc": _real(RUNC) + bytes([i])}, _real(EXE_V1))
        dummy, r = install(host, rel, keep_releases=1)
        rels.append(r["release_id"])
    assert sorted(os.listdir(host.store / "releases")) == sorted(rels[2:])
    assert os.readlink(host.store / "previous") == "releases/" + rels[2]
    rel = host.release("v1.0.9", {"runc": _real(RUNC) + b"9"}, _real(EXE_V1))
    dummy, r = install(host, rel, keep_releases=2)
    assert r["pruned"] == []
    assert sorted(os.listdir(host.store / "releases")) == sorted(rels[2:] + [r["release_id"]])
    rel = host.release("v1.0.10", {"runc": _real(RUNC) + b"10"}, _real(EXE_V1))
    dummy, r4 = install(host, rel, keep_releases=2)
    assert r4["pruned"] == [rels[2]]


def test_check_mode_changes_nothing(host, v1, v2):
    host.upload(v1)
    before = host.snapshot()
    r = host.run("present", v1, check=True, diff=True)
    assert r["changed"] and r["built"]
    assert "runc: %s" % v1["files"][0]["sha256"] in r["diff"]["after"]
    assert host.snapshot() == before
    assert not host.store.exists()
    dummy, r1 = install(host, v1)
    host.upload(v2)
    before = host.snapshot()
    r = host.run("present", v2, check=True, diff=True)
    assert r["changed"] and r["current_release"] == r1["release_id"]
    assert "runc: %s" % spec(_real(RUNC))["sha256"] in r["diff"]["before"]
    assert "runc: %s" % spec(_real(OTHER))["sha256"] in r["diff"]["after"]
    assert host.snapshot() == before


# --------------------------------------------------------------------------- safety

def test_refuses_symlinked_store_directory(host, v1, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    host.store.mkdir(parents=True)
    os.symlink(elsewhere, host.store / "releases")
    host.upload(v1)
    bad = host.run("present", v1, expect_fail=True)
    assert "symlink" in bad["msg"] and str(host.store / "releases") in bad["msg"]
    assert os.listdir(elsewhere) == []


def test_refuses_foreign_symlink_in_path(host, v1, tmp_path):
    real = tmp_path / "realdata"
    real.mkdir()
    os.symlink(real, host.data)
    os.lchown(host.data, 65534, 65534)   # a symlink some other user planted
    host.upload(v1)
    bad = host.run("present", v1, expect_fail=True)
    assert "symlink owned by uid 65534" in bad["msg"], bad["msg"]
    assert os.listdir(real) == []


@pytest.mark.parametrize("mode,uid", [(0o777, 0), (0o1777, 65534), (0o755, 65534)])
def test_refuses_unsafe_directories(host, v1, mode, uid):
    parent = host.store.parent
    os.chown(parent, uid, 0)
    os.chmod(parent, mode)
    host.upload(v1)
    bad = host.run("present", v1, expect_fail=True)
    assert str(parent) in bad["msg"]
    assert ("world-writable" in bad["msg"]) if uid == 0 else ("owned by uid %d" % uid in bad["msg"])
    assert not host.store.exists()


def test_refuses_foreign_data_dir_link(host, v1, tmp_path):
    (host.data / "bin").mkdir(parents=True)
    os.symlink("/usr/bin/true", host.data / "bin/runc")
    host.upload(v1)
    bad = host.run("present", v1, expect_fail=True)
    assert str(host.data / "bin/runc") in bad["msg"] and "did not create" in bad["msg"]
    assert not (host.store / "current").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "nul\x00", "..", ".hidden", "k0s"])
def test_refuses_bad_names(host, name):
    rel = host.release("v1", {name: b"x"}, b"y")
    bad = host.run("query", rel, expect_fail=True)
    assert "name" in bad["msg"]


def test_existing_files_are_moved_aside_not_deleted(host, v1):
    (host.bin / "k0s").write_bytes(b"an old full k0s")
    host.libexec.mkdir(parents=True)
    (host.libexec / "mine").write_bytes(b"user data")
    (host.data / "bin").mkdir(parents=True)
    (host.data / "bin/runc").write_bytes(_real(RUNC))   # what a full k0s staged
    q = host.run("query", v1)
    # The staged runc is identical content: no need to upload it.
    assert q["missing"] == ["k0s", "xtables-nft-multi"]
    host.upload(v1, q["missing"])
    r = host.run("present", v1)
    assert r["sources"]["runc"] == "copy"
    assert set(r["backups"]) == {str(host.bin / "k0s")}
    assert Path(r["backups"][str(host.bin / "k0s")]).read_bytes() == b"an old full k0s"
    # <libexec_dir> is a real directory: what is not one of the binaries stays (kubelet plugins and the like).
    assert (host.libexec / "mine").read_bytes() == b"user data"
    assert r["replaced_staged"] == [str(host.data / "bin/runc")]
    host.assert_installed(v1, r["release_id"])
    assert host.run("present", v1)["changed"] is False


def test_module_migrates_the_libexec_symlink_keeping_kubelet_plugins_and_repairs_drift(host, v1):
    """Issue 13 through the module: a host of the old layout (<libexec_dir> a symlink into the current release)
    with Calico's flex volume driver written through it, k0s's iptables links, then a copied /usr/bin/k0s."""
    dummy, r = install(host, v1)
    rid = r["release_id"]
    shutil.rmtree(host.libexec)
    host.libexec.symlink_to(host.store / "current/libexec")
    plugin = host.libexec / "kubelet-plugins/volume/exec/nodeagent~uds/uds"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"driver")
    for name in ("iptables", "ip6tables-save"):
        (host.data / "bin" / name).symlink_to("xtables-nft-multi")
    c = host.run("present", v1, check=True, diff=True)
    assert c["changed"] and c["runtime_moved"] == ["kubelet-plugins"] and host.libexec.is_symlink()
    r = host.run("present", v1)
    assert r["changed"] and r["runtime_moved"] == ["kubelet-plugins"] and r["backups"] == {}
    assert not host.libexec.is_symlink() and plugin.read_bytes() == b"driver"
    host.assert_installed(v1, rid)
    assert os.readlink(host.data / "bin/iptables") == "xtables-nft-multi"
    assert host.run("present", v1)["changed"] is False
    (host.bin / "k0s").unlink()
    (host.bin / "k0s").write_bytes(b"copied by hand")
    q = host.run("query", v1)
    assert q["up_to_date"] is False and list(q["drift"]) == [str(host.bin / "k0s")]
    r = host.run("present", v1)
    assert Path(r["backups"][str(host.bin / "k0s")]).read_bytes() == b"copied by hand"
    host.assert_installed(v1, rid)
    assert plugin.read_bytes() == b"driver" and host.run("query", v1)["up_to_date"] is True


# --------------------------------------------------------------------------- legacy mtime

def test_legacy_pinned_mtime(host, v1, v2):
    pinned = 1700000000
    dummy, r1 = install(host, v1, pinned_mtime=pinned)
    rd = host.rdir(r1["release_id"])
    for rel in ["bin/k0s", "libexec/runc", "libexec/xtables-nft-multi"]:
        assert os.stat(rd / rel).st_mtime_ns == pinned * 10**9, rel
    # Through the chain data-dir link -> libexec link -> current -> file, as a legacy k0s checks it.
    for name in ["runc", "xtables-nft-multi"]:
        assert os.stat(host.data / "bin" / name).st_mtime_ns == pinned * 10**9
    assert os.stat(host.bin / "k0s").st_mtime_ns == pinned * 10**9
    assert host.run("present", v1, pinned_mtime=pinned)["changed"] is False
    # A new release with another mtime: the shared file is copied, so the old release keeps its mtime.
    dummy, r2 = install(host, v2, pinned_mtime=pinned + 5)
    assert r2["sources"]["xtables-nft-multi"] == "copy"
    assert os.stat(rd / "libexec/xtables-nft-multi").st_mtime_ns == pinned * 10**9
    for rel in ["bin/k0s", "libexec/runc", "libexec/xtables-nft-multi"]:
        assert os.stat(host.rdir(r2["release_id"]) / rel).st_mtime_ns == (pinned + 5) * 10**9
    # Same content, same mtime as an old release: hard link.
    dummy, r3 = install(host, v1, pinned_mtime=pinned)
    assert r3["release_id"] == r1["release_id"] and r3["built"] is False


# --------------------------------------------------------------------------- one bundle instead of one file per stream

def _bundle(host, rel, names, tmp):
    """Write each named stream as a file, bundle them with the library, 'upload' the bundle next to the streams."""
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import write_bundle  # noqa: E402
    tmp.mkdir(exist_ok=True)
    streams = []
    for name in names:
        f = tmp / (name + ".gz")
        f.write_bytes(gzip.compress(rel["_content"][name], 6))
        streams.append((name, str(f)))
    b = write_bundle(streams, str(tmp / "bundles"))
    dst = host.streams / (b["id"] + ".bundle")
    shutil.copyfile(b["path"], dst)
    return dst, b


def test_bundle_installs_every_missing_stream_and_is_removed(host, v1, v2, tmp_path):
    q = host.run("query", v1)
    path, b = _bundle(host, v1, q["missing"], tmp_path / "b1")
    assert [m["name"] for m in b["members"]] == ["k0s", "runc", "xtables-nft-multi"]
    r = host.run("present", v1, bundle=str(path), bundle_members=b["members"])
    assert r["changed"] and r["built"]
    assert r["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "stream"}
    host.assert_installed(v1, r["release_id"])
    assert os.listdir(host.streams) == [], "the used bundle is removed"
    assert any("removed used bundle" in c for c in r["changes"])
    assert host.run("present", v1)["changed"] is False
    # Upgrade: only the two changed streams travel, unchanged xtables is copied from v1.
    q2 = host.run("query", v2)
    path2, b2 = _bundle(host, v2, q2["missing"], tmp_path / "b2")
    assert [m["name"] for m in b2["members"]] == ["k0s", "runc"]
    r2 = host.run("present", v2, bundle=str(path2), bundle_members=b2["members"])
    assert r2["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "copy"}
    host.assert_installed(v2, r2["release_id"])


def test_bundle_check_mode_without_upload_reports_and_writes_nothing(host, v1, tmp_path):
    q = host.run("query", v1)
    path, b = _bundle(host, v1, q["missing"], tmp_path / "b")
    path.unlink()   # check mode never uploads
    r = host.run("present", v1, check=True, diff=True, bundle=str(path), bundle_members=b["members"])
    assert r["changed"] and r["built"]
    assert "runc: " in r["diff"]["after"]
    assert not host.store.exists()


def test_truncated_bundle_fails_clearly_and_switches_nothing(host, v1, v2, tmp_path):
    dummy, r1 = install(host, v1)
    before = host.snapshot()
    q = host.run("query", v2)
    path, b = _bundle(host, v2, q["missing"], tmp_path / "b")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 1000])
    bad = host.run("present", v2, expect_fail=True, bundle=str(path), bundle_members=b["members"])
    assert "does not match its member table" in bad["msg"] and "truncated" in bad["msg"], bad["msg"]
    assert "nothing was switched" in bad["msg"]
    host.assert_installed(v1, r1["release_id"])
    assert sorted(os.listdir(host.store / "releases")) == [r1["release_id"]]
    after = host.snapshot()
    for snap in (before, after):
        snap.pop(str(host.streams))
    after.pop(str(path))
    assert {k: v for k, v in after.items() if not k.endswith("/.lock")} == \
        {k: v for k, v in before.items() if not k.endswith("/.lock")}
    # The complete upload (what copy's checksum compare would send again) then works.
    shutil.copyfile(b["path"], path)
    r2 = host.run("present", v2, bundle=str(path), bundle_members=b["members"])
    host.assert_installed(v2, r2["release_id"])


def test_bundle_member_table_mismatch_is_refused(host, v1, tmp_path):
    q = host.run("query", v1)
    path, b = _bundle(host, v1, q["missing"], tmp_path / "b")
    m = b["members"]
    # A gap or overlap: the table does not tile the bundle.
    shifted = [dict(m[0])] + [dict(x, offset=x["offset"] + 1) for x in m[1:]]
    bad = host.run("present", v1, expect_fail=True, bundle=str(path), bundle_members=shifted)
    assert "does not tile the bundle" in bad["msg"], bad["msg"]
    # A member the release does not have.
    foreign = [dict(x) for x in m]
    foreign[1]["name"] = "etcd"
    bad = host.run("present", v1, expect_fail=True, bundle=str(path), bundle_members=foreign)
    assert "not part of release" in bad["msg"] and "etcd" in bad["msg"], bad["msg"]
    # Names swapped between two members of equal tiling: the content check catches it.
    swapped = [dict(x) for x in m]
    swapped[0]["name"], swapped[1]["name"] = m[1]["name"], m[0]["name"]
    swapped[0]["size"], swapped[1]["size"] = m[0]["size"], m[1]["size"]
    bad = host.run("present", v1, expect_fail=True, bundle=str(path), bundle_members=swapped)
    assert "unusable" in bad["msg"], bad["msg"]
    assert not (host.store / "current").exists()
    assert os.listdir(host.store / "releases") == [], "the temp release dir is removed"
    # Members without the bundle argument, or the other way round, are refused by the argument spec.
    bad = host.run("present", v1, expect_fail=True, bundle=str(path))
    assert "bundle_members" in bad["msg"]
    # The bundle is still there and right: the correct table installs.
    r = host.run("present", v1, bundle=str(path), bundle_members=m)
    host.assert_installed(v1, r["release_id"])


def test_stream_bundle_module_caches_and_shares(tmp_path):
    load_fixtures()
    res = _split("k0s-small-zip", tmp_path / "split")
    module = REPO / "plugins" / "modules" / "stream_bundle.py"

    def run(names, check=False, expect_fail=False):
        argfile = tmp_path / "args.json"
        argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(split=res, names=names, _ansible_check_mode=check)}))
        p = subprocess.run([sys.executable, str(module), str(argfile)], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)
        out = json.loads(p.stdout)
        assert bool(out.get("failed")) == expect_fail, out
        return out

    names = sorted(f["name"] for f in res["files"][:2]) + ["k0s"]
    dry = run(list(reversed(names)), check=True)
    assert dry["changed"] and not os.path.exists(dry["path"])
    a = run(list(reversed(names)))
    assert a["changed"] and a["path"] == str(tmp_path / "split" / "bundles" / (a["id"] + ".bundle"))
    assert (a["id"], a["sha256"], a["size"]) == (dry["id"], dry["sha256"], dry["size"])
    data = Path(a["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == a["sha256"] and len(data) == a["size"]
    streams = dict((f["name"], f["stream"]) for f in res["files"])
    streams["k0s"] = res["stripped_executable"]["stream"]
    assert [m["name"] for m in a["members"]] == sorted(names)
    for m in a["members"]:
        assert data[m["offset"]:m["offset"] + m["size"]] == Path(streams[m["name"]]).read_bytes(), m["name"]
    ino = os.stat(a["path"]).st_ino
    b = run(names)   # same set in another order: same bundle, not rewritten
    assert not b["changed"] and b["id"] == a["id"] and os.stat(a["path"]).st_ino == ino
    c = run(names[:1])
    assert c["id"] != a["id"] and c["size"] == os.path.getsize(streams[names[0]])
    bad = run(["nope"], expect_fail=True)
    assert "'nope' is not in the split result" in bad["msg"]
    bad = run([], expect_fail=True)
    assert "nothing to bundle" in bad["msg"]


# --------------------------------------------------------------------------- the fixture k0s, run for real

def _split(name, out):
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import split  # noqa: E402
    return split(str(FIXTURES / name), stripped_executable=str(out / "k0s.stripped"),
                 streams_dest=str(out / "streams"))


def _release_from_split(res):
    files = [dict(name=f["name"], size=f["size"], sha256=f["sha256"], crc32=f["crc32"]) for f in res["files"]]
    exe = res["stripped_executable"]
    return dict(k0s_version=res["k0s_version"], files=files,
                executable=dict(size=exe["size"], sha256=exe["sha256"], crc32=exe["crc32"]))


def _upload_split(host, res, missing):
    for f in res["files"]:
        if f["name"] in missing:
            shutil.copyfile(f["stream"], host.streams / (f["name"] + ".gz"))
    if "k0s" in missing:
        shutil.copyfile(res["stripped_executable"]["stream"], host.streams / "k0s.gz")


def _stage(host):
    p = subprocess.run([str(host.bin / "k0s"), "stage", "--data-dir", str(host.data)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, "k0s stage failed: %s %s" % (p.stdout, p.stderr)
    return json.loads(p.stdout)


@pytest.mark.parametrize("first,second", [("k0s-small-zip", None), ("k0s-small-legacy", None),
                                          ("k0s-zip", "k0s-zip-v2"), ("k0s-legacy", "k0s-legacy-v2")])
def test_fixture_k0s_stage_finds_installed_binaries(host, tmp_path, first, second):
    load_fixtures()
    for name in [first] + ([second] if second else []):
        res = _split(name, tmp_path / ("split-" + name))
        rel = _release_from_split(res)
        pinned = res["pinned_mtime"] if res["format"] == "legacy" else None
        q = host.run("query", rel, pinned_mtime=pinned)
        _upload_split(host, res, q["missing"])
        r = host.run("present", rel, pinned_mtime=pinned)
        assert r["changed"]
        staged = _stage(host)
        assert staged["format"] == res["format"]
        assert staged["version"] == res["k0s_version"]
        want = dict((f["name"], f["sha256"]) for f in res["files"])
        assert sorted(staged["binaries"]) == sorted(want)
        for bname, info in staged["binaries"].items():
            assert info["sha256"] == want[bname], bname
            assert info["realpath"] == str(host.rdir(r["release_id"]) / "libexec" / bname), info
        assert host.run("present", rel, pinned_mtime=pinned)["changed"] is False


# --------------------------------------------------------------------------- the role, through ansible-playbook

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: fleetsplit.k0s.install
  post_tasks:
    - name: Record the fact for the test
      ansible.builtin.copy:
        content: "{{ {'changed': k0s_binaries_changed} | to_json }}"
        dest: "{{ result_file }}"
      check_mode: false
"""


def _playbook(host, tmp_path, k0s_split, check=False, **extra):
    pb = tmp_path / "play.yml"
    pb.write_text(PLAYBOOK)
    result_file = tmp_path / "result.json"
    ev = dict(k0s_split=k0s_split, k0s_store_dir=str(host.store), k0s_bin_dir=str(host.bin),
              k0s_libexec_dir=str(host.libexec), k0s_data_dir=str(host.data), result_file=str(result_file))
    ev.update(extra)
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    p, dummy = run_playbook(["-i", "localhost,", "-c", "local", "-e", "@%s" % (tmp_path / "ev.json"),
                             "-e", "ansible_python_interpreter=%s" % sys.executable, pb] + (["--check"] if check else []))
    m = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    return p, int(m.group(2)), int(m.group(4)), (json.loads(result_file.read_text()) if result_file.exists() else None)


def test_role_installs_idempotently_and_checks_arch(host, tmp_path):
    load_fixtures()
    res = _split("k0s-small-zip", tmp_path / "split")
    # Check mode on a fresh host: reports changes, writes nothing.
    p, changed, failed, dummy = _playbook(host, tmp_path, res, check=True)
    assert failed == 0 and changed > 0, p.stdout
    assert not host.store.exists() and not (host.bin / "k0s").exists()
    p, changed, failed, out = _playbook(host, tmp_path, res)
    assert failed == 0, p.stdout
    assert out == {"changed": True}
    staged = _stage(host)
    assert sorted(staged["binaries"]) == sorted(f["name"] for f in res["files"])
    # Re-run: no upload, no change (the result file task is the only one that may report changed).
    (tmp_path / "result.json").unlink()
    p, changed, failed, out = _playbook(host, tmp_path, res)
    assert failed == 0 and changed == 1 and out == {"changed": False}, p.stdout
    # The query (a dry run of present) found nothing to do, so present itself does not run.
    assert re.search(re.escape("Upload, build and switch (or only build, with k0s_install_switch=false)")
                     + r"\] \*+\nskipping: \[localhost\]", p.stdout), p.stdout
    assert _no_uploads_left(host)
    # Upgrade to another k0s (legacy format), then roll back through the role; a re-run keeps it rolled back.
    res2 = _split("k0s-small-legacy", tmp_path / "split2")
    p, changed, failed, out = _playbook(host, tmp_path, res2)
    assert failed == 0 and out == {"changed": True}, p.stdout
    assert _stage(host)["format"] == "legacy"
    p, changed, failed, out = _playbook(host, tmp_path, res2, k0s_rollback=True)
    assert failed == 0 and out == {"changed": True}, p.stdout
    assert _stage(host)["format"] == "zip"
    p, changed, failed, out = _playbook(host, tmp_path, res2, k0s_rollback=True)
    assert failed == 0 and out == {"changed": False}, p.stdout
    # Wrong architecture: fails naming the host and both architectures, installs nothing new.
    wrong = dict(res, elf_machine="aarch64")
    p, changed, failed, dummy = _playbook(host, tmp_path, wrong)
    assert failed == 1 and "localhost is x86_64" in p.stdout and "aarch64" in p.stdout, p.stdout


STAGED_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: fleetsplit.k0s.install
      vars:
        k0s_install_switch: false
    - name: Record what was staged
      ansible.builtin.copy:
        content: "{{ {'missing': k0s_install_query.missing,
                      'releases': lookup('ansible.builtin.pipe', 'ls ' ~ k0s_store_dir ~ '/releases'),
                      'current': lookup('ansible.builtin.pipe', 'test -e ' ~ k0s_store_dir ~ '/current && echo yes || echo no')} | to_json }}"
        dest: "{{ staged_file }}"
      check_mode: false
    - ansible.builtin.include_role:
        name: fleetsplit.k0s.install
        tasks_from: switch.yml
    - name: Record the fact for the test
      ansible.builtin.copy:
        content: "{{ {'changed': k0s_binaries_changed} | to_json }}"
        dest: "{{ result_file }}"
      check_mode: false
"""


def test_role_stage_then_switch_uses_the_bundle(host, tmp_path):
    load_fixtures()
    res = _split("k0s-small-zip", tmp_path / "split")
    pb = tmp_path / "staged.yml"
    pb.write_text(STAGED_PLAYBOOK)
    staged = tmp_path / "staged.json"
    result_file = tmp_path / "result.json"
    ev = dict(k0s_split=res, k0s_store_dir=str(host.store), k0s_bin_dir=str(host.bin),
              k0s_libexec_dir=str(host.libexec), k0s_data_dir=str(host.data), result_file=str(result_file),
              staged_file=str(staged))
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    p, dummy = run_playbook(["-i", "localhost,", "-c", "local", "-e", "@%s" % (tmp_path / "ev.json"),
                             "-e", "ansible_python_interpreter=%s" % sys.executable, pb])
    assert "failed=0" in p.stdout, p.stdout + p.stderr
    st = json.loads(staged.read_text())
    # Between the two steps the release is uploaded and built, but nothing is switched yet.
    assert sorted(st["missing"]) == sorted([f["name"] for f in res["files"]] + ["k0s"])
    assert re.match(r"^v[0-9.]+.*-[0-9a-f]{12}$", st["releases"]) and st["current"] == "no", st
    assert json.loads(result_file.read_text()) == {"changed": True}
    assert sorted(_stage(host)["binaries"]) == sorted(f["name"] for f in res["files"])
    assert _no_uploads_left(host)


def _no_uploads_left(host):
    """No stream or bundle stays behind on the host, nor in Ansible's remote temporary directory."""
    incoming = host.store / "incoming"
    left = list(incoming.iterdir()) if incoming.exists() else []
    tmp = Path(os.path.expanduser("~/.ansible/tmp"))
    left += list(tmp.rglob("*.bundle")) if tmp.exists() else []
    return left == []


# --------------------------------------------------------------------------- issue 12: the real module and roles

def test_module_prune_failure_after_the_switch_is_a_warning(host, v1, v2):
    dummy, r1 = install(host, v1)
    dummy, r2 = install(host, v2)
    v3 = host.release("v1.0.2", {"runc": _real(OTHER), "xtables-nft-multi": _real(XT)}, _real(EXE_V1))
    pinned = host.rdir(r1["release_id"]) / "libexec" / "runc"
    subprocess.run(["chattr", "+i", str(pinned)], check=True)   # v1 must be pruned but cannot be removed
    try:
        dummy, r3 = install(host, v3, keep_releases=1)
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
    assert r3["changed"] and r3["binaries_changed"] and r3["pruned"] == []
    # ansible-core 2.19 returns warnings as structured events; the text is what counts.
    assert ("pruning old release %s failed" % host.rdir(r1["release_id"])) in json.dumps(r3["warnings"]), r3["warnings"]
    host.assert_installed(v3, r3["release_id"])
    assert os.readlink(host.store / "previous") == "releases/" + r2["release_id"]


@pytest.mark.parametrize("args,words", [
    (lambda h: dict(libexec_dir=str(h.data / "bin")), ["k0s_libexec_dir=", "k0s_data_dir=", "overlap"]),
    (lambda h: dict(libexec_dir=str(h.bin)), ["k0s_libexec_dir=", "k0s_bin_dir=", "overlap"]),
    (lambda h: dict(libexec_dir=str(h.libexec) + "\n[Service]"), ["k0s_libexec_dir", "control character"]),
    (lambda h: dict(data_dir=str(h.data) + "/../k0s"), ["k0s_data_dir", "must not contain '.' or '..' components"]),
    (lambda h: dict(bin_dir=str(h.bin) + "/"), ["k0s_bin_dir", "must be a normalised path"]),
    (lambda h: dict(keep_backups=0), ["keep_backups must be at least 1"]),
])
@pytest.mark.parametrize("state", ["query", "present"])
def test_module_refuses_bad_and_overlapping_paths(host, v1, args, words, state):
    host.upload(v1)
    before = host.snapshot()
    res = host.run(state, v1, expect_fail=True, **args(host))
    for w in words:
        assert w in res["msg"], res["msg"]
    assert host.snapshot() == before


def test_role_refuses_overlapping_paths_before_writing(host, tmp_path):
    load_fixtures()
    res = _split("k0s-small-zip", tmp_path / "split")
    p, changed, failed, out = _playbook(host, tmp_path, res, k0s_libexec_dir=str(host.data / "bin"))
    assert failed == 1 and out is None, p.stdout
    assert "k0s_libexec_dir=%s and k0s_data_dir=%s overlap" % (host.data / "bin", host.data) in p.stdout, p.stdout
    assert not host.store.exists() and not (host.data / "bin").exists()


def test_role_under_umask_0_creates_private_enough_directories_and_reruns(host, tmp_path):
    load_fixtures()
    res = _split("k0s-small-zip", tmp_path / "split")
    data = host.root / "srv/k0s/data"   # parents the module creates itself
    old = os.umask(0)   # inherited by ansible-playbook and the module it runs
    try:
        p, changed, failed, out = _playbook(host, tmp_path, res, k0s_data_dir=str(data))
        assert failed == 0 and out == {"changed": True}, p.stdout
        p, changed, failed, out = _playbook(host, tmp_path, res, k0s_data_dir=str(data))
        assert failed == 0 and out == {"changed": False}, p.stdout
    finally:
        os.umask(old)
    for d in (host.store, host.store / "releases", host.root / "srv", host.root / "srv/k0s", data, data / "bin",
              host.libexec.parent):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o755, d
    for rid in os.listdir(host.store / "releases"):
        for sub in ("", "bin", "libexec"):
            assert stat.S_IMODE(os.lstat(host.rdir(rid) / sub).st_mode) == 0o755


# The upgrade role's recovery, on a real store: the switch task is reported failed although it switched
# (what a present that failed while pruning did), and the decision reads the host's `current`.
RECOVERY_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Stage the target (the upgrade role does this first)
      ansible.builtin.include_role:
        name: fleetsplit.k0s.install
      vars:
        k0s_install_switch: false
    - block:
        - name: Switch, reported failed after the switch happened
          fleetsplit.k0s.k0s_release: "{{ __k0s_release_args | combine({'state': 'present'}) }}"
          failed_when: fail_after_switch | bool
          when: switch | bool
        - name: A gate fails
          ansible.builtin.fail:
            msg: gate failed
      rescue:
        - name: The upgrade role's decision
          ansible.builtin.include_role:
            name: fleetsplit.k0s.upgrade
            tasks_from: switched.yml
        - name: Roll back as the upgrade role does when switched
          ansible.builtin.include_role:
            name: fleetsplit.k0s.install
          vars:
            k0s_rollback: true
          when: _k0s_upgrade_switched | bool
    - name: Record the decision
      ansible.builtin.copy:
        content: "{{ {'switched': _k0s_upgrade_switched, 'now': _k0s_upgrade_current_now} | to_json }}"
        dest: "{{ result_file }}"
"""


@pytest.mark.parametrize("switch", [True, False])
def test_upgrade_recovery_decides_from_the_hosts_current(host, tmp_path, switch):
    load_fixtures()
    res1 = _split("k0s-small-zip", tmp_path / "split1")
    res2 = _split("k0s-small-legacy", tmp_path / "split2")
    p, changed, failed, out = _playbook(host, tmp_path, res1)
    assert failed == 0, p.stdout
    before = os.readlink(host.store / "current")
    pb = tmp_path / "recovery.yml"
    pb.write_text(RECOVERY_PLAYBOOK)
    ev = dict(k0s_split=res2, k0s_store_dir=str(host.store), k0s_bin_dir=str(host.bin),
              k0s_libexec_dir=str(host.libexec), k0s_data_dir=str(host.data), result_file=str(tmp_path / "r.json"),
              fail_after_switch=True, switch=switch)
    (tmp_path / "ev2.json").write_text(json.dumps(ev))
    p, dummy = run_playbook(["-i", "localhost,", "-c", "local", "-e", "@%s" % (tmp_path / "ev2.json"),
                             "-e", "ansible_python_interpreter=%s" % sys.executable, pb])
    assert "failed=0" in p.stdout, p.stdout + p.stderr
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["switched"] is switch, out
    # Either way the host ends on the release it ran before.
    assert os.readlink(host.store / "current") == before
    assert _stage(host)["format"] == "zip"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (a private mount)")
def test_read_only_bin_dir_is_refused_before_any_change(host, v1):
    """A merged sysext makes /usr read-only: query and present refuse it, naming the directory, and nothing is
    written (the release store included)."""
    host.bin.mkdir(parents=True, exist_ok=True)
    ro = ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
          'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"', "sh", str(host.bin)]
    before = host.snapshot()
    for state in ("query", "present"):
        res = host.run(state, v1, expect_fail=True, wrap=ro)
        assert "read-only mount" in res["msg"] and str(host.bin) in res["msg"], res["msg"]
    assert host.snapshot() == before
    assert not host.store.exists()
