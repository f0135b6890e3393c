"""payload_split and payload_info through real ansible-playbook runs (check mode, diff, idempotence, reuse, errors)."""
import json
import os

from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import engines
from testlib import REPO, local_inventory, recap, run_playbook, sha256

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


def _dir_mtimes(*dirs):
    return [os.stat(d).st_mtime_ns for d in dirs]


def test_overlay_split_mtime_drift_is_a_change_and_no_change_writes_nothing(tmp_path, fixtures):
    """Issue 13 items 7 and 8, as the overlay runs it (payload_split into the image tree, pin_mtime on)."""
    fixture = fixtures["k0s-small-legacy"]
    root = tmp_path / "overlay"
    libexec, bindir = root / "usr" / "libexec" / "k0s", root / "usr" / "bin"
    args = dict(src=fixture["path"], dest=str(libexec), stripped_executable=str(bindir / "k0s"), pin_mtime=True,
                mode="0755")
    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and result["changed"], out
    pinned = result["pinned_mtime_ns"]

    # No change: changed=0, and not even a temp file came and went (directory mtimes pushed back first).
    for d in (libexec, bindir):
        os.utime(d, ns=(10 ** 18, 10 ** 18))
    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0 and result["retimed"] == [], out
    assert _dir_mtimes(libexec, bindir) == [10 ** 18, 10 ** 18]

    # Right content, wrong mtime: a change, reported in check mode without fixing it ...
    runc = libexec / "runc"
    os.utime(runc, ns=(pinned - 10 ** 9, pinned - 10 ** 9))
    inode = os.stat(runc).st_ino
    proc, out, result = split(tmp_path, args, "--check")
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 1, out
    assert result["retimed"] == [str(runc)] and [f["name"] for f in result["files"] if f["changed"]] == ["runc"]
    assert os.stat(runc).st_mtime_ns == pinned - 10 ** 9
    # ... and fixed for real by re-timing the same file (content not rewritten, nothing created beside it).
    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 1 and result["retimed"] == [str(runc)], out
    assert os.stat(runc).st_mtime_ns == pinned and os.stat(runc).st_ino == inode
    assert _dir_mtimes(libexec, bindir) == [10 ** 18, 10 ** 18]
    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out


