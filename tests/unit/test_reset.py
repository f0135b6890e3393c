"""k0s_reset's host library used directly (no Ansible): a real release store installed by release_build, the test
k0s (a stripped, real k0s-format executable built by tests/fixtures) as the release's bin/k0s, whose `reset`
removes its data dir like k0s (cmd/reset/reset.go, pkg/cleanup/directories.go), service files where k0s_service
writes them, all below one temporary root. No service manager is contacted (root is not "/": molecule covers
live hosts)."""
import os
import stat
import subprocess

import pytest

from testlib import load_fixtures, tree_snapshot
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_reset as kr
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError
from test_release_store import LS, RUNC, XT, Host, _read

FAKE_K0S = _read(load_fixtures()["k0s-zip"]["bare_path"])
UNITS = ("etc/systemd/system/k0sworker.service", "etc/systemd/system/multi-user.target.wants/k0sworker.service",
         "etc/k0s/k0sworker.env", "etc/init.d/k0scontroller", "etc/conf.d/k0scontroller",
         "etc/runlevels/default/k0scontroller")


def run(cmd, env=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                       env=dict(os.environ, **(env or {})), check=False)
    return p.returncode, p.stdout, ""


class ResetHost(Host):
    """A deployed host below one temp root: release store, links, units, config, token, k0s's own data dir."""

    def deploy(self, exe=FAKE_K0S):
        rel = Host.release("v1.36.3+k0s.0", {"runc": RUNC, "xtables-nft-multi": XT}, exe)
        self.rid = self.install(rel)["release_id"]
        for rel_path in UNITS:
            p = self.path(rel_path)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if rel_path.startswith("etc/runlevels") or ".wants/" in rel_path:
                os.symlink("/" + ("etc/init.d/k0scontroller" if "runlevels" in rel_path else UNITS[0]), p)
            else:
                with open(p, "w") as f:
                    f.write("# %s\n" % rel_path)
        self.config = self.path("etc/k0s/k0s.yaml")
        self.token = self.path("etc/k0s/k0stoken")
        for p, text in ((self.config, "apiVersion: k0s.k0sproject.io/v1beta1\n"), (self.token, "secret\n")):
            with open(p, "w") as f:
                f.write(text)
        # What k0s writes at run time: its state in the data dir, a kubelet plugin in libexec, the run dir.
        os.makedirs(os.path.join(self.data, "pki"))
        os.makedirs(os.path.join(self.libexec, "kubelet-plugins/volume/exec"))
        os.makedirs(self.path("run/k0s"))
        with open(self.path("run/k0s/status.json"), "w") as f:
            f.write("{}\n")

    def path(self, rel):
        return os.path.join(self.root, rel)

    def params(self, rel=None, **kw):
        if rel is not None or kw.get("state") in ("query", "present"):
            return Host.params(self, rel, **kw)
        p = dict(state="absent", store_dir=self.store, bin_dir=self.bin, libexec_dir=self.libexec,
                 data_dir=self.data, config_path=self.path("etc/k0s/k0s.yaml"),
                 join_token_path=self.path("etc/k0s/k0stoken"), kubelet_root_dir=None, system_path="/usr/bin:/bin",
                 keep_config=False, root=self.root)
        p.update(kw)
        return p

    def reset(self, check=False, mountinfo="/proc/self/mountinfo", **kw):
        return kr.Reset(self.params(**kw), run, check_mode=check, mountinfo=mountinfo).apply()


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = ResetHost(tmp_path / "root")
    # The test k0s's reset works below this root (service files, /run/k0s, CNI), never on this machine's.
    monkeypatch.setenv("FAKE_K0S_RESET_ROOT", h.root)
    monkeypatch.delenv("FAKE_K0S_STATUS_FILE", raising=False)
    return h


def left(host):
    return sorted(os.path.relpath(p, host.root) for p in tree_snapshot(host.root))


