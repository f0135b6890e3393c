"""k3s's data tree pre-staged on a host (issue 15 item 2, host side): plugins/module_utils/k3s_data.py and
k3s_tree.py on real files. Small trees are made here from real ELF files (the fixture bins) the way k3s's
scripts/package-cli lays them out; the fixture k3s (tests/fixtures/fake_k3s, k3s's extract rules re-implemented)
then proves a tree built here is used as it is (no extraction) and that a tampered one is refused and repaired.

k3s's rules followed: cmd/k3s/main.go (extract: data/<hash>/bin/k3s exists -> used as is; lock data/.lock;
<hash>-tmp; cni links; current/previous), pkg/untar/untar.go (validRelPath, modes), pkg/dataverify/dataverify.go.
"""
import hashlib
import os
import shutil
import stat

import pytest

from k3slib import CNI_LINKS, K3S_LINKS, Release, check_data, fixture_bin, fixture_release, members_of, package, run_k3s
from testlib import tree_snapshot
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k3s_data as kd
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k3s_tree import K3sDataError, dataverify
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import write_bundle


@pytest.fixture
def lab(tmp_path):
    class Lab(object):
        root = tmp_path / "root"
        p = {"data_dir": str(tmp_path / "root/var/lib/rancher/k3s"), "bin_dir": str(tmp_path / "root/usr/local/bin"),
             "store_dir": str(tmp_path / "root/var/lib/fleetsplit-k0s/k3s"), "cli_links": ["kubectl", "crictl", "ctr"]}
        data = tmp_path / "root/var/lib/rancher/k3s/data"
        bundles = str(tmp_path / "bundles")

        def release(self, name, runc=None, exe=None, extra_files=None):
            tree = str(tmp_path / ("src-" + name))
            files = {"bin/k3s": fixture_bin("xtables-nft-multi"), "bin/cni": fixture_bin("xtables-legacy-multi"),
                     "bin/runc": runc or fixture_bin("runc"), "bin/aux/xtables-legacy-multi": fixture_bin("xtables-legacy-multi"),
                     "bin/check-config": b"#!/bin/sh\necho ok\n", "etc/crictl.yaml": b"runtime-endpoint: unix:///run/k3s.sock\n"}
            files.update(extra_files or {})
            links = dict(("bin/" + n, "cni") for n in CNI_LINKS)
            links.update(("bin/" + n, "k3s") for n in K3S_LINKS)
            links["bin/aux/iptables"] = "xtables-legacy-multi"
            package(tree, files, links)
            os.chmod(os.path.join(tree, "etc/crictl.yaml"), 0o664)   # the tar's mode, not the umask's, must land
            exe = exe if exe is not None else fixture_bin("runc") + name.encode()
            h = hashlib.sha256(("archive " + name).encode()).hexdigest()
            return Release(tmp_path, name, tree, exe, h)

        def query(self, rel):
            return kd.result(kd.query(self.p, rel.members, rel.exe, rel.data_hash))

        def present(self, rel, names=None, check_mode=False, bundle=True):
            """What the role does: query, one bundle of what is missing, present."""
            q = self.query(rel)
            names = q["missing"] if names is None else names
            b = write_bundle([(n, rel.streams[n]) for n in names], self.bundles) if names and bundle else None
            return q, b, kd.present(self.p, rel.members, rel.exe, rel.data_hash, b and b["path"],
                                    b and b["members"], check_mode)

        def tree(self, rel):
            return self.data / rel.data_hash
    return Lab()


