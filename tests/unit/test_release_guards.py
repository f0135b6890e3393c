"""Guards of the release store against failures after the switch, shared inodes, overlapping paths, the
process umask and unbounded growth (issue 12, items 4-7, 9, 10), on real temporary directories.

Real executables as release content; failures are made real too: `chattr +i` (the test machine runs as
root on ext4) makes a file or directory that neither rmtree nor a rename can change.
"""
import contextlib
import os
import stat
import subprocess

import pytest

from test_release_store import CAT, CP, LS, RUNC, XT, Host, _first, _read
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import make_dirs
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_store as rs

MV = _read(_first("/bin/mv", "/usr/bin/mv"))
LN = _read(_first("/bin/ln", "/usr/bin/ln"))


@contextlib.contextmanager
def immutable(path):
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path / "root")


def rel(version, exe, **bins):
    content = {"runc": RUNC, "xtables-nft-multi": XT}
    content.update(dict((k.replace("_", "-"), v) for k, v in bins.items()))
    return Host.release(version, content, exe)


# --------------------------------------------------------------------------- item 5: switch last

def test_prune_failure_after_the_switch_is_a_warning_and_current_is_switched(host):
    r1 = host.install(rel("v1", LS))
    r2 = host.install(rel("v2", CAT))
    v3 = rel("v3", CP)
    old = os.path.join(host.rdir(r1["release_id"]), "libexec", "runc")
    with immutable(old):   # v1 is pruned (keep_releases=1) but cannot be removed
        r3 = host.install(v3, keep_releases=1)
    assert host.pointer("current") == "releases/" + r3["release_id"]
    assert host.pointer("previous") == "releases/" + r2["release_id"]
    assert r3["binaries_changed"] is True and r3["current_release"] == r3["release_id"]
    assert r3["pruned"] == [] and len(r3["warnings"]) == 1, r3["warnings"]
    assert "pruning old release %s failed" % host.rdir(r1["release_id"]) in r3["warnings"][0]
    host.assert_installed(v3, r3["release_id"])
    # Once the obstacle is gone, the next run prunes it.
    r4 = host.run("present", v3, keep_releases=1)
    assert r4["pruned"] == [r1["release_id"]] and r4["warnings"] == []


def test_a_failing_link_fails_before_the_switch(host):
    r1 = host.install(rel("v1", LS))
    v2 = rel("v2", CAT, crun=MV)   # a new binary name needs a new <data_dir>/bin link
    host.upload(v2, host.run("query", v2)["missing"])
    with immutable(os.path.join(host.data, "bin")):
        with pytest.raises(OSError):
            host.run("present", v2)
    # Nothing switched: current and every link still name v1.
    assert host.pointer("current") == "releases/" + r1["release_id"]
    assert not os.path.lexists(os.path.join(host.data, "bin", "crun"))
    r2 = host.run("present", v2)
    host.assert_installed(v2, r2["release_id"])


def test_a_failing_link_fails_a_rollback_before_its_switch(host):
    r1 = host.install(rel("v1", LS, crun=MV))
    r2 = host.install(rel("v2", CAT))   # its data-dir link to crun is removed after the switch
    assert not os.path.lexists(os.path.join(host.data, "bin", "crun"))
    with immutable(os.path.join(host.data, "bin")):
        with pytest.raises(OSError):
            host.run("rollback")
    assert host.pointer("current") == "releases/" + r2["release_id"]
    assert host.pointer("previous") == "releases/" + r1["release_id"]
    rb = host.run("rollback")
    assert rb["release_id"] == r1["release_id"] and os.path.islink(os.path.join(host.data, "bin", "crun"))


def test_current_executable_is_what_bin_k0s_resolves_to(host):
    v1, v2 = rel("v1", LS), rel("v2", CAT)
    assert host.run("query", v1)["current_executable"] is None
    r1 = host.install(v1)
    want1 = os.path.join(host.rdir(r1["release_id"]), "bin", "k0s")
    assert r1["current_executable"] == want1
    q = host.run("query", v2)   # a dry run: says what runs now, not what would
    assert q["current_executable"] == want1
    r2 = host.install(v2)
    assert r2["current_executable"] == os.path.join(host.rdir(r2["release_id"]), "bin", "k0s")


