"""pyelftools is the inspection's reference ELF parser (payload_info, `k0s-payload info`); the split reads the ELF
headers with payload/elfheaders.py. Without pyelftools the inspection says what to install instead of dying with a
traceback, and the split still works, deriving the same facts. "Without" is this venv's own interpreter run with -S
(no site-packages): the same Python, only the library is out of reach, whatever else this machine has installed."""
import json
import os
import subprocess
import sys

import pytest

from testlib import REPO, recap, run_playbook

CLI = str(REPO / "scripts" / "k0s-payload")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """Directory holding `python3`, this interpreter without site-packages; checks it lacks pyelftools."""
    bindir = tmp_path_factory.mktemp("bare-python")
    wrapper = bindir / "python3"
    wrapper.write_text('#!/bin/sh\nexec "%s" -S "$@"\n' % sys.executable)
    wrapper.chmod(0o755)
    probe = subprocess.run([str(wrapper), "-c", "import elftools"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "elftools" in probe.stderr, "the test needs a python without pyelftools"
    return bindir


def _cli(argv, env=None):
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_info_names_what_to_install(bare_python, fixtures):
    exe = fixtures["k0s-small-zip"]["path"]
    # As `python3 scripts/k0s-payload` and as `scripts/k0s-payload` (its bash line runs python3 from PATH).
    env = dict(os.environ, PATH="%s:%s" % (bare_python, os.environ.get("PATH", "")))
    for argv in ([str(bare_python / "python3"), CLI], [CLI]):
        rc, out, err = _cli(argv + ["info", exe], env=env)
        assert rc == 2 and out == "", (rc, out, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "pip install pyelftools" in err and ".venv/bin/python" in err, err


def test_cli_split_needs_no_pyelftools(tmp_path, bare_python, fixtures):
    fx = fixtures["k0s-small-zip"]
    stripped = tmp_path / "k0s"
    rc, out, err = _cli([str(bare_python / "python3"), CLI, "split", fx["path"], "--stripped", str(stripped),
                         "--dest", str(tmp_path / "libexec"), "--json"])
    assert rc == 0, err
    with open(fx["bare_path"], "rb") as want:
        assert stripped.read_bytes() == want.read(), "the stripped k0s differs from the fixture's bare build"
    files = dict((f["name"], f["sha256"]) for f in json.loads(out)["files"])
    assert files == dict((n, b["sha256"]) for n, b in fx["binaries"].items())


def test_cli_works_with_pyelftools(fixtures):
    rc, out, err = _cli([sys.executable, CLI, "info", fixtures["k0s-small-zip"]["path"], "--json"])
    assert rc == 0, err
    assert json.loads(out)["format"] == "zip"


PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_info:
        src: "{{ src }}"
      register: info
      ignore_errors: true
    - fleetsplit.k0s.payload_split:
        src: "{{ src }}"
        dest: "{{ dest }}"
      register: split
      ignore_errors: true
    - ansible.builtin.copy:
        content: "{{ {'info': info, 'split': split} | to_json }}"
        dest: "{{ out }}"
"""


def test_info_reports_missing_required_lib_and_split_goes_on(tmp_path, bare_python, fixtures):
    (tmp_path / "play.yml").write_text(PLAY)
    out = tmp_path / "result.json"
    fx = fixtures["k0s-small-zip"]
    evars = dict(src=fx["path"], dest=str(tmp_path / "libexec"), out=str(out))
    proc, output = run_playbook(["-i", "localhost,", "-c", "local",
                                 "-e", "ansible_python_interpreter=%s" % (bare_python / "python3"),
                                 tmp_path / "play.yml", "-e", json.dumps(evars)], cwd=tmp_path)
    assert proc.returncode == 0, output
    assert recap(output)["localhost"]["ignored"] == 1, output
    result = json.loads(out.read_text())
    assert result["info"]["failed"], result["info"]
    assert result["info"]["msg"].startswith("Failed to import the required Python library (pyelftools)"), result["info"]
    assert not result["split"].get("failed"), result["split"]
    assert sorted(p.name for p in (tmp_path / "libexec").iterdir()) == sorted(fx["binaries"])


def test_split_without_pyelftools_derives_the_same_facts(tmp_path, bare_python, fixtures):
    # The facts always come from the executable (never from an earlier manifest): with and without pyelftools the
    # same executable gives the same split.
    (tmp_path / "play.yml").write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_split: {src: "{{ src }}", streams_dest: "{{ streams }}", reuse_manifest: true}
      register: split
    - ansible.builtin.copy: {content: "{{ split | to_json }}", dest: "{{ out }}"}
""")
    out = tmp_path / "result.json"
    facts = {}
    for python in (sys.executable, bare_python / "python3"):
        evars = json.dumps(dict(src=fixtures["k0s-small-zip"]["path"], streams=str(tmp_path / "streams"), out=str(out)))
        proc, output = run_playbook(["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % python,
                                     tmp_path / "play.yml", "-e", evars], cwd=tmp_path)
        assert proc.returncode == 0, output
        res = json.loads(out.read_text())
        facts[str(python)] = (res["format"], res["payload_offset"], res["elf_machine"], res["stripped_executable"]["sha256"],
                              sorted((f["name"], f["sha256"], f["stream_sha256"]) for f in res["files"]))
    assert len(set(map(repr, facts.values()))) == 1, facts
