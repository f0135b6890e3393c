"""The collection as a Galaxy user meets it: built, installed elsewhere, its playbook run by FQCN from an
unrelated directory with no project configuration (no ansible.cfg, no collections link).
"""
import json
import os
import shutil

from testlib import FIXTURES, REPO, recap, run_playbook, sha256, tree_entries, tree_snapshot, user_env


def tree(top):
    """Content view of a written tree, comparable between two roots: relative path -> (mode, sha256 or link target)."""
    return {os.path.relpath(p, str(top)): (st.st_mode, content) for p, st, content in tree_entries(top)}


def test_fqcn_playbook_writes_an_exact_overlay_and_nothing_in_the_collection(
        tmp_path, installed_collection, fixture_index):
    fixture = "k0s-small-zip"
    exe = tmp_path / fixture
    shutil.copy2(str(FIXTURES / fixture), str(exe))
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    before = tree_snapshot(installed_collection)

    overlay = tmp_path / "overlay"
    proc, out = run_playbook(["fleetsplit.k0s.deploy_k0s", "-e", "k0s_executable=%s" % exe,
                              "-e", "k0s_overlay_root=%s" % overlay], cwd=work, env=user_env(home, installed_collection))
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["failed"] == 0
    assert tree_snapshot(installed_collection) == before, "the run wrote inside the installed collection"
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
    before = tree_snapshot(installed_collection)
    overlay = tmp_path / "overlay"
    proc, out = run_playbook(["fleetsplit.k0s.deploy_k0s", "-e", "k0s_overlay_root=%s" % overlay],
                             cwd=work, env=user_env(home, installed_collection))
    assert proc.returncode != 0, out
    assert "k0s_executable" in out and "k0s_version" in out, out
    assert recap(out)["localhost"]["changed"] == 0, out
    assert not overlay.exists()
    assert sorted(os.listdir(str(work))) == []
    assert not (home / ".cache").exists()
    assert tree_snapshot(installed_collection) == before


def test_default_overlay_goes_to_the_working_directory(tmp_path, installed_collection):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    exe = tmp_path / "k0s"
    shutil.copy2(str(FIXTURES / "k0s-small-legacy"), str(exe))
    before = tree_snapshot(installed_collection)
    proc, out = run_playbook(["fleetsplit.k0s.deploy_k0s", "-e", "k0s_executable=%s" % exe],
                             cwd=work, env=user_env(home, installed_collection))
    assert proc.returncode == 0, out
    assert (work / "out/overlay/usr/bin/k0s").is_file()
    assert (work / "out/overlay/usr/share/fleetsplit-k0s/manifest.json").is_file()
    assert tree_snapshot(installed_collection) == before
