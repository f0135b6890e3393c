"""What k0s, the kubelet and CNI plugins write at run time next to the release store (issue 13, items 1-3, 7).

Real k0s configures the kubelet's volumePluginDir as /usr/libexec/k0s/kubelet-plugins/volume/exec
(k0s pkg/component/controller/workerconfig/reconciler.go) and Calico's flex volume driver below it
(pkg/apis/k0s/v1beta1/calico.go); it makes relative iptables* links to xtables-<mode>-multi in <data-dir>/bin
(pkg/component/iptables/iptables.go); its autopilot renames a full download over os.Executable(), which is the
release's bin/k0s (pkg/autopilot/controller/signal/k0s/apply.go). All on real files in temporary directories.
"""
import os
import shutil
import stat

import pytest

from testlib import tree_snapshot
# host and v1 are test_release_store's fixtures (the same host and first release), v2 differs here.
from test_release_store import CAT, CP, XT, Host, _read
from test_release_store import host, v1  # noqa: F401 pylint: disable=unused-import

PLUGIN_REL = "kubelet-plugins/volume/exec/nodeagent~uds/uds"
IPTABLES = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore")


@pytest.fixture
def v2():
    # v2 drops xtables-nft-multi and adds containerd: links for added names before, dropped names after the switch.
    return Host.release("v1.0.1", {"runc": CP, "containerd": XT}, CAT)


def write_plugin(libexec, data=b"calico uds driver"):
    path = os.path.join(libexec, PLUGIN_REL)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def k0s_iptables_links(host, mode="nft"):
    for name in IPTABLES:
        os.symlink("xtables-%s-multi" % mode, os.path.join(host.data, "bin", name))


def assert_runtime_kept(host, data=b"calico uds driver"):
    assert _read(os.path.join(host.libexec, PLUGIN_REL)) == data
    for name in IPTABLES:
        assert os.readlink(os.path.join(host.data, "bin", name)) == "xtables-nft-multi"


def old_layout(host, rid):
    """A host installed by an earlier version: <libexec_dir> a symlink to <store>/current/libexec."""
    shutil.rmtree(host.libexec)
    os.symlink(os.path.join(host.store, "current/libexec"), host.libexec)
    assert os.path.realpath(host.libexec) == os.path.join(host.rdir(rid), "libexec")


def test_migration_from_the_libexec_symlink_moves_runtime_content(host, v1):
    rid = host.install(v1)["release_id"]
    old_layout(host, rid)
    plugin = write_plugin(host.libexec)   # lands inside the release, as it did before
    assert os.path.isfile(os.path.join(host.rdir(rid), "libexec", PLUGIN_REL))
    before = tree_snapshot(host.root)
    q = host.run("query", v1)
    assert q["up_to_date"] is False and q["runtime_moved"] == ["kubelet-plugins"]
    assert not any("removed" in c or "kubelet-plugins (not part" in c for c in q["changes"]), q["changes"]
    c = host.run("present", v1, check=True, diff=True)
    assert c["changed"] is not True and c["runtime_moved"] == ["kubelet-plugins"]
    assert tree_snapshot(host.root) == before, "query and check mode change nothing"
    r = host.run("present", v1)
    assert r["runtime_moved"] == ["kubelet-plugins"] and r["backups"] == {}, "the old symlink is ours: no backup"
    host.assert_installed(v1, rid)
    assert _read(plugin) == b"calico uds driver"
    assert os.path.lexists(os.path.join(host.rdir(rid), "libexec/kubelet-plugins")) is False, "moved, not copied"
    assert not [e for e in os.listdir(os.path.dirname(host.libexec)) if e.startswith(".")], "no temp dir left"
    assert host.run("query", v1)["up_to_date"] is True


