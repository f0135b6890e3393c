"""The release store, planner and builder/switcher of k0s_release, used directly (no Ansible, no module run).

Everything lives in real temporary directories; streams are real gzip members of real executables (the
fixtures' runc and xtables, /bin/ls, /bin/cat, /bin/cp).
"""
import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
import zlib

import pytest

from testlib import COLLECTIONS, FIXTURES, load_fixtures, tree_snapshot
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_build as rb
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_plan as rp
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_store as rs
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError


def _read(path):
    with open(str(path), "rb") as f:
        return f.read()


def _first(*cands):
    return next(c for c in cands if os.path.isfile(c))


load_fixtures()
RUNC = _read(FIXTURES / "bins" / "runc")
XT = _read(FIXTURES / "bins" / "xtables-nft-multi")
LS = _read(_first("/bin/ls", "/usr/bin/ls"))
CAT = _read(_first("/bin/cat", "/usr/bin/cat"))
CP = _read(_first("/bin/cp", "/usr/bin/cp"))


def spec(data):
    return dict(size=len(data), sha256=hashlib.sha256(data).hexdigest(), crc32=zlib.crc32(data))


class Host(object):
    """A relocated host (every directory of the store under one temp root) and the releases it gets."""

    def __init__(self, root):
        self.root = str(root)
        self.store = os.path.join(self.root, "var/lib/fleetsplit-k0s")
        self.bin = os.path.join(self.root, "usr/bin")
        self.libexec = os.path.join(self.root, "usr/libexec/k0s")
        self.data = os.path.join(self.root, "var/lib/k0s")
        self.streams = os.path.join(self.root, "incoming")
        for d in (self.bin, self.streams, os.path.dirname(self.data)):
            os.makedirs(d)

    @staticmethod
    def release(version, bins, exe):
        files = [dict(name=n, **spec(d)) for n, d in sorted(bins.items())]
        return dict(k0s_version=version, files=files, executable=spec(exe), content=dict(bins, k0s=exe))

    def params(self, rel=None, **kw):
        p = dict(state="present", release_id=None, k0s_version=None, files=None, executable=None,
                 streams_dir=self.streams, bundle=None, bundle_members=None, switch=True, store_dir=self.store,
                 bin_dir=self.bin, libexec_dir=self.libexec, data_dir=self.data, link_data_dir=True,
                 pinned_mtime=None, keep_releases=2, keep_backups=3, verify=False, selinux_relabel=True)
        if rel is not None:
            p.update(k0s_version=rel["k0s_version"], files=rel["files"], executable=rel["executable"])
        p.update(kw)
        return p

    def upload(self, rel, names=None):
        for name, data in rel["content"].items():
            if names is None or name in names:
                with open(os.path.join(self.streams, name + ".gz"), "wb") as f:
                    f.write(gzip.compress(data, 6))

    def run(self, state, rel=None, check=False, diff=False, **kw):
        return rb.Runner(self.params(rel, state=state, **kw), check_mode=check, diff=diff).run()

    def install(self, rel, **kw):
        q = self.run("query", rel, **kw)
        self.upload(rel, q["missing"])
        return self.run("present", rel, **kw)

    def rdir(self, rid):
        return os.path.join(self.store, "releases", rid)

    def pointer(self, name):
        return os.readlink(os.path.join(self.store, name))

    def assert_installed(self, rel, rid):
        assert self.pointer("current") == "releases/" + rid
        assert _read(os.path.join(self.bin, "k0s")) == rel["content"]["k0s"]
        assert os.path.realpath(os.path.join(self.bin, "k0s")) == os.path.join(self.rdir(rid), "bin/k0s")
        for name, data in rel["content"].items():
            if name != "k0s":
                assert _read(os.path.join(self.data, "bin", name)) == data, name
                assert os.readlink(os.path.join(self.data, "bin", name)) == os.path.join(self.libexec, name)
        assert stat.S_ISDIR(os.lstat(self.libexec).st_mode), "a real directory, not a link into a release"
        for name in rel["content"]:
            if name != "k0s":
                assert os.readlink(os.path.join(self.libexec, name)) == os.path.join(self.store, "current/libexec",
                                                                                     name)
        assert sorted(os.listdir(os.path.join(self.rdir(rid), "libexec"))) == \
            sorted(n for n in rel["content"] if n != "k0s")


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path / "root")