def assert_staged(lab, rel):
    """The tree exactly as the source tree (every member sha256-exact, modes, links), k3s's check passes, links."""
    tree = str(lab.tree(rel))
    assert members_of(tree) == rel.members
    assert dataverify(os.path.join(tree, "bin")) == []
    for m in rel.members:
        if m["type"] == "file":
            with open(os.path.join(tree, m["path"]), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == m["sha256"], m["path"]
            assert os.stat(os.path.join(tree, m["path"])).st_nlink == 1, "copies, never hard links"
    assert os.readlink(str(lab.data / "current")) == tree
    for n in ("cni",) + CNI_LINKS:
        assert os.readlink(str(lab.data / "cni" / n)) == os.path.join(tree, "bin", "cni")
    exe = os.path.join(lab.p["bin_dir"], "k3s")
    assert hashlib.sha256(open(exe, "rb").read()).hexdigest() == rel.exe["sha256"]
    assert stat.S_IMODE(os.stat(exe).st_mode) == 0o755
    for n in ("kubectl", "crictl", "ctr"):
        assert os.readlink(os.path.join(lab.p["bin_dir"], n)) == "k3s"
    assert stat.S_IMODE(os.stat(lab.p["store_dir"]).st_mode) == 0o700
    assert os.path.isfile(os.path.join(lab.p["store_dir"], "executables", rel.exe["sha256"]))
    assert not [e for e in os.listdir(str(lab.data)) if e.endswith("-tmp")]


def test_fresh_deploy_then_rerun_changes_nothing(lab):
    v1 = lab.release("v1")
    q = lab.query(v1)
    files = sorted(set(m["sha256"] for m in v1.members if m["type"] == "file"))
    assert q["missing"] == files + ["k3s"] and q["current"] is None and q["tampered"] == []
    assert not lab.root.exists(), "query writes nothing"
    q, bundle, r = lab.present(v1)
    assert r["changed"] and r["current"] == v1.data_hash and r["previous"] is None
    assert r["executable_changed"] and r["current_changed"]
    assert_staged(lab, v1)
    before = tree_snapshot(lab.root)
    q2 = lab.query(v1)
    assert q2["up_to_date"] and q2["missing"] == [] and q2["changes"] == []
    dummy, b2, r2 = lab.present(v1)
    assert b2 is None and r2["changed"] is False
    assert not r2["executable_changed"] and not r2["current_changed"]
    assert tree_snapshot(lab.root) == before


def test_upgrade_ships_only_the_changed_member_and_rotates_current(lab):
    v1 = lab.release("v1")
    lab.present(v1)
    v2 = lab.release("v2", runc=fixture_bin("runc") + b"\nv2 marker\n")
    q = lab.query(v2)
    runc2 = [m["sha256"] for m in v2.members if m["path"] == "bin/runc"][0]
    sums2 = [m["sha256"] for m in v2.members if m["path"] == "bin/.sha256sums"][0]
    # Only what changed travels: runc, the .sha256sums listing it, and the whole executable.
    assert q["missing"] == sorted([runc2, sums2]) + ["k3s"]
    dummy, bundle, r = lab.present(v2)
    assert r["current"] == v2.data_hash and r["previous"] == v1.data_hash
    assert_staged(lab, v2)
    assert os.readlink(str(lab.data / "previous")) == str(lab.tree(v1))
    assert bundle["size"] == sum(os.path.getsize(v2.streams[n]) for n in q["missing"])
    # Rollback: current <-> previous, and the executable of v1 back from the store.
    r = kd.rollback(lab.p)
    assert r["current"] == v1.data_hash and r["previous"] == v2.data_hash
    assert_staged(lab, v1)
    assert os.readlink(str(lab.data / "previous")) == str(lab.tree(v2))


def test_check_mode_writes_nothing(lab):
    v1 = lab.release("v1")
    q, b, r = lab.present(v1, check_mode=True)
    assert r["changed"] and r["changes"] and not lab.root.exists()
    lab.present(v1)
    v2 = lab.release("v2", runc=b"\x7fELF other runc")
    before = tree_snapshot(lab.root)
    dummy, b, r = lab.present(v2, check_mode=True)
    assert r["changed"] and tree_snapshot(lab.root) == before


def test_tampered_tree_is_moved_aside_and_rebuilt(lab):
    v1 = lab.release("v1")
    lab.present(v1)
    runc = lab.tree(v1) / "bin/runc"
    runc.write_bytes(b"not runc")
    (lab.tree(v1) / "bin/extra").write_bytes(b"x")
    os.chmod(str(lab.tree(v1) / "etc/crictl.yaml"), 0o666)
    q = lab.query(v1)
    assert q["tampered"] == ["bin/extra", "bin/runc", "etc/crictl.yaml"] and not q["up_to_date"]
    assert q["tampered_reasons"]["etc/crictl.yaml"] == "mode 0666, expected 0664"
    runc_sha = [m["sha256"] for m in v1.members if m["path"] == "bin/runc"][0]
    assert q["missing"] == [runc_sha], "intact files of the tampered tree are reused; runc must travel"
    dummy, b, r = lab.present(v1)
    assert r["changed"] and r["backup"].startswith(str(lab.data / ".fleetsplit-backup"))
    assert_staged(lab, v1)
    assert open(os.path.join(r["backup"], "bin/runc"), "rb").read() == b"not runc"
    assert lab.query(v1)["up_to_date"]


def test_executable_replaced_and_old_one_kept_for_rollback(lab):
    """A host k3s-install set up: the old executable is kept by content before it is replaced."""
    v1 = lab.release("v1")
    lab.present(v1)
    os.unlink(os.path.join(lab.p["store_dir"], "k3s-data.json"))
    shutil.rmtree(os.path.join(lab.p["store_dir"], "executables"))
    v2 = lab.release("v2", runc=b"\x7fELF other runc")
    lab.present(v2)
    kd.rollback(lab.p)
    assert_staged(lab, v1)


@pytest.mark.parametrize("bad, msg", [
    ({"path": "bin/../../escape", "type": "file", "mode": 0o755, "size": 1, "sha256": "0" * 64}, "escapes"),
    ({"path": "/etc/passwd", "type": "file", "mode": 0o644, "size": 1, "sha256": "0" * 64}, "escapes"),
    ({"path": "bin/evil", "type": "symlink", "target": "/etc/shadow"}, "leads out"),
    ({"path": "bin/evil", "type": "symlink", "target": "../../../x"}, "leads out"),
    ({"path": "bin/dev", "type": "char", "mode": 0o644}, "type must be"),
    ({"path": "bin/runc/x", "type": "file", "mode": 0o644, "size": 1, "sha256": "0" * 64}, "not a directory"),
])
def test_bad_members_refused_before_any_change(lab, bad, msg):
    v1 = lab.release("v1")
    v1.members.append(bad)
    with pytest.raises(K3sDataError, match=msg):
        lab.present(v1)
    assert not lab.root.exists()


def test_corrupt_stream_or_short_bundle_changes_nothing(lab):
    v1 = lab.release("v1")
    lab.present(v1)
    v2 = lab.release("v2", runc=fixture_bin("runc") + b"2")
    before = tree_snapshot(lab.root)
    # A bundle lacking a missing member: refused before anything is written.
    q = lab.query(v2)
    with pytest.raises(K3sDataError, match="does not hold"):
        lab.present(v2, names=q["missing"][:1])
    assert tree_snapshot(lab.root) == before
    # A damaged stream (one byte flipped inside the deflate data): the build fails, the temporary tree goes.
    runc2 = [m["sha256"] for m in v2.members if m["path"] == "bin/runc"][0]
    data = bytearray(open(v2.streams[runc2], "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(v2.streams[runc2], "wb").write(bytes(data))
    with pytest.raises(K3sDataError, match="unusable"):
        lab.present(v2)
    assert not lab.tree(v2).exists() and not os.path.exists(str(lab.tree(v2)) + "-tmp")
    assert os.readlink(str(lab.data / "current")) == str(lab.tree(v1))
    # Everything as before but the mtime of data/ (the temporary tree came and went there).
    after = tree_snapshot(lab.root)
    assert after.pop(str(lab.data))[2] == before.pop(str(lab.data))[2]
    assert after == before


def test_sums_not_matching_members_refused_by_k3s_rules(lab):
    """A member list whose .sha256sums does not list its files as they are: k3s would refuse the tree."""
    v1 = lab.release("v1")
    sums = os.path.join(v1.tree, "bin/.sha256sums")
    with open(sums, "a") as f:
        f.write("%s  runc\n" % ("0" * 64))
    v1 = Release(lab.root.parent, "v1b", v1.tree, b"\x7fELF k3s", v1.data_hash)
    with pytest.raises(K3sDataError, match="fails k3s's own check"):
        lab.present(v1)
    assert not lab.tree(v1).exists() and not os.path.exists(str(lab.tree(v1)) + "-tmp")
    assert not (lab.data / "current").exists()


def test_foreign_cli_link_and_symlinked_executable(lab):
    v1 = lab.release("v1")
    os.makedirs(lab.p["bin_dir"])
    kubectl = os.path.join(lab.p["bin_dir"], "kubectl")
    open(kubectl, "w").write("#!/bin/sh\n")
    q, b, r = lab.present(v1)
    assert r["skipped_links"] == ["kubectl"] and open(kubectl).read() == "#!/bin/sh\n"
    os.unlink(os.path.join(lab.p["bin_dir"], "crictl"))
    dummy, b, r = lab.present(v1)
    assert r["changed"] and not r["executable_changed"] and not r["current_changed"], "a link needs no restart"
    assert lab.query(v1)["up_to_date"], "a kept foreign file is not a pending change"
    os.unlink(os.path.join(lab.p["bin_dir"], "k3s"))
    os.symlink("/bin/true", os.path.join(lab.p["bin_dir"], "k3s"))
    with pytest.raises(K3sDataError, match="not a regular file"):
        lab.query(v1)


def test_overlapping_paths_refused(lab):
    v1 = lab.release("v1")
    lab.p["store_dir"] = lab.p["data_dir"] + "/data/store"
    with pytest.raises(K3sDataError, match="overlap"):
        lab.query(v1)
    lab.p["store_dir"] = "relative/store"
    with pytest.raises(K3sDataError, match="k3s_store_dir must be an absolute path"):
        lab.query(v1)


# --------------------------------------------------------------------------- the fixture k3s (k3s's own rules)

def test_fixture_k3s_accepts_the_staged_tree_without_extracting(lab, tmp_path):
    fx, v1 = fixture_release(tmp_path, "k3s")
    dummy, b, r = lab.present(v1)
    assert_staged(lab, v1)
    exe = os.path.join(lab.p["bin_dir"], "k3s")
    status, out = run_k3s(exe, lab.p["data_dir"])
    assert status["extracted"] is False and status["dir"] == str(lab.tree(v1)), out
    assert "Preparing data dir" not in out
    assert not os.path.exists(os.path.join(lab.p["data_dir"], "fixture-extractions.log"))
    assert check_data(exe, lab.p["data_dir"]).returncode == 0
    # Upgrade to k3s-v2 (bin/runc changed): only runc, the new .sha256sums and the executable travel.
    fx2, v2 = fixture_release(tmp_path, "k3s-v2")
    q = lab.query(v2)
    changed = sorted(m["sha256"] for m in v2.members if m["path"] in ("bin/runc", "bin/.sha256sums"))
    assert q["missing"] == changed + ["k3s"]
    lab.present(v2)
    assert_staged(lab, v2)
    status, out = run_k3s(exe, lab.p["data_dir"])
    assert status["extracted"] is False and status["version"] == fx2["version"], out
    assert not os.path.exists(os.path.join(lab.p["data_dir"], "fixture-extractions.log"))


def test_fixture_k3s_refuses_a_tampered_tree_and_present_repairs_it(lab, tmp_path):
    fx, v1 = fixture_release(tmp_path, "k3s")
    lab.present(v1)
    exe = os.path.join(lab.p["bin_dir"], "k3s")
    runc = lab.tree(v1) / "bin/runc"
    os.chmod(str(runc), 0o755)
    with open(str(runc), "ab") as f:
        f.write(b"tampered")
    bad = check_data(exe, lab.p["data_dir"])
    assert bad.returncode == 1 and "runc" in bad.stdout + bad.stderr
    q, b, r = lab.present(v1)
    assert q["tampered"] == ["bin/runc"] and r["backup"]
    assert check_data(exe, lab.p["data_dir"]).returncode == 0
    assert_staged(lab, v1)


def test_changed_executable_restored_from_the_store_without_a_bundle(lab):
    v1 = lab.release("v1")
    lab.present(v1)
    exe = os.path.join(lab.p["bin_dir"], "k3s")
    open(exe, "wb").write(b"\x7fELF replaced by hand")
    q = lab.query(v1)
    assert q["missing"] == [] and q["changes"] == ["write %s (differs)" % exe]
    dummy, b, r = lab.present(v1)
    assert b is None and r["changed"]
    assert_staged(lab, v1)


def test_host_where_k3s_extracted_itself_is_adopted_without_sending_anything(lab, tmp_path):
    """A k3s-install host: the fixture k3s extracted its own tree and the executable is in bin_dir. The tree is
    what k3s_data would build (nothing tampered, nothing missing); only the record, the store copy and links change."""
    fx, v1 = fixture_release(tmp_path, "k3s")
    os.makedirs(lab.p["bin_dir"])
    exe = os.path.join(lab.p["bin_dir"], "k3s")
    shutil.copy(fx["path"], exe)
    status, out = run_k3s(exe, lab.p["data_dir"])
    assert status["extracted"] is True
    q = lab.query(v1)
    assert q["tampered"] == [] and q["missing"] == [] and q["current"] == v1.data_hash
    assert not any("build" in c or "current" in c for c in q["changes"]), q["changes"]
    dummy, b, r = lab.present(v1)
    assert b is None and r["changed"]
    assert_staged(lab, v1)
    assert lab.query(v1)["up_to_date"]


def test_rollback_refusals(lab):
    v1 = lab.release("v1")
    with pytest.raises(K3sDataError, match="nothing to roll back to"):
        kd.rollback(lab.p)
    lab.present(v1)
    with pytest.raises(K3sDataError, match="nothing to roll back to"):
        kd.rollback(lab.p)
    v2 = lab.release("v2", runc=b"\x7fELF other runc")
    lab.present(v2)
    # The tree rolled back to fails k3s's own check: refused, nothing switched.
    with open(str(lab.tree(v1) / "bin/runc"), "ab") as f:
        f.write(b"x")
    before = tree_snapshot(lab.root)
    with pytest.raises(K3sDataError, match="k3s's own check fails"):
        kd.rollback(lab.p)
    assert tree_snapshot(lab.root) == before
    # Check mode reports the swap and writes nothing.
    (lab.tree(v1) / "bin/runc").write_bytes(open(os.path.join(v1.tree, "bin/runc"), "rb").read())
    before = tree_snapshot(lab.root)
    r = kd.rollback(lab.p, check_mode=True)
    assert r["changed"] and r["current"] == v1.data_hash and tree_snapshot(lab.root) == before


def test_modes_are_exact_under_umask_0_and_077(lab):
    v1 = lab.release("v1")
    for umask in (0, 0o077):
        old = os.umask(umask)
        try:
            if lab.root.exists():
                shutil.rmtree(str(lab.root))
            lab.present(v1)
        finally:
            os.umask(old)
        assert_staged(lab, v1)
        for d in (lab.data, lab.tree(v1), lab.tree(v1) / "bin", lab.data / "cni"):
            assert stat.S_IMODE(os.stat(str(d)).st_mode) == 0o755, (umask, d)
        assert stat.S_IMODE(os.stat(os.path.join(lab.p["store_dir"], "executables")).st_mode) == 0o700
        assert lab.query(v1)["up_to_date"]


def test_rollback_refuses_a_foreign_cni_entry_before_any_change(lab):
    """k3s keeps only links in data/cni: a file there is refused before current/previous are swapped."""
    v1 = lab.release("v1")
    lab.present(v1)
    v2 = lab.release("v2", runc=b"\x7fELF other runc")
    lab.present(v2)
    bridge = lab.data / "cni" / "cni"
    bridge.unlink()
    bridge.write_bytes(b"not a link")
    before = tree_snapshot(lab.root)
    with pytest.raises(K3sDataError, match="cni is not a symlink"):
        kd.rollback(lab.p)
    assert tree_snapshot(lab.root) == before