def test_check_mode_is_the_plan_and_changes_nothing(host):
    host.deploy()
    before = tree_snapshot(host.root)
    r = host.reset(check=True)
    assert tree_snapshot(host.root) == before
    assert r["changed"] is True
    exe = os.path.join(host.store, "current/bin/k0s")
    assert r["k0s_reset"]["command"] == [exe, "reset", "--data-dir=%s" % host.data, "--config=%s" % host.config]
    assert r["k0s_reset"]["ran"] is False
    for p in [host.path(u) for u in UNITS] + [os.path.join(host.bin, "k0s"), host.libexec, host.token, host.config,
                                              host.path("etc/k0s")]:
        assert p in r["removed"], p
    assert [os.path.join(host.store, e) for e in ("current", "releases")] == \
        sorted(p for p in r["removed"] if os.path.dirname(p) == host.store and not p.endswith(".lock"))
    assert host.store in r["removed"], "the store root goes when nothing else is in it"
    # The same plan without check mode removes exactly that (the data dir by k0s reset).
    q = kr.Reset(host.params(), run, check_mode=False).query()
    assert q["removed"] == r["removed"] and tree_snapshot(host.root) == before


def test_reset_removes_every_trace_and_a_second_run_changes_nothing(host):
    fresh = left(host)
    host.deploy()
    r = host.reset()
    assert r["changed"] is True and r["k0s_reset"]["ran"] is True and r["k0s_reset"]["rc"] == 0
    out = r["k0s_reset"]["output"]
    assert "removed %s" % host.data in out and "removed %s" % host.path("run/k0s") in out, out
    parents = ["etc", "etc/conf.d", "etc/init.d", "etc/runlevels", "etc/runlevels/default", "etc/systemd",
               "etc/systemd/system", "etc/systemd/system/multi-user.target.wants", "run", "usr/libexec"]
    assert left(host) == sorted(fresh + parents), "only system directories (parents) remain"
    assert not os.path.lexists(host.store) and not os.path.lexists(host.libexec)
    snap = tree_snapshot(host.root)
    again = host.reset()
    assert again["changed"] is False and again["removed"] == [] and again["changes"] == []
    assert tree_snapshot(host.root) == snap


def test_foreign_store_entries_are_kept_with_the_store_root(host):
    host.deploy()
    enc = os.path.join(host.store, "backups-encrypted")
    os.makedirs(enc)
    with open(os.path.join(enc, "etcd-2026.age"), "wb") as f:
        f.write(b"age-encryption.org/v1\n")
    note = os.path.join(host.store, "NOTES")
    with open(note, "w") as f:
        f.write("mine\n")
    keep = {p: v for p, v in tree_snapshot(host.root).items() if p.startswith((enc, note))}
    r = host.reset()
    assert {p: v for p, v in tree_snapshot(host.root).items() if p.startswith(host.store + "/")} == keep
    assert sorted(os.listdir(host.store)) == ["NOTES", "backups-encrypted"]
    assert enc in r["kept"] and note in r["kept"] and host.store in r["kept"]
    assert not host.reset()["changed"]


def test_symlinks_below_removed_trees_are_removed_not_followed(host, tmp_path):
    host.deploy()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me\n")
    os.symlink(str(outside), os.path.join(host.libexec, "kubelet-plugins", "evil"))
    os.symlink(str(outside), os.path.join(host.store, "releases", host.rid, "libexec", "evil"))
    os.symlink(str(outside / "data"), host.path("etc/k0s/evil"))
    r = host.reset()
    assert (outside / "data").read_text() == "keep me\n"
    assert not os.path.lexists(host.libexec)
    # Not ours, so kept (never followed): /etc/k0s stays with it alone.
    assert os.listdir(host.path("etc/k0s")) == ["evil"] and host.path("etc/k0s/evil") in r["kept"]