@pytest.fixture
def v1():
    return Host.release("v1.0.0", {"runc": RUNC, "xtables-nft-multi": XT}, LS)


@pytest.fixture
def v2():
    return Host.release("v1.0.1", {"runc": CP, "xtables-nft-multi": XT}, CAT)


# --------------------------------------------------------------------------- ids and items

def test_items_and_release_id(v1):
    items = rs.build_items(v1["files"], v1["executable"])
    assert sorted(items) == ["bin/k0s", "libexec/runc", "libexec/xtables-nft-multi"]
    assert items["bin/k0s"].name == "k0s" and items["libexec/runc"].stream == "runc.gz"
    rid = rs.compute_release_id(items, "v1.36.3+k0s.0", None)
    assert rid.startswith("v1.36.3+k0s.0-") and len(rid) == len("v1.36.3+k0s.0-") + 12
    assert rs.compute_release_id(items, "v1.36.3+k0s.0", None) == rid
    assert rs.compute_release_id(items, "v1.36.3+k0s.0", 1700000000) != rid, "another mtime is another release"
    assert rs.compute_release_id(items, None, None).startswith("unknown-")
    assert rs.compute_release_id(items, "v1 / x", None).startswith("v1___x-")
    assert rs.check_release_id(rid) == rid


@pytest.mark.parametrize("rid", ["", ".", "..", ".hidden", "a/b", "a b", "x\x00", None])
def test_bad_release_ids_are_refused(rid):
    with pytest.raises(rs.ReleaseError, match="invalid release_id"):
        rs.check_release_id(rid)


@pytest.mark.parametrize("name", ["../evil", "a/b", "nul\x00", "..", ".hidden", "k0s", "", 7])
def test_bad_names_are_refused(name, v1):
    with pytest.raises(rs.ReleaseError, match="name"):
        rs.build_items([dict(name=name, **spec(b"x"))], v1["executable"])


@pytest.mark.parametrize("change,message", [
    (dict(sha256="abc"), "sha256 must be 64 hex digits"), (dict(size=-1), "size must not be negative"),
    (dict(size=True), "size must be an integer"), (dict(crc32="x"), "crc32 must be an integer")])
def test_bad_file_records_are_refused(change, message, v1):
    bad = dict(v1["files"][0], **change)
    with pytest.raises(rs.ReleaseError, match=message):
        rs.build_items([bad], v1["executable"])
    with pytest.raises(rs.ReleaseError, match="listed twice"):
        rs.build_items(v1["files"] + v1["files"][:1], v1["executable"])


# --------------------------------------------------------------------------- the store and file states

def test_store_pointers_releases_and_manifests(host):
    s = rs.Store(host.params())
    assert s.pointer(s.current_link) is None and s.list_releases() == []
    os.makedirs(os.path.join(s.releases, "r1"))
    os.makedirs(os.path.join(s.releases, ".r2.tmp-abc"))
    with open(os.path.join(s.releases, "file"), "w") as f:
        f.write("x")
    assert s.list_releases() == ["r1"]
    assert s.manifest("r1") is None
    with open(os.path.join(s.release_dir("r1"), rs.MANIFEST), "w") as f:
        f.write("{not json")
    assert s.manifest("r1") is None
    with open(os.path.join(s.release_dir("r1"), rs.MANIFEST), "w") as f:
        json.dump({"files": {}}, f)
    assert s.manifest("r1") == {"files": {}}
    os.symlink("releases/r1", s.current_link)
    assert s.pointer(s.current_link) == "r1"
    os.symlink("/etc", s.previous_link)
    with pytest.raises(rs.ReleaseError, match="fleetsplit did not write"):
        s.pointer(s.previous_link)
    os.unlink(s.previous_link)
    os.mkdir(s.previous_link)
    with pytest.raises(rs.ReleaseError, match="should be a symlink"):
        s.pointer(s.previous_link)


