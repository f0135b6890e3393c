"""A k3s executable through payload_split, payload_info and stream_bundle in real ansible-playbook runs: the result
contract the k3s role and k3s_data consume, check mode, idempotence, and a bad archive failing the task."""
import json

from testlib import local_inventory, recap, run_playbook, sha256

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_split: "{{ split_args }}"
      register: split
    - fleetsplit.k0s.payload_info:
        src: "{{ split_args.src }}"
      register: info
    - fleetsplit.k0s.stream_bundle:
        split: "{{ split }}"
        names: "{{ [split.files[0].name, 'k3s'] }}"
      register: bundle
      when: not ansible_check_mode
    - ansible.builtin.copy:
        content: "{{ dict(split=split, info=info, bundle=bundle) | to_json }}"
        dest: "{{ out }}"
      check_mode: false
      changed_when: false
"""


def run(tmp_path, args, *flags):
    (tmp_path / "play.yml").write_text(PLAY)
    out = tmp_path / "result.json"
    if out.exists():
        out.unlink()
    proc, output = run_playbook(local_inventory() + [tmp_path / "play.yml", "-e",
                                                     json.dumps(dict(split_args=args, out=str(out)))] + list(flags),
                                cwd=tmp_path)
    return proc, output, json.loads(out.read_text()) if out.exists() else None


def test_k3s_split_info_and_bundle(tmp_path, fixtures):
    fixture = fixtures["k3s"]
    cache = tmp_path / "cache"
    args = dict(src=fixture["path"], streams_dest=str(cache / "streams"), dest=str(tmp_path / "datadir"))
    proc, out, res = run(tmp_path, args, "--check")
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 1 and not cache.exists() and not (tmp_path / "datadir").exists()

    proc, out, res = run(tmp_path, args)
    assert proc.returncode == 0 and res["split"]["changed"], out
    split = res["split"]
    assert split["format"] == "k3s" and split["k3s_version"] == fixture["version"]
    assert split["data_hash"] == fixture["data_hash"] and split["archive"]["sha256"] == fixture["data_hash"]
    assert split["data_dir"]["changed"] and split["elf_machine"] == "x86_64"
    exe = split["stripped_executable"]
    assert exe["name"] == "k3s" and exe["sha256"] == fixture["sha256"] and exe["stream"].endswith("/bin/k3s.gz")
    for item in split["files"]:
        assert item["stream"] == str(cache / "streams" / "k3s" / (item["name"] + ".gz"))
        assert sha256(item["stream"]) == item["stream_sha256"]
    members = dict((m["path"], m) for m in split["members"])
    assert members["bin/kubectl"] == {"path": "bin/kubectl", "type": "symlink", "mode": 511, "size": None,
                                      "sha256": None, "target": "k3s"}
    assert members["bin/runc"]["sha256"] == fixture["members"]["bin/runc"]["sha256"]
    info = res["info"]
    assert info["format"] == "k3s" and info["members"] == split["members"] and info["archive"] == split["archive"]
    assert info["stripped_executable"]["sha256"] == fixture["sha256"]
    bundle = res["bundle"]
    assert [m["name"] for m in bundle["members"]] == sorted([split["files"][0]["name"], "k3s"])

    proc, out, res = run(tmp_path, args)
    assert proc.returncode == 0 and not res["split"]["changed"] and res["split"]["healed"] == [], out


def test_k3s_bad_archive_fails_the_task(tmp_path, fixtures):
    proc, out, res = run(tmp_path, dict(src=fixtures["k3s-bad-hash"]["path"], dest=str(tmp_path / "d")))
    assert proc.returncode != 0 and "its name is not its hash" in out and not (tmp_path / "d").exists()