def test_old_libexec_symlink_is_unlinked_not_followed(host):
    host.deploy()
    import shutil
    shutil.rmtree(host.libexec)
    os.symlink(os.path.join(host.store, "current/libexec"), host.libexec)
    target = os.path.join(host.store, "releases", host.rid, "libexec")
    r = kr.Reset(host.params(store_dir=host.store), run).plan()
    assert ("tree", host.libexec) in r and os.path.isdir(target)
    host.reset()
    assert not os.path.lexists(host.libexec)


@pytest.mark.parametrize("key,value,words", [
    ("libexec_dir", "/usr", "k0s_libexec_dir=/usr: it is a top-level directory"),
    ("data_dir", "/", "k0s_data_dir=/: it is the root directory"),
    ("store_dir", "/var/lib", "k0s_store_dir=/var/lib: it is a system directory"),
    ("libexec_dir", "/usr/local/bin", "k0s_libexec_dir=/usr/local/bin: it is a system directory"),
    ("config_path", "/etc/k0s.yaml", "k0s_config_path=/etc/k0s.yaml (its directory /etc)"),
    ("data_dir", "var/lib/k0s", "k0s_data_dir must be an absolute path"),
    ("store_dir", "/var/lib/fleetsplit-k0s/", "k0s_store_dir must be a normalised path"),
    ("libexec_dir", "/usr/libexec/../k0s", "k0s_libexec_dir must not contain '.' or '..'"),
    ("join_token_path", "/etc//k0stoken", "k0s_join_token_path must be a normalised path"),
])
def test_dangerous_values_are_refused_naming_the_variable(host, key, value, words):
    host.deploy()
    before = tree_snapshot(host.root)
    with pytest.raises(HostFsError) as e:
        host.reset(**{key: value})
    assert words in str(e.value)
    assert tree_snapshot(host.root) == before


def test_overlapping_paths_are_refused(host):
    host.deploy()
    before = tree_snapshot(host.root)
    for kw, words in ((dict(data_dir=host.path("etc/k0s/data")), "k0s_data_dir"),
                      (dict(libexec_dir=os.path.join(host.data, "libexec")), "overlap"),
                      (dict(config_path=os.path.join(host.store, "k0s.yaml")), "k0s_config_path")):
        with pytest.raises(HostFsError) as e:
            host.reset(**kw)
        assert words in str(e.value) and "overlap" in str(e.value)
    assert tree_snapshot(host.root) == before


def test_failing_k0s_reset_removes_nothing_and_names_its_output(host):
    host.deploy(exe=LS)   # a release whose k0s has no `reset`: the command fails
    before = tree_snapshot(host.root)
    with pytest.raises(HostFsError) as e:
        host.reset()
    assert "reset --data-dir=%s" % host.data in str(e.value) and "nothing else was removed" in str(e.value)
    assert "unrecognized option" in str(e.value) or "invalid option" in str(e.value), str(e.value)
    assert tree_snapshot(host.root) == before


