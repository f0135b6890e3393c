"""roles/*/README.md are generated from meta/argument_specs.yml by scripts/role-readmes and must not drift."""
import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys

import pytest

from testlib import REPO

SCRIPT = REPO / "scripts" / "role-readmes"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT)] + [str(a) for a in args], capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.fixture(scope="module")
def role_readmes():
    loader = importlib.machinery.SourceFileLoader("role_readmes", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("role_readmes", loader))
    loader.exec_module(module)
    return module


def test_readmes_match_argument_specs():
    proc = run("--check")
    assert proc.returncode == 0, ("role READMEs drifted from meta/argument_specs.yml; run "
                                  "`.venv/bin/python scripts/role-readmes`:\n" + proc.stdout + proc.stderr)
    roles = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())
    assert roles and all((REPO / "roles" / r / "README.md").is_file() for r in roles)


@pytest.fixture
def collection_copy(tmp_path):
    shutil.copy(REPO / "galaxy.yml", tmp_path)
    for role in (REPO / "roles").iterdir():
        if role.is_dir():
            (tmp_path / "roles" / role.name / "meta").mkdir(parents=True)
            shutil.copy(role / "meta" / "argument_specs.yml", tmp_path / "roles" / role.name / "meta")
    assert run("--root", tmp_path).returncode == 0
    return tmp_path


def test_check_names_stale_and_missing_readmes_without_writing(collection_copy):
    specs = collection_copy / "roles" / "install" / "meta" / "argument_specs.yml"
    specs.write_text(specs.read_text().replace("Release store on the host.", "Where releases live, I(per host)."))
    new_role = collection_copy / "roles" / "zz_new" / "meta"
    new_role.mkdir(parents=True)
    (new_role / "argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    short_description: A role added later\n    options:\n"
        "      zz_path:\n        type: path\n        required: true\n        description: V(/x) or O(zz_other).\n")
    before = (collection_copy / "roles" / "install" / "README.md").read_text()

    proc = run("--check", "--root", collection_copy)
    assert proc.returncode == 1
    assert "roles/install/README.md" in proc.stderr and "roles/zz_new/README.md" in proc.stderr
    assert "roles/service/README.md" not in proc.stderr
    assert (collection_copy / "roles" / "install" / "README.md").read_text() == before
    assert not (collection_copy / "roles" / "zz_new" / "README.md").exists()

    assert run("--root", collection_copy).returncode == 0
    assert run("--check", "--root", collection_copy).returncode == 0
    text = (collection_copy / "roles" / "zz_new" / "README.md").read_text()
    assert text.startswith("# fleetsplit.k0s.zz_new\n")
    assert "| `zz_path` | path | yes |  |  | `/x` or `zz_other`. |" in text
    assert "        name: fleetsplit.k0s.zz_new\n      vars:\n        zz_path: <path>\n" in text
    assert "Where releases live, *per host*." in (collection_copy / "roles" / "install" / "README.md").read_text()


def test_output_is_deterministic(collection_copy):
    first = {p: p.read_bytes() for p in sorted(collection_copy.glob("roles/*/README.md"))}
    for p in first:
        p.unlink()
    assert run("--root", collection_copy).returncode == 0
    assert {p: p.read_bytes() for p in first} == first


@pytest.mark.parametrize("source, markdown", [
    ("C(/usr/bin/k0s)", "`/usr/bin/k0s`"),
    ("I(per host)", "*per host*"),
    ("B(must)", "**must**"),
    ("O(k0s_rollback=true)", "`k0s_rollback=true`"),
    ("V(a\\)b)", "`a)b`"),
    ("RV(changed)", "`changed`"),
    ("E(HOME)", "`HOME`"),
    ("M(fleetsplit.k0s.payload_split)", "`fleetsplit.k0s.payload_split`"),
    ("P(fleetsplit.k0s.k0s_release#action)", "`fleetsplit.k0s.k0s_release`"),
    ("L(k0s docs,https://docs.k0sproject.io)", "[k0s docs](https://docs.k0sproject.io)"),
    ("U(https://k0sproject.io)", "<https://k0sproject.io>"),
    ("R(the guide,ansible_collections.x.docsite)", "the guide"),
    ("C(controller|worker)", "`controller\\|worker`"),
    ("see C(<dir>/bin) and <dir>", "see `<dir>/bin` and \\<dir\\>"),
    ("Default: `<k0s> kubectl uncordon <node>`.", "Default: `<k0s> kubectl uncordon <node>`."),
    ("a_b and _c_", "a_b and \\_c\\_"),
    ("IC(x) stays", "IC(x) stays"),
])
def test_markup(role_readmes, source, markdown):
    assert role_readmes.markup(source) == markdown
