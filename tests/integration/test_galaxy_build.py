"""The Galaxy tarball holds the collection and nothing of the development setup.

Built from a copy of this checkout (tracked and new files) with the junk a used working tree has planted
in it (caches, venvs, build output, a collections link that loops back), through scripts/check-build; and
from the checkout itself (the galaxy_tarball fixture). Then installed offline the way a user installs it.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest

from testlib import REPO, VENV_BIN, ansible_galaxy, user_env

# Paths (relative, in the tarball) that are development files: none may be published.
DENY = re.compile(
    r"^(Makefile|ansible\.cfg|deploy-k0s\.yml|requirements[^/]*\.txt)$"
    r"|^tests/(?!config\.yml$|sanity$|sanity/ignore-[0-9.]+\.txt$)"
    r"|^(benchmarks|extensions|out|\.venv[^/]*|\.cache|\.build|\.ci|\.git[^/]*|\.ansible[^/]*)(/|$)"
    r"|(^|/)(\.pytest_cache|__pycache__)(/|$)|\.py[co]$"
    r"|^scripts/(?!k0s-payload$)"
    r"|^changelogs/\.plugin-cache\.yaml$")
# /usr/share/common-licenses/Apache-2.0 (Debian) and https://www.apache.org/licenses/LICENSE-2.0.txt
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

JUNK = {
    ".pytest_cache/v/cache/lastfailed": "{}",
    "tests/.pytest_cache/README.md": "cache",
    "tests/unit/__pycache__/test_payload.cpython-311-pytest-9.2.0.pyc": "pyc",
    "plugins/modules/__pycache__/payload_split.cpython-311.pyc": "pyc",
    "plugins/module_utils/__pycache__/k0s_payload.cpython-311.pyc": "pyc",
    "plugins/module_utils/k0s_payload.pyc": "pyc",
    "roles/split/tasks/.pytest_cache/CACHEDIR.TAG": "tag",
    ".venv/bin/python": "#!/bin/sh\n",
    ".venv-compat/pyvenv.cfg": "home = /usr/bin\n",
    ".cache/fixtures/k0s-zip": "ELF",
    ".ansible/collections/x": "lint cache",
    "out/overlay/usr/bin/k0s": "ELF",
    "out/k0sctl.yaml": "apiVersion: k0sctl.k0sproject.io/v1beta1\n",
    "changelogs/.plugin-cache.yaml": "objects: {}\n",
    "fleetsplit-k0s-0.0.1.tar.gz": "old build",
}


def members(tarball):
    with tarfile.open(str(tarball)) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def roles():
    return sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())


def required():
    return (["MANIFEST.json", "FILES.json", "README.md", "LICENSE", "CHANGELOG.rst", "changelogs/changelog.yaml",
             "changelogs/config.yaml", "meta/runtime.yml", "meta/execution-environment.yml",
             "meta/ee-requirements.txt", "scripts/k0s-payload", "plugins/modules/payload_split.py",
             "playbooks/deploy_k0s.yml", "tests/config.yml", "tests/sanity/ignore-2.19.txt"]
            + ["roles/%s/README.md" % r for r in roles()]
            + ["roles/%s/meta/argument_specs.yml" % r for r in roles()])


def copy_checkout(dest):
    """Tracked and new (not ignored) files of the checkout, as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=str(REPO),
                            stdout=subprocess.PIPE, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not os.path.lexists(str(src)):
            continue  # deleted in the working tree, not committed yet
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(src), str(dest / rel), follow_symlinks=False)


