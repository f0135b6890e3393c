"""Overlay mode (deploy_k0s.yml play 1) against hostile image trees, with real ansible-playbook runs.

Every tree lives in a work directory next to an "outside" directory the hostile symlinks point to. A
refused run must fail at the confinement check naming the path and the symlink that leads out, and leave
the whole work directory - the root and the outside - exactly as it was (same entries, inodes, mtimes,
contents): nothing written outside, nothing half-written inside. A legit merged-/usr tree is written
through its relative links.
"""
import json
import os
import shutil

import pytest

from testlib import FIXTURES, REPO, recap, run_playbook, sha256, tree_snapshot

FIXTURE = "k0s-small-zip"
CHECK_TASK = "Check that every overlay path stays inside the overlay root"
# Variables are checked earlier still, before the split (the service role's check entry point).
VALUES_CHECK = "Check the values that reach the k0s units, scripts and environment files"
FIRST_WRITE = "Write k0s and its embedded binaries into the overlay"


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    d = tmp_path_factory.mktemp("exe")
    shutil.copy2(str(FIXTURES / FIXTURE), str(d / FIXTURE))
    return d / FIXTURE


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def deploy(work, exe, cache, root, *extra, **evars):
    evars = dict(dict(k0s_executable=str(exe), k0s_controller_cache_dir=str(cache), k0s_overlay_root=str(root)), **evars)
    return run_playbook([str(REPO / "playbooks/deploy_k0s.yml"), "-e", json.dumps(evars)] + list(extra), cwd=work)


def symlink(target, path):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    os.symlink(str(target), str(path))


# name: (build the tree below work (returns the root), extra vars, what the message must say)
def _etc_absolute(w):
    symlink(w / "outside", w / "root/etc")
    return w / "root", {}, ["/etc -> %s is an absolute symlink" % (w / "outside"), "outside the overlay root"]


def _var_lib_absolute(w):
    symlink(w / "outside", w / "root/var/lib")
    return w / "root", {}, ["/var/lib -> %s is an absolute symlink" % (w / "outside"), "refusing to write /var/lib/k0s/bin"]


def _etc_systemd_climbs(w):
    (w / "a/root/etc").mkdir(parents=True)
    symlink("../../..", w / "a/root/etc/systemd")
    return w / "a/root", {}, ["/etc/systemd -> ../../.. climbs above the overlay root",
                              "refusing to write /etc/systemd/system/k0scontroller.service"]


def _loop(w):
    symlink("systemd2", w / "root/etc/systemd")
    symlink("systemd", w / "root/etc/systemd2")
    return w / "root", {}, ["too many levels of symbolic links", "at /etc/systemd"]


def _dangling(w):
    symlink("../srv/lib", w / "root/var/lib")
    return w / "root", {}, ["/var/lib -> ../srv/lib is a dangling symlink"]


def _unit_is_a_link(w):
    (w / "root/etc/systemd/system").mkdir(parents=True)
    (w / "root/etc/systemd/system/real.service").write_text("[Unit]\n")
    symlink("real.service", w / "root/etc/systemd/system/k0scontroller.service")
    return w / "root", {}, ["/etc/systemd/system/k0scontroller.service", "is a symlink to real.service"]


def _libexec_climbs(w):
    (w / "root").mkdir()
    return w / "root", {"k0s_libexec_dir": "/../x"}, ["k0s_libexec_dir", "/../x"]


def _data_dir_newline(w):
    (w / "root").mkdir()
    return w / "root", {"k0s_data_dir": "/var/lib/k0s\n[Service]"}, ["k0s_data_dir contains the control character"]


def _role_typo(w):
    (w / "root").mkdir()
    return w / "root", {"k0s_role": "controler"}, ["k0s_role", "controler"]


def _root_is_slash(w):
    symlink("/", w / "slash")
    symlink(w / "slash", w / "root")
    return w / "root", {}, ["k0s_overlay_root=", "resolves to / (the build machine itself)"]