# --------------------------------------------------------------------------- item 6: independent releases

def test_hotfix_written_into_the_live_release_leaves_rollback_working(host):
    v1, v2 = rel("v1", LS), rel("v2", CAT)   # xtables is the same in both
    r1 = host.install(v1)
    r2 = host.install(v2)
    live = os.path.join(host.libexec, "xtables-nft-multi")
    with open(live, "r+b") as f:   # what `cp new-xtables /usr/libexec/k0s/xtables-nft-multi` does: in place
        f.write(LS[:4096])
    rb = host.run("rollback")
    assert rb["release_id"] == r1["release_id"] and host.pointer("current") == "releases/" + r1["release_id"]
    assert _read(live) == XT   # the verified content of v1, not the hotfix
    assert _read(os.path.join(host.rdir(r2["release_id"]), "libexec", "xtables-nft-multi"))[:4096] == LS[:4096]


def test_releases_hard_linked_by_earlier_versions_get_their_own_copy(host):
    v1, v2 = rel("v1", LS), rel("v2", CAT)
    r1 = host.install(v1)
    r2 = host.install(v2)
    a = os.path.join(host.rdir(r1["release_id"]), "libexec", "xtables-nft-multi")
    b = os.path.join(host.rdir(r2["release_id"]), "libexec", "xtables-nft-multi")
    os.unlink(b)
    os.link(a, b)   # the store as versions that hard-linked unchanged files left it
    q = host.run("query", v2)
    assert q["up_to_date"] is False and any("its own copy" in c for c in q["changes"]), q["changes"]
    r = host.run("present", v2)
    assert r["binaries_changed"] is False   # same content: no restart
    assert os.stat(a).st_nlink == 1 and os.stat(b).st_nlink == 1 and os.stat(a).st_ino != os.stat(b).st_ino
    assert _read(b) == XT
    assert host.run("query", v2)["up_to_date"] is True


# --------------------------------------------------------------------------- item 7: path parameters

@pytest.mark.parametrize("layout,names", [
    (lambda h: dict(libexec_dir=os.path.join(h.data, "bin")), ("k0s_libexec_dir", "k0s_data_dir")),
    (lambda h: dict(libexec_dir=h.bin), ("k0s_libexec_dir", "k0s_bin_dir")),
    (lambda h: dict(bin_dir=os.path.join(h.store, "bin")), ("k0s_store_dir", "k0s_bin_dir")),
    (lambda h: dict(store_dir=os.path.join(h.libexec, "store")), ("k0s_store_dir", "k0s_libexec_dir")),
    (lambda h: dict(bin_dir=os.path.join(h.libexec, "bin")), ("k0s_libexec_dir", "k0s_bin_dir")),
    (lambda h: dict(data_dir=os.path.join(h.store, "k0s")), ("k0s_store_dir", "k0s_data_dir")),
])
@pytest.mark.parametrize("state", ["query", "present"])
def test_overlapping_paths_are_refused_before_anything_is_written(host, layout, names, state):
    v1 = rel("v1", LS)
    host.upload(v1)
    before = sorted(os.walk(host.root))
    with pytest.raises(rs.ReleaseError) as e:
        host.run(state, v1, **layout(host))
    for n in names:
        assert n in str(e.value), str(e.value)
    assert "overlap" in str(e.value) or "inside" in str(e.value)
    assert sorted(os.walk(host.root)) == before


def test_overlap_through_a_symlinked_parent_is_refused(host):
    os.makedirs(os.path.join(host.data, "bin"))
    alias = os.path.join(host.root, "alias")
    os.symlink(host.data, alias)   # libexec_dir = <alias>/bin is <data_dir>/bin under another name
    with pytest.raises(rs.ReleaseError, match="k0s_libexec_dir.*k0s_data_dir|k0s_data_dir.*k0s_libexec_dir"):
        host.run("query", rel("v1", LS), libexec_dir=os.path.join(alias, "bin"))


