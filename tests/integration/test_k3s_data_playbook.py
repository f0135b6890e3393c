"""fleetsplit.k0s.k3s_data for real: ansible-playbook on localhost, the action uploading the bundle with one
put_file, every path of the module under pytest's tmp_path; the fixture k3s then started on the result."""
import json
import os

from k3slib import fixture_release, run_k3s
from testlib import load_fixtures, local_inventory, recap, run_playbook, tree_snapshot
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import write_bundle

PLAY = """
- name: k3s_data on localhost
  hosts: localhost
  gather_facts: false
  tasks:
    - name: What the host lacks
      fleetsplit.k0s.k3s_data:
        state: query
        data_dir: "{{ k3s.data_dir }}"
        bin_dir: "{{ k3s.bin_dir }}"
        store_dir: "{{ k3s.store_dir }}"
        data_hash: "{{ k3s.data_hash }}"
        members: "{{ k3s.members }}"
        executable: "{{ k3s.executable }}"
      register: k3s_query

    - name: Pre-stage the data tree and install k3s
      fleetsplit.k0s.k3s_data:
        data_dir: "{{ k3s.data_dir }}"
        bin_dir: "{{ k3s.bin_dir }}"
        store_dir: "{{ k3s.store_dir }}"
        data_hash: "{{ k3s.data_hash }}"
        k3s_version: "{{ k3s.version }}"
        members: "{{ k3s.members }}"
        executable: "{{ k3s.executable }}"
        bundle_src: "{{ k3s.bundle_src | default(omit) }}"
        bundle_members: "{{ k3s.bundle_members | default(omit) }}"
      register: k3s_present
      when: not (k3s.query_only | default(false))

    - name: Results for the test
      ansible.builtin.copy:
        content: "{{ {'q': k3s_query, 'r': k3s_present} | to_json }}"
        dest: "{{ k3s.out }}"
        mode: "0600"
      changed_when: false
      check_mode: false
"""


class Play(object):
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.play = tmp_path / "play.yml"
        self.play.write_text(PLAY)
        self.dirs = {"data_dir": str(self.root / "var/lib/rancher/k3s"), "bin_dir": str(self.root / "usr/local/bin"),
                     "store_dir": str(self.root / "var/lib/fleetsplit-k0s/k3s")}

    def run(self, rel, version, *extra, **k3s):
        k3s.update(self.dirs, data_hash=rel.data_hash, members=rel.members, executable=rel.exe, version=version,
                   out=str(self.tmp / "out.json"))
        evars = self.tmp / "vars.json"
        evars.write_text(json.dumps({"k3s": k3s}))
        proc, out = run_playbook(local_inventory() + [self.play, "-e", "@%s" % evars] + list(extra))
        res = json.loads((self.tmp / "out.json").read_text()) if (self.tmp / "out.json").exists() else None
        if (self.tmp / "out.json").exists():
            (self.tmp / "out.json").unlink()
        return proc, out, res

    def bundle(self, rel, names):
        b = write_bundle([(n, rel.streams[n]) for n in names], str(self.tmp / "bundles"))
        return {"bundle_src": b["path"], "bundle_members": b["members"]}


def test_deploy_rerun_check_mode_and_upgrade_through_ansible(tmp_path):
    fx = load_fixtures()
    play = Play(tmp_path)
    dummy, v1 = fixture_release(tmp_path, "k3s")
    proc, out, res = play.run(v1, fx["k3s"]["version"], query_only=True)
    assert proc.returncode == 0, out
    missing = res["q"]["missing"]
    assert "k3s" in missing and len(missing) > 3 and not play.root.exists()
    proc, out, res = play.run(v1, fx["k3s"]["version"], **play.bundle(v1, missing))
    assert proc.returncode == 0, out
    assert res["r"]["changed"] and res["r"]["current"] == v1.data_hash
    assert res["r"]["bundle_bytes"] == os.path.getsize(play.bundle(v1, missing)["bundle_src"])
    # Re-run: nothing missing, nothing changed.
    proc, out, res = play.run(v1, fx["k3s"]["version"])
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0 and res["q"]["up_to_date"] and res["q"]["missing"] == []
    # The fixture k3s uses the tree as it is.
    status, log = run_k3s(os.path.join(play.dirs["bin_dir"], "k3s"), play.dirs["data_dir"])
    assert status["extracted"] is False and status["dir"].endswith(v1.data_hash), log
    # Check mode with diff for the upgrade: reported, nothing written (no bundle is uploaded in check mode).
    dummy, v2 = fixture_release(tmp_path, "k3s-v2")
    before = tree_snapshot(play.root)
    proc, out, res = play.run(v2, fx["k3s-v2"]["version"], "--check", "--diff", **play.bundle(v2, ["k3s"]))
    assert proc.returncode == 0, out
    assert res["r"]["changed"] and "bundle_bytes" not in res["r"]
    assert "-current: %s\n-previous: None\n+current: %s\n+previous: %s\n" % (v1.data_hash, v2.data_hash, v1.data_hash) in out
    assert tree_snapshot(play.root) == before
    # The upgrade: only what changed travels.
    proc, out, res = play.run(v2, fx["k3s-v2"]["version"], query_only=True)
    missing = res["q"]["missing"]
    assert len(missing) == 3 and "k3s" in missing, missing   # runc, bin/.sha256sums, the executable
    proc, out, res = play.run(v2, fx["k3s-v2"]["version"], **play.bundle(v2, missing))
    assert proc.returncode == 0, out
    assert res["r"]["current"] == v2.data_hash and res["r"]["previous"] == v1.data_hash
    status, log = run_k3s(os.path.join(play.dirs["bin_dir"], "k3s"), play.dirs["data_dir"])
    assert status["extracted"] is False and status["version"] == fx["k3s-v2"]["version"], log


def test_escaping_member_fails_the_task_before_any_change(tmp_path):
    play = Play(tmp_path)
    dummy, v1 = fixture_release(tmp_path, "k3s")
    v1.members.append({"path": "bin/../../escape", "type": "file", "mode": 0o755, "size": 1, "sha256": "0" * 64})
    proc, out, res = play.run(v1, "v1.31.4+k3s1")
    assert proc.returncode != 0
    assert "members[" in out and "'bin/../../escape' escapes" in out
    assert not play.root.exists()
