"""payload_split and payload_info through real ansible-playbook runs (check mode, diff, idempotence, reuse, errors)."""
import json
import os

from testlib import local_inventory, recap, run_playbook, sha256

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_split: "{{ split_args }}"
      register: split
    - ansible.builtin.copy:
        content: "{{ split | to_json }}"
        dest: "{{ out }}"
      check_mode: false
      changed_when: false
"""


def split(tmp_path, args, *flags):
    (tmp_path / "play.yml").write_text(PLAY)
    out = tmp_path / "result.json"
    if out.exists():
        out.unlink()
    evars = dict(split_args=args, out=str(out))
    proc, output = run_playbook(local_inventory() + [tmp_path / "play.yml", "-e", json.dumps(evars)]
                                + list(flags), cwd=tmp_path)
    result = json.loads(out.read_text()) if out.exists() else None
    return proc, output, result


def test_split_module_check_diff_idempotence_and_reuse(tmp_path, fixtures):
    fixture = fixtures["k0s-small-legacy"]
    root = tmp_path / "cache"
    args = dict(src=fixture["path"], dest=str(root / "libexec"), stripped_executable=str(root / "bin" / "k0s"),
                streams_dest=str(root / "streams"))
    proc, out, result = split(tmp_path, args, "--check", "--diff")
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 1 and not root.exists()
    assert "+runc %s" % fixture["binaries"]["runc"]["sha256"] in out        # the diff names binary and hash

    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and result["changed"] and result["format"] == "legacy", out
    assert "legacy_note" in result and result["pinned_mtime_ns"] == os.stat(fixture["path"]).st_mtime_ns
    for item in result["files"]:
        assert sha256(item["path"]) == fixture["binaries"][item["name"]]["sha256"]
        assert os.stat(item["path"]).st_mtime_ns == result["pinned_mtime_ns"]
    manifest = root / "streams" / "manifest.json"
    before = manifest.read_bytes()

    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and not result["changed"] and result["healed"] == [], out
    assert manifest.read_bytes() == before          # no per-run flags in the manifest

    # reuse_manifest is deprecated: accepted, warned about, and the facts still come from src.
    reuse = dict(args, reuse_manifest=True)
    proc, out, result = split(tmp_path, reuse)
    assert proc.returncode == 0 and not result["changed"] and "reuse_manifest is deprecated and ignored" in out, out
    assert [f["sha256"] for f in result["files"]] == [fixture["binaries"][n]["sha256"] for n in sorted(fixture["binaries"])]
    # A damaged cache entry is not trusted: the split runs again and repairs it, and says so.
    runc_gz = root / "streams" / "libexec" / "runc.gz"
    with open(runc_gz, "r+b") as f:
        f.truncate(100)
    proc, out, result = split(tmp_path, reuse)
    assert result["changed"] and result["healed"] == [str(runc_gz)], out
    assert ("%s were rewritten" % runc_gz).replace(" ", "") in "".join(out.split())    # however Ansible wraps it
    runc = [f for f in result["files"] if f["name"] == "runc"][0]
    assert os.path.getsize(runc_gz) == runc["stream_size"] and sha256(runc_gz) == runc["stream_sha256"]


def test_split_module_errors_name_the_problem(tmp_path, fixtures):
    notelf = tmp_path / "k0s"
    notelf.write_text("#!/bin/sh\n")
    proc, out, dummy = split(tmp_path, dict(src=str(notelf), dest=str(tmp_path / "d")))
    assert proc.returncode != 0 and "is not an ELF executable" in out
    proc, out, dummy = split(tmp_path, dict(src=fixtures["k0s-small-zip"]["bare_path"], dest=str(tmp_path / "d")))
    assert proc.returncode != 0 and "no embedded payload" in out
    proc, out, dummy = split(tmp_path, dict(src=fixtures["k0s-small-zip"]["path"]))
    assert proc.returncode != 0 and "one of the following is required" in out
    assert not (tmp_path / "d").exists()


def test_info_module_reports_build_info(tmp_path, fixtures):
    fixture = fixtures["k0s-small-zip"]
    (tmp_path / "play.yml").write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_info:
        src: "{{ src }}"
      register: info
    - ansible.builtin.copy: {content: "{{ info | to_json }}", dest: "{{ out }}"}
""")
    evars = json.dumps(dict(src=fixture["path"], out=str(tmp_path / "info.json")))
    proc, out = run_playbook(local_inventory() + [tmp_path / "play.yml", "-e", evars], cwd=tmp_path)
    assert proc.returncode == 0, out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["format"] == "zip" and info["k0s_version"] == fixture["version"] and not info["changed"]
    by_name = dict((f["name"], f) for f in info["files"])
    assert by_name["runc"]["sha256"] == fixture["binaries"]["runc"]["sha256"]
    assert by_name["runc"]["go_build_info"]["path"] == "github.com/opencontainers/runc"
    assert by_name["xtables-nft-multi"]["go_build_info"] is None
    assert info["stripped_executable"]["go_build_info"]["go_version"].startswith("go1.")
    assert info["stripped_executable"]["size"] == os.path.getsize(fixture["bare_path"])