def test_file_state_kinds(tmp_path):
    path = str(tmp_path / "f")
    sha = hashlib.sha256(RUNC).hexdigest()
    assert rp.file_state(path, len(RUNC), sha, None, False) == "missing"
    os.mkdir(path)
    assert rp.file_state(path, len(RUNC), sha, None, False) == "not a regular file"
    os.rmdir(path)
    with open(path, "wb") as f:
        f.write(RUNC)
    assert rp.file_state(path, len(RUNC), sha, None, False) is None
    assert rp.file_state(path, len(RUNC) + 1, sha, None, False).startswith("size ")
    assert rp.file_state(path, len(RUNC), sha, None, False, mtime_ns=5).startswith("mtime ")
    # Same size and mtime, other content: a matching manifest record is trusted, verify re-hashes.
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"\x00\x01")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    record = dict(sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns)
    assert rp.file_state(path, len(RUNC), sha, record, False) is None
    assert rp.file_state(path, len(RUNC), sha, record, True) == "sha256 mismatch"
    assert rp.file_state(path, len(RUNC), sha, None, False) == "sha256 mismatch"


def test_planner_finds_content_already_on_the_host(host, v1, v2):
    s = rs.Store(host.params())
    items = rs.build_items(v1["files"], v1["executable"])
    pl = rp.Planner(s, items, "r1", None, False, True)
    problems, missing = pl.missing()
    assert set(problems.values()) == {"new"} and missing == ["k0s", "runc", "xtables-nft-multi"]
    # A copy a full k0s staged in <data_dir>/bin counts (copy only, never linked).
    os.makedirs(os.path.join(host.data, "bin"))
    with open(os.path.join(host.data, "bin", "runc"), "wb") as f:
        f.write(RUNC)
    pl = rp.Planner(s, items, "r1", None, False, True)
    assert pl.missing()[1] == ["k0s", "xtables-nft-multi"]
    assert pl.host_sources(items["libexec/runc"]) == [(os.path.join(host.data, "bin", "runc"), False)]
    assert [a for dummy, p, t, a in pl.link_plan() if p == os.path.join(host.data, "bin", "runc")] == \
        ["replace staged file"]
    # Content of a release in the store can be linked.
    r1 = host.install(v1)
    items2 = rs.build_items(v2["files"], v2["executable"])
    pl = rp.Planner(s, items2, "r2", None, False, True)
    assert pl.missing()[1] == ["k0s", "runc"]
    assert pl.host_sources(items2["libexec/xtables-nft-multi"]) == [
        (os.path.join(host.rdir(r1["release_id"]), "libexec/xtables-nft-multi"), True)]
    assert pl.stream_path(items2["libexec/runc"]) is None
    host.upload(v2, ["runc"])
    assert pl.stream_path(items2["libexec/runc"]) == (os.path.join(host.streams, "runc.gz"), 0, None)


# --------------------------------------------------------------------------- build, switch, query