@pytest.mark.parametrize("key", ["store_dir", "bin_dir", "libexec_dir", "data_dir", "streams_dir"])
@pytest.mark.parametrize("bad,why", [
    ("relative/path", "absolute"), ("/opt/x/../y", "components"), ("/opt//y", "normalised"),
    ("/opt/y/", "normalised"), ("/opt/./y", "components"), ("/opt/y\n[Service]", "control character"),
    ("/opt/y\tz", "control character"),
])
def test_bad_path_parameters_are_refused(host, key, bad, why):
    with pytest.raises(rs.ReleaseError) as e:
        host.run("query", rel("v1", LS), **{key: bad})
    assert why in str(e.value) and rs.ROLE_VARS[key].split(" ")[0] in str(e.value), str(e.value)


def test_the_default_layout_passes():
    rs.check_layout(dict(store_dir="/var/lib/fleetsplit-k0s", bin_dir="/usr/bin", libexec_dir="/usr/libexec/k0s",
                         data_dir="/var/lib/k0s", streams_dir="/var/lib/fleetsplit-k0s/incoming", link_data_dir=True))


# --------------------------------------------------------------------------- item 9: modes without umask

def test_directories_get_explicit_modes_under_umask_0(tmp_path):
    h = Host(tmp_path / "root")
    h.data = os.path.join(h.root, "srv/k0s/data")   # parents the store must create
    h.libexec = os.path.join(h.root, "opt/k0s/libexec/k0s")
    v1 = rel("v1", LS)
    old = os.umask(0)
    try:
        r = h.install(v1)
        os.unlink(os.path.join(h.bin, "k0s"))
        with open(os.path.join(h.bin, "k0s"), "wb") as f:   # something to move into backup/
            f.write(b"x")
        h.run("present", v1)
    finally:
        os.umask(old)
    made = [h.store, os.path.join(h.store, "releases"), h.rdir(r["release_id"]),
            os.path.join(h.root, "srv"), os.path.join(h.root, "srv/k0s"), h.data, os.path.join(h.data, "bin"),
            os.path.join(h.root, "opt"), os.path.join(h.root, "opt/k0s/libexec")]
    for d in made:
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o755, d
    backup = os.path.join(h.store, "backup")
    for root, dirs, dummy in os.walk(backup):
        for d in [root] + [os.path.join(root, x) for x in dirs]:
            assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700, d


def test_make_dirs_refuses_nothing_it_did_not_create(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    old = os.umask(0o077)
    try:
        made = make_dirs(str(target), 0o755)
    finally:
        os.umask(old)
    assert made == [str(target), str(target.parent), str(target.parent.parent)]
    assert all(stat.S_IMODE(os.lstat(d).st_mode) == 0o755 for d in made)
    assert make_dirs(str(target), 0o755) == []


# --------------------------------------------------------------------------- item 10: bounded growth

def test_abandoned_staged_releases_do_not_pile_up(host):
    r1 = host.install(rel("v1", LS))
    staged = []
    for i, exe in enumerate((CAT, CP, MV, LN)):
        v = rel("s%d" % i, exe)
        host.upload(v, host.run("query", v)["missing"])
        r = host.run("present", v, switch=False)
        staged.append(r["release_id"])
        assert host.pointer("current") == "releases/" + r1["release_id"]
        assert r["release_id"] in os.listdir(os.path.join(host.store, "releases"))   # never the one just staged
    # keep_releases=2: current, plus at most 2 others, plus the release just staged.
    left = sorted(os.listdir(os.path.join(host.store, "releases")))
    assert left == sorted([r1["release_id"]] + staged[-3:]), left
    assert not os.path.lexists(os.path.join(host.store, "previous"))


def test_backup_sets_are_bounded(host):
    v1, v2 = rel("v1", LS), rel("v2", CAT)
    sets = []
    for i in range(5):
        k0s = os.path.join(host.bin, "k0s")
        if os.path.lexists(k0s):
            os.unlink(k0s)
        with open(k0s, "wb") as f:   # an admin's copy in the way, moved aside each time
            f.write(b"copy %d" % i)
        r = host.install(v1 if i % 2 else v2, keep_backups=3)
        sets.append(r["backups"][k0s])
    left = sorted(os.listdir(os.path.join(host.store, "backup")))
    assert len(left) == 3, left
    # The three newest survive, with their content.
    for i, path in enumerate(sets[-3:], start=2):
        assert _read(path) == b"copy %d" % i
