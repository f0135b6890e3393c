"""The compact module transport through ansible-playbook for real (local connection): pipelined (stdin) and not
(a request file in the task's remote temp dir, removed after), the AnsiballZ path it falls back to, check mode,
the token kept out of -vvv output in every form, and refusals."""
import json

import pytest

from testlib import local_inventory, make_join_token, run_playbook

TOKEN = make_join_token(b"ca bytes", token="abcdef.0123456789secret")

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Write
      fleetsplit.k0s.k0s_join_token:
        path: "{{ dest }}"
        token: "{{ lookup('ansible.builtin.file', src) }}"
      register: written
    - name: Again
      fleetsplit.k0s.k0s_join_token:
        path: "{{ dest }}"
        token: "{{ lookup('ansible.builtin.file', src) }}"
      register: again
    - name: Query
      fleetsplit.k0s.k0s_join_token:
        state: query
        data_dir: "{{ dest | dirname }}"
      register: queried
    - name: Results
      ansible.builtin.copy:
        content: "{{ {'written': written, 'again': again, 'queried': queried} | to_json }}"
        dest: "{{ report }}"
        mode: "0600"
      check_mode: false
"""


def run(tmp_path, *extra, check=False):
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    src = tmp_path / "token"
    src.write_text(TOKEN)
    remote_tmp = tmp_path / "remote-tmp"
    args = local_inventory() + ["-vvv", play, "-e", "dest=%s" % (tmp_path / "out" / "k0stoken"), "-e", "src=%s" % src,
                                "-e", "report=%s" % (tmp_path / "report.json"), "-e", "ansible_remote_tmp=%s" % remote_tmp]
    proc, out = run_playbook(args + list(extra) + (["--check"] if check else []))
    assert TOKEN not in out and "0123456789secret" not in out
    report = json.loads((tmp_path / "report.json").read_text()) if proc.returncode == 0 else None
    return proc, out, report, remote_tmp


@pytest.mark.parametrize("pipelining", [True, False])
def test_compact_transport_both_ways(tmp_path, pipelining):
    proc, out, report, remote_tmp = run(tmp_path, "-e", "ansible_pipelining=%s" % pipelining)
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "out" / "k0stoken").read_text() == TOKEN + "\n"
    w, a, q = report["written"], report["again"], report["queried"]
    assert w["changed"] is True and a["changed"] is False and q["k0s_cluster"]["kubelet_conf"] is False
    # Compact: the request is a few KB, not an AnsiballZ payload; pipelined it never touches the remote temp dir.
    assert 2000 < w["transport_bytes"] < 20000, w["transport_bytes"]
    assert ("k0s_join_token.request.z" in out) is (not pipelining)
    assert "AnsiballZ_k0s_join_token" not in out
    leftovers = [p for p in remote_tmp.rglob("*") if p.is_file()] if remote_tmp.exists() else []
    assert leftovers == [], "the request file is removed with the task's temp dir"


def test_ansiballz_fallback_gives_the_same_results(tmp_path):
    proc, out, report = run(tmp_path, "-e", "k0s_module_transport=ansiballz")[:3]
    assert proc.returncode == 0, out[-3000:]
    assert "AnsiballZ_k0s_join_token" in out or "_ansiballz" in out.lower() or "ANSIBALLZ" in out
    w, a = report["written"], report["again"]
    assert "transport_bytes" not in w and w["changed"] is True and a["changed"] is False
    # AnsibleModule adds the file attributes of a returned "path" (add_path_info); the rest is the same.
    assert {"changed", "changes", "path"} <= set(w) and w["changes"] == [
        "wrote the join token to %s (mode 0600)" % (tmp_path / "out" / "k0stoken")]


def test_check_mode_and_refusals(tmp_path):
    proc, out, report = run(tmp_path, check=True)[:3]
    assert proc.returncode == 0 and report["written"]["changed"] is True, out[-3000:]
    assert not (tmp_path / "out").exists(), "check mode wrote nothing"
    proc, out = run(tmp_path, "-e", "k0s_module_transport=telepathy")[:2]
    assert proc.returncode != 0 and "k0s_module_transport must be one of compact, ansiballz, got 'telepathy'" in out
