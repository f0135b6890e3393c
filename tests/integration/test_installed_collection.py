"""The collection as a Galaxy user meets it: built, installed elsewhere, its playbook run by FQCN from an
unrelated directory with no project configuration (no ansible.cfg, no collections link).
"""
import json
import os
import shutil
import stat

from testlib import FIXTURES, REPO, VENV_BIN, recap, run_playbook, sha256


def entries(top):
    """(relative path, full path, lstat) of everything under top."""
    for dirpath, dirnames, filenames in os.walk(str(top)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, str(top)), path, os.lstat(path)


def snapshot(top):
    """What a write would change: type, size, mode, mtime, link target."""
    return {rel: (stat.S_IFMT(st.st_mode), st.st_size, st.st_mode, st.st_mtime_ns,
                  os.readlink(path) if stat.S_ISLNK(st.st_mode) else None)
            for rel, path, st in entries(top)}


def tree(top):
    """Content view of a written tree: kind, mode, sha256 or link target."""
    out = {}
    for rel, path, st in entries(top):
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", None, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), sha256(path))
    return out


def user_env(home, collections):
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_")))
    env.update(HOME=str(home), ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1",
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    return env


def test_fqcn_playbook_writes_an_exact_overlay_and_nothing_in_the_collection(
        tmp_path, installed_collection, fixture_index):
    fixture = "k0s-small-zip"
    exe = tmp_path / fixture
    shutil.copy2(str(FIXTURES / fixture), str(exe))
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    before = snapshot(installed_collection)

    overlay = tmp_path / "overlay"
    proc, out = run_playbook(["fleetsplit.k0s.deploy_k0s", "-e", "k0s_executable=%s" % exe,
                              "-e", "k0s_overlay_root=%s" % overlay], cwd=work, env=user_env(home, installed_collection))
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["failed"] == 0
    assert snapshot(installed_collection) == before, "the run wrote inside the installed collection"
    assert sorted(os.listdir(str(work))) == [], "nothing is written to the working directory when a root is given"

    # Exact: the same tree, byte for byte, as the overlay the checkout's own playbook writes...
    reference = tmp_path / "reference"
    proc, ref_out = run_playbook([REPO / "deploy-k0s.yml", "-e", "k0s_executable=%s" % exe,
                                  "-e", "k0s_overlay_root=%s" % reference,
                                  "-e", "k0s_controller_cache_dir=%s" % (tmp_path / "ref-cache")])
    assert proc.returncode == 0, ref_out
    assert tree(overlay) == tree(reference)
    # ... and what it holds is the fixture's own binaries, independent of the splitter.
    binaries = fixture_index[fixture]["binaries"]
    assert sha256(overlay / "usr/bin/k0s") == sha256(FIXTURES / (fixture + ".bare"))
    assert sorted(os.listdir(str(overlay / "usr/libexec/k0s"))) == sorted(binaries)
    for name, info in binaries.items():
        assert sha256(overlay / "usr/libexec/k0s" / name) == info["sha256"]
    manifest = json.loads((overlay / "usr/share/fleetsplit-k0s/manifest.json").read_text())
    assert sorted(f["name"] for f in manifest["files"]) == sorted(binaries)


def test_without_an_executable_it_fails_naming_both_and_writes_nothing(tmp_path, installed_collection):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    before = snapshot(installed_collection)
    overlay = tmp_path / "overlay"
    proc, out = run_playbook(["fleetsplit.k0s.deploy_k0s", "-e", "k0s_overlay_root=%s" % overlay],
                             cwd=work, env=user_env(home, installed_collection))
    assert proc.returncode != 0, out
    assert "k0s_executable" in out and "k0s_version" in out, out
    assert recap(out)["localhost"]["changed"] == 0, out
    assert not overlay.exists()
    assert sorted(os.listdir(str(work))) == []
    assert not (home / ".cache").exists()
    assert snapshot(installed_collection) == before


def test_default_overlay_goes_to_the_working_directory(tmp_path, installed_collection):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    exe = tmp_path / "k0s"
    shutil.copy2(str(FIXTURES / "k0s-small-legacy"), str(exe))
    before = snapshot(installed_collection)
    proc, out = run_playbook(["fleetsplit.k0s.deploy_k0s", "-e", "k0s_executable=%s" % exe],
                             cwd=work, env=user_env(home, installed_collection))
    assert proc.returncode == 0, out
    assert (work / "out/overlay/usr/bin/k0s").is_file()
    assert (work / "out/overlay/usr/share/fleetsplit-k0s/manifest.json").is_file()
    assert snapshot(installed_collection) == before