HOSTILE = {
    "root-links-to-slash": _root_is_slash,
    "etc-absolute": _etc_absolute,
    "var-lib-absolute": _var_lib_absolute,
    "etc-systemd-climbs": _etc_systemd_climbs,
    "symlink-loop": _loop,
    "dangling-link": _dangling,
    "unit-is-a-link": _unit_is_a_link,
    "libexec-dotdot": _libexec_climbs,
    "data-dir-newline": _data_dir_newline,
    "role-typo": _role_typo,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tree_is_refused_before_any_write(tmp_path, exe, cache, case):
    work = tmp_path / "work"
    (work / "outside").mkdir(parents=True)
    root, evars, says = HOSTILE[case](work)
    before = tree_snapshot(work)
    proc, out = deploy(work, exe, cache, root, **evars)
    assert proc.returncode != 0, out
    assert recap(out)["localhost"]["failed"] == 1, out
    for text in says:
        assert text in out, out
    # Refused by the check, before the first write task ever started.
    assert ("TASK [%s]" % CHECK_TASK in out or "TASK [%s]" % VALUES_CHECK in out) and FIRST_WRITE not in out, out
    assert tree_snapshot(work) == before
    assert os.listdir(str(work / "outside")) == []


def test_check_mode_refuses_too(tmp_path, exe, cache):
    work = tmp_path / "work"
    (work / "outside").mkdir(parents=True)
    root, evars, says = _etc_absolute(work)
    before = tree_snapshot(work)
    proc, out = deploy(work, exe, cache, root, "--check", "--diff", **evars)
    assert proc.returncode != 0 and says[0] in out, out
    assert tree_snapshot(work) == before


def merged_usr_tree(root):
    for d in ("usr/bin", "usr/lib", "usr/sbin", "run", "etc/systemd/system", "var"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("sbin", "usr/sbin"), ("var/run", "../run")):
        symlink(target, root / link)


def test_merged_usr_tree_is_written_through_its_relative_links(tmp_path, exe, cache, fixture_index):
    work = tmp_path / "work"
    (work / "outside").mkdir(parents=True)
    root = work / "root"
    merged_usr_tree(root)
    # k0s_bin_dir=/bin goes through bin -> usr/bin, k0s_data_dir through var/run -> ../run.
    evars = dict(k0s_bin_dir="/bin", k0s_data_dir="/var/run/k0s")
    proc, out = deploy(work, exe, cache, root, **evars)
    assert proc.returncode == 0, out
    assert os.readlink(str(root / "bin")) == "usr/bin" and os.readlink(str(root / "var/run")) == "../run"
    assert sha256(root / "usr/bin/k0s") == sha256(FIXTURES / (FIXTURE + ".bare"))
    binaries = fixture_index[FIXTURE]["binaries"]
    assert sorted(os.listdir(str(root / "run/k0s/bin"))) == sorted(binaries)
    for name in binaries:
        assert os.readlink(str(root / "run/k0s/bin" / name)) == "/usr/libexec/k0s/" + name
    unit = (root / "etc/systemd/system/k0scontroller.service").read_text()
    assert "ExecStart=/bin/k0s controller --data-dir=/var/run/k0s --enable-worker" in unit
    manifest = json.loads((root / "usr/share/fleetsplit-k0s/manifest.json").read_text())
    assert manifest["k0s"]["path"] == "/bin/k0s"
    assert os.listdir(str(work / "outside")) == []

    proc, out = deploy(work, exe, cache, root, **evars)
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out


def test_the_check_covers_every_file_the_overlay_writes(tmp_path, exe, cache):
    """A tripwire for new files: everything the play leaves in the root (with every optional file on: k0s
    config, OpenRC conf.d, enablement links) was among the paths the check proved first."""
    root = tmp_path / "overlay"
    proc, out = deploy(tmp_path, exe, cache, root, "-v", k0s_config={"spec": {"api": {"port": 6443}}},
                       k0s_openrc_conf={"rc_ulimit": "-n 65536"}, k0s_env={"HTTPS_PROXY": "http://proxy:3128"})
    assert proc.returncode == 0, out
    line = out[out.index("TASK [%s]" % CHECK_TASK):].splitlines()[1]
    checked = json.loads(line.split(" => ", 1)[1])["host_paths"]
    assert set(checked.values()) >= {str(root / "etc/k0s/k0s.yaml"), str(root / "etc/conf.d/k0scontroller"),
                                     str(root / "etc/k0s/k0scontroller.env")}
    written = set()
    for dirpath, dirnames, filenames in os.walk(str(root)):
        written.update(os.path.join(dirpath, n) for n in filenames)
        written.update(os.path.join(dirpath, n) for n in dirnames if os.path.islink(os.path.join(dirpath, n)))
    assert written and written <= set(checked.values()), sorted(written - set(checked.values()))
    # ...and every directory is one the check proved or lies on the way to one.
    dirs = {os.path.join(d, n) for d, dirnames, _f in os.walk(str(root)) for n in dirnames}
    assert all(any(c == d or c.startswith(d + "/") for c in checked.values()) for d in dirs)