def test_next_layout_images_split_apart_and_listed(tmp_path, fixtures):
    """Issue 13 item 4: bin/<name> entries are binaries, images/<name> bundles go to images_dest only."""
    fixture = fixtures["k0s-zip-next"]
    root = tmp_path / "cache"
    args = dict(src=fixture["path"], dest=str(root / "libexec"), stripped_executable=str(root / "bin" / "k0s"),
                streams_dest=str(root / "streams"), images_dest=str(root / "images"))
    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and result["changed"], out
    assert sorted(f["name"] for f in result["files"]) == sorted(fixture["binaries"])
    assert [(i["name"], i["sha256"], i["path"]) for i in result["images"]] == \
        [(n, b["sha256"], str(root / "images" / n)) for n, b in sorted(fixture["images"].items())]
    assert sorted(os.listdir(root / "libexec")) == sorted(fixture["binaries"])
    assert sorted(os.listdir(root / "streams" / "libexec")) == sorted(n + ".gz" for n in fixture["binaries"])
    manifest = json.loads((root / "streams" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["images"]] == sorted(fixture["images"]) and "retimed" not in manifest
    proc, out, result = split(tmp_path, args)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out

    (tmp_path / "info.yml").write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_info: {src: "{{ src }}", build_info: false}
      register: info
    - ansible.builtin.copy: {content: "{{ info | to_json }}", dest: "{{ out }}"}
""")
    evars = json.dumps(dict(src=fixture["path"], out=str(tmp_path / "info.json")))
    proc, out = run_playbook(local_inventory() + [tmp_path / "info.yml", "-e", evars], cwd=tmp_path)
    assert proc.returncode == 0, out
    info = json.loads((tmp_path / "info.json").read_text())
    assert [(i["name"], i["sha256"], i["method"]) for i in info["images"]] == \
        [(n, b["sha256"], "store") for n, b in sorted(fixture["images"].items())]
    assert sorted(f["name"] for f in info["files"]) == sorted(fixture["binaries"])


def _overlay(tmp_path, exe, root, *flags):
    evars = dict(k0s_executable=exe, k0s_controller_cache_dir=str(tmp_path / "cache"), k0s_overlay_root=str(root))
    return run_playbook([str(REPO / "playbooks/deploy_k0s.yml"), "-e", json.dumps(evars)] + list(flags), cwd=tmp_path)


def test_overlay_playbook_retimes_a_legacy_binary_in_check_and_real_mode(tmp_path, fixtures):
    """Issue 13 item 7 through the overlay play itself (its pinned-mtime assert included)."""
    fixture = fixtures["k0s-small-legacy"]
    root = tmp_path / "overlay"
    proc, out = _overlay(tmp_path, fixture["path"], root)
    assert proc.returncode == 0, out
    runc = root / "usr" / "libexec" / "k0s" / "runc"
    pinned = os.stat(fixture["path"]).st_mtime_ns
    os.utime(runc, ns=(pinned + 10 ** 9, pinned + 10 ** 9))
    proc, out = _overlay(tmp_path, fixture["path"], root, "--check")
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 1, out
    assert os.stat(runc).st_mtime_ns == pinned + 10 ** 9
    proc, out = _overlay(tmp_path, fixture["path"], root)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 1, out
    assert os.stat(runc).st_mtime_ns == pinned
    proc, out = _overlay(tmp_path, fixture["path"], root)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out


def test_overlay_playbook_takes_a_next_layout_k0s(tmp_path, fixtures):
    """bin/<name> binaries land in usr/libexec/k0s; the image bundle the executable carried is split apart in
    the controller cache and goes the airgap way (the stripped k0s has no payload to import it from):
    <data-dir>/images/ with the stable mtime, never next to the binaries."""
    fixture = fixtures["k0s-zip-next"]
    root = tmp_path / "overlay"
    proc, out = _overlay(tmp_path, fixture["path"], root)
    assert proc.returncode == 0, out
    assert sorted(os.listdir(root / "usr" / "libexec" / "k0s")) == sorted(fixture["binaries"])
    assert sorted(os.listdir(root / "var" / "lib" / "k0s" / "bin")) == sorted(fixture["binaries"])
    (entry,) = (tmp_path / "cache" / "split").iterdir()
    assert sorted(os.listdir(entry / "images")) == sorted(fixture["images"])
    assert sha256(entry / "images" / "fixture-bundle.tar") == fixture["images"]["fixture-bundle.tar"]["sha256"]
    placed = root / "var" / "lib" / "k0s" / "images" / "fixture-bundle.tar"
    assert [p.relative_to(root) for p in root.rglob("*.tar")] == [placed.relative_to(root)]
    assert sha256(placed) == fixture["images"]["fixture-bundle.tar"]["sha256"]
    mtime = placed.stat().st_mtime_ns
    proc, out = _overlay(tmp_path, fixture["path"], root)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out
    assert placed.stat().st_mtime_ns == mtime   # same file, same mtime: k0s does not import it again


def test_modules_report_the_deflate_engine(tmp_path, fixtures):
    """payload_info and payload_split return the engine that inflated (issue 19); the task's environment chooses it
    (FLEETSPLIT_DEFLATE_ENGINE); the split manifest leaves it out (any engine gives the same files)."""
    fixture = fixtures["k0s-small-legacy"]
    (tmp_path / "play.yml").write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.payload_info: {src: "{{ src }}", build_info: false}
      register: auto
    - fleetsplit.k0s.payload_info: {src: "{{ src }}", build_info: false}
      environment: {FLEETSPLIT_DEFLATE_ENGINE: zlib}
      register: plain
    - fleetsplit.k0s.payload_split: {src: "{{ src }}", streams_dest: "{{ streams }}"}
      environment: {FLEETSPLIT_DEFLATE_ENGINE: zlib}
      register: split
    - ansible.builtin.copy: {content: "{{ [auto, plain, split] | to_json }}", dest: "{{ out }}"}
""")
    evars = json.dumps(dict(src=fixture["path"], streams=str(tmp_path / "streams"), out=str(tmp_path / "r.json")))
    env_before = os.environ.pop(engines.ENV, None)
    try:
        proc, out = run_playbook(local_inventory() + [tmp_path / "play.yml", "-e", evars], cwd=tmp_path)
    finally:
        if env_before is not None:
            os.environ[engines.ENV] = env_before
    assert proc.returncode == 0, out
    auto, plain, split_ = json.loads((tmp_path / "r.json").read_text())
    assert auto["deflate_engine"]["name"] == engines.select("auto").name
    assert plain["deflate_engine"] == {"name": "zlib", "version": engines.get("zlib").version}
    assert split_["deflate_engine"]["name"] == "zlib"
    assert [f["sha256"] for f in auto["files"]] == [f["sha256"] for f in plain["files"]] == \
        [fixture["binaries"][n]["sha256"] for n in sorted(fixture["binaries"])]
    manifest = json.loads((tmp_path / "streams" / "manifest.json").read_text())
    assert "deflate_engine" not in manifest and manifest["format"] == "legacy"