def test_half_installed_host_removes_the_data_dir_itself_unless_mounted(host, tmp_path):
    os.makedirs(os.path.join(host.data, "bin"))
    os.makedirs(os.path.join(host.data, "kubelet/pods"))
    mountinfo = tmp_path / "mountinfo"
    # The format of /proc/self/mountinfo (proc(5)), a space in the mount point escaped as \040.
    mount = os.path.join(host.data, "kubelet/pods/vol 1")
    mountinfo.write_text("22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                         "99 22 0:50 / %s rw - tmpfs tmpfs rw\n" % mount.replace(" ", "\\040"))
    before = tree_snapshot(host.root)
    with pytest.raises(HostFsError) as e:
        host.reset(mountinfo=str(mountinfo))
    assert mount in str(e.value) and "k0s_data_dir" in str(e.value)
    assert tree_snapshot(host.root) == before
    r = host.reset()
    assert r["k0s_reset"]["executable"] is None and "half-installed" in r["k0s_reset"]["why_not"]
    assert r["removed"] == [host.data] and not os.path.lexists(host.data)


def test_keep_config_keeps_the_configuration_and_removes_the_token(host):
    host.deploy()
    r = host.reset(keep_config=True)
    assert sorted(os.listdir(host.path("etc/k0s"))) == ["k0s.yaml", "k0sworker.env"]
    assert host.config in r["kept"] and host.path("etc/k0s/k0sworker.env") in r["kept"]
    assert host.token in r["removed"] and not os.path.lexists(host.token)
    assert not host.reset(keep_config=True)["changed"]


def test_config_dir_goes_only_with_what_fleetsplit_wrote_there(host):
    # A containerd drop-in (k0s reads /etc/k0s/containerd.d) is the user's: it and /etc/k0s stay. A temporary
    # name of a killed atomic write is ours and goes.
    host.deploy()
    os.makedirs(host.path("etc/k0s/containerd.d"))
    with open(host.path("etc/k0s/containerd.d/mirror.toml"), "w") as f:
        f.write("[plugins]\n")
    leftover = host.path("etc/k0s/.k0s.yaml" + kr.TMP_MARK + "x1")
    open(leftover, "w").close()
    r = host.reset()
    assert os.listdir(host.path("etc/k0s")) == ["containerd.d"]
    assert host.path("etc/k0s/containerd.d") in r["kept"] and host.path("etc/k0s") in r["kept"]
    assert leftover in r["removed"] and host.config in r["removed"] and host.token in r["removed"]
    assert not host.reset()["changed"]


def test_the_test_k0s_reset_refuses_while_its_k0s_runs_and_reports_what_it_removed(tmp_path, monkeypatch):
    exe = load_fixtures()["k0s-zip"]["path"]
    data = tmp_path / "data"
    (data / "pki").mkdir(parents=True)
    status = tmp_path / "run" / "status.json"
    status.parent.mkdir()
    status.write_text('{"pid": %d, "data_dir": "%s"}\n' % (os.getpid(), data))
    env = dict(os.environ, FAKE_K0S_STATUS_FILE=str(status), FAKE_K0S_RESET_ROOT=str(tmp_path))
    p = subprocess.run([exe, "reset", "--data-dir", str(data)], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert p.returncode == 1 and "still running" in p.stderr and data.is_dir()
    status.write_text('{"pid": 0, "data_dir": "%s"}\n' % data)
    kubelet = tmp_path / "kubelet"
    kubelet.mkdir()
    p = subprocess.run([exe, "reset", "--data-dir=%s" % data, "--kubelet-root-dir=%s" % kubelet, "-d"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert p.returncode == 0, p.stderr
    for d in (kubelet, data, status.parent):
        assert "removed %s" % d in p.stdout and not d.exists()
    assert stat.S_ISDIR(os.lstat(str(tmp_path)).st_mode)
    p = subprocess.run([exe, "reset", "--bogus"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, check=False)
    assert p.returncode == 1 and "unknown flag: --bogus" in p.stderr


def test_a_symlinked_store_or_a_foreign_k0s_is_not_followed(host, tmp_path):
    host.deploy()
    real = tmp_path / "disk" / "store"
    real.parent.mkdir()
    os.rename(host.store, str(real))
    os.symlink(str(real), host.store)
    before = tree_snapshot(tmp_path)
    with pytest.raises(HostFsError) as e:
        host.reset()
    assert "k0s_store_dir=%s is a symlink to %s" % (host.store, real) in str(e.value)
    assert tree_snapshot(tmp_path) == before
    os.unlink(host.store)
    os.rename(str(real), host.store)
    exe = os.path.join(host.bin, "k0s")
    os.unlink(exe)
    with open(exe, "wb") as f:
        f.write(LS)
    r = host.reset()
    assert exe in r["kept"] and _read(exe) == LS, "a k0s fleetsplit did not link stays"