def test_a_migration_killed_after_moving_is_finished_by_the_next_run(host, v1):
    rid = host.install(v1)["release_id"]
    old_layout(host, rid)
    write_plugin(host.libexec)
    # What a run killed between the move and the swap leaves: the new directory holding the moved entries.
    new = os.path.join(os.path.dirname(host.libexec), ".k0s.fleetsplit-migrate")
    os.mkdir(new)
    os.rename(os.path.join(host.rdir(rid), "libexec/kubelet-plugins"), os.path.join(new, "kubelet-plugins"))
    r = host.run("present", v1)
    assert r["runtime_moved"] == [] and not os.path.lexists(new)
    host.assert_installed(v1, rid)
    assert _read(os.path.join(host.libexec, PLUGIN_REL)) == b"calico uds driver"


def test_migration_during_an_upgrade_keeps_links_of_the_old_release_until_the_switch(host, v1, v2):
    rid1 = host.install(v1)["release_id"]
    old_layout(host, rid1)
    write_plugin(host.libexec)
    r = host.install(v2)
    host.assert_installed(v2, r["release_id"])
    assert _read(os.path.join(host.libexec, PLUGIN_REL)) == b"calico uds driver"
    assert not os.path.lexists(os.path.join(host.libexec, "xtables-nft-multi")), "dropped name removed after"
    assert host.run("query", v2)["up_to_date"] is True


def test_rollback_on_a_host_of_the_old_layout_migrates_too(host, v1, v2):
    rid1 = host.install(v1)["release_id"]
    rid2 = host.install(v2)["release_id"]
    old_layout(host, rid2)
    write_plugin(host.libexec)
    before = tree_snapshot(host.root)
    c = host.run("rollback", check=True)
    assert c["runtime_moved"] == ["kubelet-plugins"] and tree_snapshot(host.root) == before
    r = host.run("rollback")
    assert r["release_id"] == rid1 and r["runtime_moved"] == ["kubelet-plugins"]
    host.assert_installed(v1, rid1)
    assert _read(os.path.join(host.libexec, PLUGIN_REL)) == b"calico uds driver"
    assert not os.path.lexists(os.path.join(host.libexec, "containerd")), "v2's name dropped after the switch"


def test_switch_and_rollback_keep_runtime_directories(host, v1, v2):
    rid1 = host.install(v1)["release_id"]
    os.makedirs(os.path.join(host.data, "bin"), exist_ok=True)
    write_plugin(host.libexec)
    k0s_iptables_links(host)
    q = host.run("query", v1)
    assert q["up_to_date"] is True and q["changes"] == [] and q["drift"] == {}
    assert host.run("present", v1)["changes"] == []
    r2 = host.install(v2)
    host.assert_installed(v2, r2["release_id"])
    assert_runtime_kept(host)
    assert host.run("query", v2)["up_to_date"] is True
    rb = host.run("rollback")
    assert rb["release_id"] == rid1
    host.assert_installed(v1, rid1)
    assert_runtime_kept(host)
    assert host.run("present", v1)["changes"] == [], "ends the rollback; nothing else to do"
    assert host.run("query", v1)["up_to_date"] is True and os.path.isfile(os.path.join(host.libexec, PLUGIN_REL))


def test_data_dir_bin_keeps_k0s_own_relative_links_and_files(host, v1):
    host.install(v1)
    k0s_iptables_links(host, "nft")
    with open(os.path.join(host.data, "bin", "something-k0s-staged"), "wb") as f:
        f.write(b"staged")
    before = tree_snapshot(host.root)
    q = host.run("query", v1)
    assert q["up_to_date"] is True and q["drift"] == {}
    assert host.run("present", v1)["changes"] == []
    assert tree_snapshot(host.root) == before


def test_replaced_usr_bin_k0s_is_reported_and_kept_in_backup(host, v1):
    rid = host.install(v1)["release_id"]
    exe = os.path.join(host.bin, "k0s")
    os.unlink(exe)
    with open(exe, "wb") as f:
        f.write(b"a full k0s copied by hand")
    q = host.run("query", v1)
    assert q["up_to_date"] is False and list(q["drift"]) == [exe] and "regular file" in q["drift"][exe]
    r = host.run("present", v1)
    assert r["drift"] == q["drift"] and _read(r["backups"][exe]) == b"a full k0s copied by hand"
    assert r["backups"][exe].startswith(os.path.join(host.store, "backup") + "/")
    host.assert_installed(v1, rid)
    assert host.run("query", v1)["drift"] == {}
    os.unlink(exe)
    os.symlink("/opt/k0s/k0s", exe)
    assert host.run("query", v1)["drift"] == {exe: "a symlink to /opt/k0s/k0s, not to %s" % os.path.join(
        host.store, "current/bin/k0s")}
    assert os.readlink(host.run("present", v1)["backups"][exe]) == "/opt/k0s/k0s"
    host.assert_installed(v1, rid)