def check_build(src, out):
    return subprocess.run([str(REPO / "scripts" / "check-build"), "--src", str(src), "--out", str(out)],
                          env=dict(os.environ, ANSIBLE_GALAXY=str(VENV_BIN / "ansible-galaxy")),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def used_checkout(tmp_path_factory):
    tree = tmp_path_factory.mktemp("used-checkout") / "k0s"
    copy_checkout(tree)
    for rel, text in JUNK.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    # `make collection` links the checkout into itself: a walk that followed it would never end.
    link = tree / ".build/collections/ansible_collections/fleetsplit/k0s"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../../..")
    return tree


@pytest.fixture(scope="module")
def checked_build(used_checkout, tmp_path_factory):
    out = tmp_path_factory.mktemp("check-build")
    proc = check_build(used_checkout, out)
    (tarball,) = out.glob("fleetsplit-k0s-*.tar.gz")
    return proc, tarball


def assert_only_the_collection(tarball):
    names = members(tarball)
    assert sorted(n for n in names if DENY.search(n)) == []
    assert sorted(set(required()) - set(names)) == []
    assert all(m.isfile() for n, m in names.items() if n in required())
    return names


def test_check_build_passes_and_summarises(checked_build):
    proc, tarball = checked_build
    assert proc.returncode == 0, proc.stdout
    assert "tarball: %s" % tarball in proc.stdout
    assert re.search(r"^size: \d+ bytes compressed, \d+ files, \d+ bytes uncompressed$", proc.stdout, re.M)
    assert re.search(r"^  roles/ +\d+ files", proc.stdout, re.M), proc.stdout
    assert "OK: %s holds only the collection" % tarball.name in proc.stdout


def test_planted_junk_stays_out(checked_build):
    tarball = checked_build[1]
    names = assert_only_the_collection(tarball)
    planted = set(JUNK) | {".build", "deploy-k0s.yml", "Makefile", "requirements.txt"}
    assert sorted(p for p in planted if p in names) == []
    assert sorted(n for n in names if n.startswith("scripts/")) == ["scripts/k0s-payload"]


def test_checkout_build_has_only_the_collection(galaxy_tarball):
    # The checkout as it is, with whatever caches it has (this pytest run's tests/__pycache__ at least).
    assert_only_the_collection(galaxy_tarball)


def test_collection_metadata(checked_build):
    tarball = checked_build[1]
    with tarfile.open(str(tarball)) as tar:
        info = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
        license_text = tar.extractfile("LICENSE").read()
    assert info["license"] == ["Apache-2.0"]
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_SHA256
    for key in ("repository", "documentation", "homepage", "issues"):
        assert info[key] and info[key].startswith("https://") and ".invalid" not in info[key], (key, info[key])
    assert info["dependencies"] == {}


def test_check_build_fails_on_a_leak(used_checkout, tmp_path):
    tree = tmp_path / "k0s"
    shutil.copytree(str(used_checkout / "benchmarks"), str(tree / "benchmarks"))
    for rel in ("galaxy.yml", "README.md", "LICENSE", "CHANGELOG.rst", "meta", "roles", "plugins", "scripts",
                "changelogs", "playbooks"):
        src = used_checkout / rel
        if src.is_dir():
            shutil.copytree(str(src), str(tree / rel), symlinks=True)
        else:
            shutil.copy2(str(src), str(tree / rel))
    galaxy = tree / "galaxy.yml"
    galaxy.write_text(re.sub(r"^  - benchmarks\n", "", galaxy.read_text(), flags=re.M))
    (tree / "roles" / "split" / "README.md").unlink()
    proc = check_build(tree, tmp_path / "out")
    assert proc.returncode == 1, proc.stdout
    assert re.search(r"^FAIL: developer files.*\n(  .*\n)*  benchmarks/split_bench\.py$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^FAIL: missing from the tarball:\n(  .*\n)*  roles/split/README\.md$", proc.stdout, re.M), proc.stdout


def user_galaxy(args, home, collections):
    """ansible-galaxy as a user with an empty HOME runs it: no project config, nothing installed before."""
    return ansible_galaxy(args, cwd=str(home), env=user_env(home, collections))


def test_installs_offline(checked_build, tmp_path):
    tarball = checked_build[1]
    home, dest = tmp_path / "home", tmp_path / "collections"
    home.mkdir()
    out = user_galaxy(["collection", "install", "--offline", "-p", str(dest), str(tarball)], home, dest)
    assert "fleetsplit.k0s:" in out and "was installed successfully" in out, out
    installed = dest / "ansible_collections" / "fleetsplit" / "k0s"
    with tarfile.open(str(tarball)) as tar:
        version = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]["version"]
    assert json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["version"] == version
    for rel in required():
        assert (installed / rel).is_file(), rel
    # Every installed file matches the checksums in the tarball's FILES.json.
    out = user_galaxy(["collection", "verify", "--offline", "fleetsplit.k0s"], home, dest)
    assert "Successfully verified that checksums for 'fleetsplit.k0s:%s'" % version in out, out