def test_build_and_switch_then_rerun_is_up_to_date(host, v1):
    q = host.run("query", v1)
    assert q["missing"] == ["k0s", "runc", "xtables-nft-multi"] and q["up_to_date"] is False
    assert not os.path.exists(host.store), "query writes nothing"
    host.upload(v1)
    r = host.run("present", v1)
    rid = r["release_id"]
    assert r["built"] and r["binaries_changed"] and rid.startswith("v1.0.0-")
    assert r["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "stream"}
    host.assert_installed(v1, rid)
    assert os.listdir(host.streams) == [], "used streams are removed"
    man = json.loads(_read(os.path.join(host.rdir(rid), "manifest.json")).decode())
    assert man["release_id"] == rid and man["files"]["libexec/runc"]["sha256"] == spec(RUNC)["sha256"]
    for rel in ("bin/k0s", "libexec/runc"):
        assert stat.S_IMODE(os.stat(os.path.join(host.rdir(rid), rel)).st_mode) == 0o755
    # Nothing but the release and the store's own files: no temporary names left.
    assert sorted(os.listdir(os.path.join(host.store, "releases"))) == [rid]
    assert sorted(os.listdir(host.store)) == [".lock", "current", "releases"]
    q = host.run("query", v1)
    assert q["up_to_date"] is True and q["missing"] == [] and q["changes"] == []
    again = host.run("present", v1)
    assert again["changes"] == [] and again["binaries_changed"] is False


def test_switch_to_a_new_release_records_previous(host, v1, v2):
    fresh = host.run("query", v1)
    assert (fresh["current_release"], fresh["current_k0s_version"], fresh["current_manifest_readable"]) == (None, None, None)
    r1 = host.install(v1)
    q = host.run("query", v2)
    assert q["missing"] == ["k0s", "runc"], "xtables is already in the store"
    # What the version skew check of deploy_k0s reads: the current release's recorded version, before any switch.
    assert (q["current_release"], q["current_k0s_version"], q["current_manifest_readable"]) == \
        (r1["release_id"], v1["k0s_version"], True)
    host.upload(v2, q["missing"])
    r2 = host.run("present", v2, diff=True)
    # Content already on the host is copied (its own inode), never uploaded again.
    assert r2["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "copy"}
    assert os.stat(os.path.join(host.rdir(r2["release_id"]), "libexec/xtables-nft-multi")).st_ino != \
        os.stat(os.path.join(host.rdir(r1["release_id"]), "libexec/xtables-nft-multi")).st_ino
    host.assert_installed(v2, r2["release_id"])
    assert host.pointer("previous") == "releases/" + r1["release_id"]
    assert r2["current_release"] == r2["release_id"] and r2["previous_release"] == r1["release_id"]
    assert "runc: %s" % spec(RUNC)["sha256"] in r2["diff"]["before"]
    assert "runc: %s" % spec(CP)["sha256"] in r2["diff"]["after"]


def test_stage_without_switch_then_switch(host, v1, v2):
    r1 = host.install(v1)
    host.upload(v2)
    staged = host.run("present", v2, switch=False)
    assert staged["built"] and host.pointer("current") == "releases/" + r1["release_id"]
    switched = host.run("present", v2)
    assert switched["built"] is False and switched["missing"] == []
    host.assert_installed(v2, staged["release_id"])


def test_query_sees_every_kind_of_drift(host, v1):
    rid = host.install(v1)["release_id"]
    rdir = host.rdir(rid)

    def drifted(why):
        before = tree_snapshot(host.root)
        q = host.run("query", v1)
        assert q["up_to_date"] is False and q["changes"], why
        assert tree_snapshot(host.root) == before, "query changes nothing (%s)" % why
        assert host.run("present", v1)["changes"], why
        assert host.run("query", v1)["up_to_date"] is True, why

    os.chmod(os.path.join(rdir, "libexec/runc"), 0o700)
    drifted("mode")
    with open(os.path.join(rdir, "libexec/stray"), "wb") as f:
        f.write(b"x")
    drifted("extra file in the release")
    os.unlink(os.path.join(host.data, "bin/runc"))
    drifted("data-dir link removed")
    with open(os.path.join(rdir, "libexec/.runc.fleetsplit-tmp-abc123"), "wb") as f:
        f.write(b"half")
    drifted("leftover of a killed run")
    with open(os.path.join(host.streams, "runc.gz"), "wb") as f:
        f.write(b"stale")
    drifted("stale stream")
    # Damaged content is reported as corrupt and repaired from a stream.
    with open(os.path.join(rdir, "libexec/runc"), "wb") as f:
        f.write(b"garbage")
    q = host.run("query", v1)
    assert q["corrupt"] == {"runc": "size 7, expected %d" % len(RUNC)} and q["missing"] == ["runc"]
    host.upload(v1, ["runc"])
    r = host.run("present", v1)
    assert r["repaired"] == {"runc": "size 7, expected %d" % len(RUNC)} and r["binaries_changed"]
    host.assert_installed(v1, rid)
    # Same content, new mtime: nothing anyone sees changes, but manifest.json is refreshed quietly.
    os.utime(os.path.join(rdir, "libexec/runc"), ns=(1, 1))
    q = host.run("query", v1)
    assert q["up_to_date"] is False and q["changes"] == []
    assert host.run("present", v1)["changes"] == []
    assert host.run("query", v1)["up_to_date"] is True


def test_check_mode_changes_nothing(host, v1, v2):
    host.upload(v1)
    before = tree_snapshot(host.root)
    r = host.run("present", v1, check=True, diff=True)
    assert r["built"] and r["changes"] and "runc: %s" % spec(RUNC)["sha256"] in r["diff"]["after"]
    assert tree_snapshot(host.root) == before and not os.path.exists(host.store)
    r1 = host.install(v1)
    host.upload(v2)
    before = tree_snapshot(host.root)
    r = host.run("present", v2, check=True)
    assert r["changes"] and r["current_release"] == r1["release_id"]
    assert tree_snapshot(host.root) == before


def test_missing_or_corrupt_stream_switches_nothing(host, v1, v2):
    r1 = host.install(v1)
    host.upload(v2, ["k0s"])
    with pytest.raises(rs.ReleaseError, match="no stream in .* for: runc"):
        host.run("present", v2)
    with open(os.path.join(host.streams, "runc.gz"), "wb") as f:
        f.write(gzip.compress(CP[:-1]))
    with pytest.raises(rs.ReleaseError, match="stream for runc is unusable"):
        host.run("present", v2)
    assert host.pointer("current") == "releases/" + r1["release_id"]
    assert os.listdir(os.path.join(host.store, "releases")) == [r1["release_id"]], "the half build is gone"


def test_killed_runs_leave_only_temporary_names_that_are_cleaned(host, v1):
    os.makedirs(os.path.join(host.store, "releases", ".v1.tmp-abcdef"))
    with open(os.path.join(host.bin, ".k0s.fleetsplit-tmp-abcdef"), "wb") as f:
        f.write(b"half")
    r = host.install(v1)
    assert sorted(r["cleaned"]) == sorted([os.path.join(host.store, "releases", ".v1.tmp-abcdef"),
                                           os.path.join(host.bin, ".k0s.fleetsplit-tmp-abcdef")])
    assert os.listdir(host.bin) == ["k0s"]


def test_bundle_members_are_inflated_from_one_file(host, v1):
    """A bundle is gzip members back to back, cut by its member table (what stream_bundle uploads)."""
    bundle = os.path.join(host.streams, "x.bundle")
    members, offset = [], 0
    with open(bundle, "wb") as f:
        for name in ("k0s", "runc", "xtables-nft-multi"):
            data = gzip.compress(v1["content"][name])
            f.write(data)
            members.append(dict(name=name, offset=offset, size=len(data)))
            offset += len(data)
    with pytest.raises(rs.ReleaseError, match="not part of release"):
        host.run("present", v1, bundle=bundle, bundle_members=members + [dict(name="other", offset=offset, size=1)])
    os.truncate(bundle, offset - 1)
    with pytest.raises(rs.ReleaseError, match="does not match its member table"):
        host.run("present", v1, bundle=bundle, bundle_members=members)
    assert not os.path.lexists(os.path.join(host.store, "current"))
    with open(bundle, "ab") as f:
        f.write(gzip.compress(v1["content"]["xtables-nft-multi"])[-1:])
    r = host.run("present", v1, bundle=bundle, bundle_members=members)
    assert r["sources"] == {"k0s": "stream", "runc": "stream", "xtables-nft-multi": "stream"}
    assert not os.path.exists(bundle), "a used bundle is removed"
    host.assert_installed(v1, r["release_id"])


def test_existing_files_are_moved_aside_not_deleted(host, v1):
    with open(os.path.join(host.bin, "k0s"), "wb") as f:
        f.write(b"an old full k0s")
    os.makedirs(host.libexec)
    with open(os.path.join(host.libexec, "mine"), "wb") as f:
        f.write(b"user data")
    with open(os.path.join(host.libexec, "runc"), "wb") as f:
        f.write(b"an old runc")
    r = host.install(v1)
    runc = os.path.join(host.libexec, "runc")
    assert set(r["backups"]) == {os.path.join(host.bin, "k0s"), runc}
    assert _read(r["backups"][os.path.join(host.bin, "k0s")]) == b"an old full k0s"
    assert _read(r["backups"][runc]) == b"an old runc"
    # The libexec directory is real: what is not one of our binaries stays where it is.
    assert _read(os.path.join(host.libexec, "mine")) == b"user data"
    host.assert_installed(v1, r["release_id"])


def test_pinned_mtime_reaches_every_file(host, v1, v2):
    pinned = 1700000000
    r1 = host.install(v1, pinned_mtime=pinned)
    for name in ("runc", "xtables-nft-multi"):
        assert os.stat(os.path.join(host.data, "bin", name)).st_mtime_ns == pinned * 10 ** 9
    assert os.stat(os.path.join(host.bin, "k0s")).st_mtime_ns == pinned * 10 ** 9
    r2 = host.install(v2, pinned_mtime=pinned + 5)
    assert r2["sources"]["xtables-nft-multi"] == "copy", "another mtime: copied, never linked"
    assert os.stat(os.path.join(host.rdir(r1["release_id"]), "libexec/xtables-nft-multi")).st_mtime_ns == \
        pinned * 10 ** 9


# --------------------------------------------------------------------------- rollback and prune

def test_rollback_records_what_it_left(host, v1, v2):
    with pytest.raises(rs.ReleaseError, match="nothing to roll back to"):
        host.run("rollback")
    r1 = host.install(v1)
    r2 = host.install(v2)
    before = tree_snapshot(host.root)
    assert host.run("rollback", check=True)["changes"] and tree_snapshot(host.root) == before
    rb_ = host.run("rollback")
    assert rb_["release_id"] == r1["release_id"] and rb_["rolled_back_from"] == r2["release_id"]
    host.assert_installed(v1, r1["release_id"])
    assert host.pointer("previous") == "releases/" + r2["release_id"]
    record = json.loads(_read(os.path.join(host.store, "rolled-back.json")).decode())
    assert record == {"from": r2["release_id"], "to": r1["release_id"]}
    assert host.run("rollback")["changes"] == [], "a re-run does not flip back"
    # Killed between its two renames: the next run finishes recording previous.
    os.unlink(os.path.join(host.store, "previous"))
    os.symlink("releases/" + r1["release_id"], os.path.join(host.store, "previous"))
    assert host.run("rollback")["changes"]
    assert host.pointer("previous") == "releases/" + r2["release_id"]
    # An explicit install ends the rollback (query says so first).
    assert host.run("query", v1)["up_to_date"] is False
    host.run("present", v1)
    assert not os.path.exists(os.path.join(host.store, "rolled-back.json"))


def test_rollback_refuses_a_damaged_previous_release(host, v1, v2):
    r1 = host.install(v1)
    host.install(v2)
    with open(os.path.join(host.rdir(r1["release_id"]), "libexec/runc"), "wb") as f:
        f.write(b"x")
    with pytest.raises(rs.ReleaseError, match="is damaged"):
        host.run("rollback")


def test_prune_keeps_n_besides_current_and_previous(host):
    rids = []
    for i in range(4):
        rel = Host.release("v1.0.%d" % i, {"runc": RUNC + bytes([i])}, LS)
        rids.append(host.install(rel, keep_releases=1)["release_id"])
    assert sorted(os.listdir(os.path.join(host.store, "releases"))) == sorted(rids[2:])
    assert host.pointer("previous") == "releases/" + rids[2]
    r = host.install(Host.release("v1.0.9", {"runc": RUNC + b"9"}, LS), keep_releases=2)
    assert r["pruned"] == []
    r = host.install(Host.release("v1.0.10", {"runc": RUNC + b"10"}, LS), keep_releases=2)
    assert r["pruned"] == [rids[2]]


# --------------------------------------------------------------------------- refusals

def test_refuses_symlinked_store_directory(host, v1, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(host.store)
    os.symlink(str(elsewhere), os.path.join(host.store, "releases"))
    host.upload(v1)
    with pytest.raises(rs.ReleaseError, match="symlink"):
        host.run("present", v1)
    assert os.listdir(str(elsewhere)) == []


def test_refuses_a_symlinked_release_directory(host, v1, tmp_path):
    rid = host.install(v1)["release_id"]
    os.symlink(host.rdir(rid), os.path.join(host.store, "releases", "other"))
    with pytest.raises(rs.ReleaseError, match="is a symlink fleetsplit did not create"):
        host.run("present", v1)


@pytest.mark.parametrize("mode,uid,message", [(0o777, 0, "world-writable"), (0o1777, 65534, "owned by uid 65534"),
                                              (0o755, 65534, "owned by uid 65534")])
def test_refuses_unsafe_directories(host, v1, mode, uid, message):
    parent = os.path.dirname(host.store)
    os.chown(parent, uid, 0)
    os.chmod(parent, mode)
    host.upload(v1)
    with pytest.raises(HostFsError, match=message):
        host.run("present", v1)
    assert not os.path.exists(host.store)


def test_refuses_foreign_data_dir_link(host, v1):
    os.makedirs(os.path.join(host.data, "bin"))
    os.symlink("/usr/bin/true", os.path.join(host.data, "bin/runc"))
    host.upload(v1)
    with pytest.raises(rs.ReleaseError, match="did not create"):
        host.run("present", v1)
    assert not os.path.lexists(os.path.join(host.store, "current"))


def test_no_ansible_import():
    """The release code is plain Python: importing it loads no Ansible."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_build\n"
            "print(sorted(m for m in sys.modules if m == 'ansible' or m.startswith('ansible.')))" % str(COLLECTIONS))
    out = subprocess.run([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE, universal_newlines=True,
                         check=True).stdout
    assert out.strip() == "[]"