def test_leftover_temp_links_in_libexec_are_cleaned(host, v1):
    host.install(v1)
    tmp = os.path.join(host.libexec, ".runc.fleetsplit-tmp-abc123")
    os.symlink("x", tmp)
    assert host.run("present", v1)["cleaned"] == [tmp] and not os.path.lexists(tmp)


def test_autopilot_style_update_of_the_release_executable_is_repaired(host, v1):
    """Autopilot writes k0s.tmp beside os.Executable() (the release's bin/k0s), links it as k0s.new and renames
    that over k0s; the temp file may stay until its clean-up."""
    rid = host.install(v1)["release_id"]
    bindir = os.path.join(host.rdir(rid), "bin")
    with open(os.path.join(bindir, "k0s.tmp"), "wb") as f:
        f.write(b"full k0s v1.0.1 with its payload")
    os.link(os.path.join(bindir, "k0s.tmp"), os.path.join(bindir, "k0s.new"))
    os.rename(os.path.join(bindir, "k0s.new"), os.path.join(bindir, "k0s"))
    release_exe = os.path.join(bindir, "k0s")
    before = tree_snapshot(host.root)
    q = host.run("query", v1)
    assert q["up_to_date"] is False and list(q["drift"]) == [release_exe]
    assert q["drift"][release_exe].startswith("k0s: not the release's content")
    assert tree_snapshot(host.root) == before
    host.upload(v1, q["missing"])
    r = host.run("present", v1)
    assert _read(r["backups"][release_exe]) == b"full k0s v1.0.1 with its payload"
    assert _read(r["backups"][os.path.join(bindir, "k0s.tmp")]) == b"full k0s v1.0.1 with its payload"
    host.assert_installed(v1, rid)
    assert sorted(os.listdir(bindir)) == ["k0s"]
    assert host.run("query", v1)["up_to_date"] is True


def test_pinned_mtime_drift_is_a_change_in_query_and_check_mode(host, v1):
    pinned = 1700000000
    rid = host.install(v1, pinned_mtime=pinned)["release_id"]
    path = os.path.join(host.rdir(rid), "libexec/runc")
    os.utime(path, ns=(pinned * 10 ** 9 + 5, pinned * 10 ** 9 + 5))   # same content, not the pinned mtime
    q = host.run("query", v1, pinned_mtime=pinned)
    assert q["up_to_date"] is False and q["changes"]
    c = host.run("present", v1, check=True, pinned_mtime=pinned)
    assert c["changed"] is not True and c["changes"] and c["repaired"] == {"runc": "mtime %d ns, expected %d ns" % (
        pinned * 10 ** 9 + 5, pinned * 10 ** 9)}
    assert os.stat(path).st_mtime_ns == pinned * 10 ** 9 + 5, "check mode changes nothing"
    r = host.run("present", v1, pinned_mtime=pinned)
    assert r["repaired"] and r["drift"] == {} and r["backups"] == {}, "right content: nothing to keep"
    assert r["sources"] == {}, "fixed in place: no stream needed"
    assert os.stat(path).st_mtime_ns == pinned * 10 ** 9
    assert host.run("query", v1, pinned_mtime=pinned)["up_to_date"] is True


def test_libexec_dir_mode_is_checked(host, v1):
    host.install(v1)
    os.chmod(host.libexec, 0o777)
    with pytest.raises(Exception, match="world-writable"):
        host.run("query", v1)
    os.chmod(host.libexec, 0o755)
    assert stat.S_ISDIR(os.lstat(host.libexec).st_mode)
