"""changelogs/ (antsibull-changelog): fragments and changelog.yaml lint clean, CHANGELOG.rst is generated from them."""
import os
import shutil
import subprocess

import pytest

from testlib import REPO, VENV_BIN


def antsibull_changelog():
    tool = VENV_BIN / "antsibull-changelog"
    if tool.exists():
        return str(tool)
    found = shutil.which("antsibull-changelog")
    if not found:
        pytest.skip("antsibull-changelog is not installed (requirements.txt pins it; `make venv` installs it)")
    return found


def run(args, cwd):
    return subprocess.run([antsibull_changelog()] + args, cwd=str(cwd), capture_output=True, text=True, timeout=300,
                          check=False, env=dict(os.environ, PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", ""))))


def test_fragments_lint():
    proc = run(["lint"], REPO)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_changelog_yaml_lint():
    proc = run(["lint-changelog-yaml", "changelogs/changelog.yaml"], REPO)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_changelog_rst_is_generated_from_changelog_yaml(tmp_path):
    # In a copy: `generate` rewrites CHANGELOG.rst, which must then be unchanged.
    shutil.copy(REPO / "galaxy.yml", tmp_path)
    shutil.copy(REPO / "CHANGELOG.rst", tmp_path)
    (tmp_path / "changelogs").mkdir()
    for name in ("config.yaml", "changelog.yaml"):
        shutil.copy(REPO / "changelogs" / name, tmp_path / "changelogs")
    shutil.copytree(REPO / "changelogs" / "fragments", tmp_path / "changelogs" / "fragments")
    proc = run(["generate"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "CHANGELOG.rst").read_text() == (REPO / "CHANGELOG.rst").read_text(), (
        "CHANGELOG.rst differs from what changelogs/changelog.yaml gives; run `antsibull-changelog generate`")
