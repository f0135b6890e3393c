"""Pull distribution (issue 17) with real ansible-playbook runs: fleetsplit.k0s.publish_k0s writes the tree from the real
fixtures, a real HTTP mirror on 127.0.0.1 (tests/mirrorlib.py) serves it, and the install role runs on local hosts
(each its own store, bin, libexec and data dirs under tmp_path), one with push and two with pull in the same play.

What the molecule scenario `pull` proves on real hosts over the test network, this proves on this machine: the
pull hosts fetch exactly the streams they lack (the mirror's log), the push host gets its bundle, a re-run makes
zero mirror requests, an upgrade fetches only the changed streams, a corrupted stream is refused with nothing
switched, a vanished mirror fails clearly and a re-run converges.
"""
import hashlib
import json
import os

import pytest

from mirrorlib import Mirror
from testlib import FIXTURES, load_fixtures, local_host_vars, recap, run_playbook

INSTALL_PLAY = """
- hosts: all
  gather_facts: false
  roles:
    - role: fleetsplit.k0s.split
    - role: fleetsplit.k0s.install
"""


def _inventory(tmp_path, url, pull=("p1", "p2"), push=("h1",), **extra):
    hosts = {}
    for h in list(push) + list(pull):
        hosts[h] = local_host_vars(tmp_path / h)
        if h in pull:
            hosts[h].update(dict(k0s_distribution="pull", k0s_mirror_url=url, k0s_mirror_retries=1,
                                 k0s_mirror_timeout=2), **extra)
    path = tmp_path / "inv.json"
    path.write_text(json.dumps({"k0s_workers": {"hosts": hosts}}))
    return path


def _publish(tmp_path, fixture, *args):
    p, out = run_playbook(["-i", "localhost,", "-c", "local", "fleetsplit.k0s.publish_k0s",
                           "-e", json.dumps(dict(k0s_executable=str(FIXTURES / fixture),
                                                 k0s_publish_dest=str(tmp_path / "tree"),
                                                 k0s_controller_cache_dir=str(tmp_path / "cache")))] + list(args),
                          cwd=tmp_path)
    return p, out


def _install(tmp_path, inv, fixture):
    (tmp_path / "install.yml").write_text(INSTALL_PLAY)
    return run_playbook(["-i", inv, tmp_path / "install.yml",
                         "-e", json.dumps(dict(k0s_executable=str(FIXTURES / fixture),
                                               k0s_controller_cache_dir=str(tmp_path / "cache")))], cwd=tmp_path)


def _streams(tmp_path, fixture):
    """{name: stream sha256} of a fixture's split, from the published release index."""
    for rel in (tmp_path / "tree" / "releases").iterdir():
        doc = json.loads(rel.read_text())
        if doc["k0s_version"] == load_fixtures()[fixture]["version"] and doc["split_format"] == "zip":
            out = dict((f["name"], f["stream_sha256"]) for f in doc["files"])
            out["k0s"] = doc["stripped_executable"]["stream_sha256"]
            if fixture_id(tmp_path, fixture) == rel.name[:-5]:
                return out
    raise AssertionError("release of %s not published" % fixture)


def fixture_id(tmp_path, fixture):
    """The split id (stripped executable sha256) of a fixture: the cache's bin/k0s."""
    src = hashlib.sha256((FIXTURES / fixture).read_bytes()).hexdigest()
    return hashlib.sha256((tmp_path / "cache" / "split" / src / "bin" / "k0s").read_bytes()).hexdigest()


def _current(tmp_path, host):
    link = tmp_path / host / "store" / "current"
    return os.readlink(str(link)) if os.path.lexists(str(link)) else None


def test_publish_tree_is_content_addressed_and_idempotent(tmp_path):
    p, out = _publish(tmp_path, "k0s-small-zip")
    assert recap(out)["localhost"]["failed"] == 0, out
    tree = tmp_path / "tree"
    blobs = sorted(x.name for x in (tree / "blobs" / "sha256").iterdir())
    for b in blobs:   # every blob is named by its own sha256, world-readable for the web server
        data = (tree / "blobs" / "sha256" / b).read_bytes()
        assert hashlib.sha256(data).hexdigest() == b
        assert oct((tree / "blobs" / "sha256" / b).stat().st_mode & 0o777) == "0o644"
    want = _streams(tmp_path, "k0s-small-zip")
    assert sorted(want.values()) == blobs
    index = json.loads((tree / "index.json").read_text())
    assert index["releases"] == [dict(id=fixture_id(tmp_path, "k0s-small-zip"), goarch="amd64",
                                      k0s_version=load_fixtures()["k0s-small-zip"]["version"])]
    before = {x: x.stat().st_mtime_ns for x in tree.rglob("*")}
    p, out = _publish(tmp_path, "k0s-small-zip")
    assert recap(out)["localhost"]["changed"] == 0 and recap(out)["localhost"]["failed"] == 0, out
    assert {x: x.stat().st_mtime_ns for x in tree.rglob("*")} == before
    # A blob with the right name and other bytes is replaced and reported; a second release joins the index.
    p, out = _publish(tmp_path, "k0s-small-zip-v2", "--diff")
    assert recap(out)["localhost"]["failed"] == 0 and "+blobs/sha256/" in out, out
    victim = tree / "blobs" / "sha256" / want["runc"]
    victim.write_bytes(b"not the stream")
    p, out = _publish(tmp_path, "k0s-small-zip")
    assert recap(out)["localhost"]["changed"] == 1, out
    # ansible-core 2.16 wraps warnings anywhere, also inside the path: compare without white space.
    assert ("replaced %s: it had other bytes" % victim).replace(" ", "") in "".join(out.split()), out
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == want["runc"]
    assert len(json.loads((tree / "index.json").read_text())["releases"]) == 2


def test_publish_refuses_missing_dest_and_shell_strings(tmp_path):
    p, out = run_playbook(["-i", "localhost,", "-c", "local", "fleetsplit.k0s.publish_k0s",
                           "-e", "k0s_executable=%s" % (FIXTURES / "k0s-small-zip")], cwd=tmp_path)
    assert p.returncode != 0 and "Set k0s_publish_dest" in out, out
    p, out = _publish(tmp_path, "k0s-small-zip", "-e", '{"k0s_publish_sync_command": "rsync -a {dest} x:"}')
    assert p.returncode != 0 and "must be a list of strings" in out, out
    assert not (tmp_path / "tree").exists()


def test_publish_sync_command_gets_the_tree(tmp_path):
    copy = tmp_path / "copy"
    p, out = _publish(tmp_path, "k0s-small-zip", "-e",
                      json.dumps({"k0s_publish_sync_command": ["cp", "-a", "--", "{dest}", str(copy)]}))
    assert recap(out)["localhost"]["failed"] == 0, out
    assert (copy / "index.json").read_bytes() == (tmp_path / "tree" / "index.json").read_bytes()


def test_mixed_push_and_pull_fleet_fetches_only_what_is_missing(tmp_path):
    load_fixtures()
    p, out = _publish(tmp_path, "k0s-small-zip")
    assert recap(out)["localhost"]["failed"] == 0, out
    p, out = _publish(tmp_path, "k0s-small-zip-v2")
    assert recap(out)["localhost"]["failed"] == 0, out
    v1, v2 = _streams(tmp_path, "k0s-small-zip"), _streams(tmp_path, "k0s-small-zip-v2")
    with Mirror(tmp_path / "tree") as m:
        inv = _inventory(tmp_path, m.url)
        p, out = _install(tmp_path, inv, "k0s-small-zip")
        rc = recap(out)
        assert all(rc[h]["failed"] == 0 for h in ("h1", "p1", "p2")), out
        # Each pull host fetched every stream exactly once; the push host nothing from the mirror.
        assert sorted(m.blob_requests()) == sorted(list(v1.values()) * 2), m.log
        for h in ("h1", "p1", "p2"):
            assert _current(tmp_path, h) and (tmp_path / h / "bin" / "k0s").exists()
            assert not list((tmp_path / h / "store" / "incoming").glob("*")) if \
                (tmp_path / h / "store" / "incoming").exists() else True
        # Re-run: nothing changes and the mirror sees no request at all.
        del m.log[:]
        p, out = _install(tmp_path, inv, "k0s-small-zip")
        assert all(recap(out)[h]["changed"] == 0 and recap(out)[h]["failed"] == 0 for h in ("h1", "p1", "p2")), out
        assert m.log == []
        # Upgrade: only the streams whose content changed, once per pull host.
        changed = sorted(s for n, s in v2.items() if v1.get(n) != s)
        assert 0 < len(changed) < len(v2)
        p, out = _install(tmp_path, inv, "k0s-small-zip-v2")
        assert all(recap(out)[h]["failed"] == 0 for h in ("h1", "p1", "p2")), out
        assert sorted(m.blob_requests()) == sorted(changed * 2), m.log
        assert _current(tmp_path, "p1") == _current(tmp_path, "h1")


# The faults are handled by the host library (mirror_fetch, stdlib); the playbook path is the one the other pull tests
# run under both ansible-core ends.
@pytest.mark.newest_core_only
def test_corrupt_truncated_and_vanished_mirror_switch_nothing_then_converge(tmp_path):
    load_fixtures()
    p, out = _publish(tmp_path, "k0s-small-zip")
    p, out = _publish(tmp_path, "k0s-small-zip-v2")
    v1, v2 = _streams(tmp_path, "k0s-small-zip"), _streams(tmp_path, "k0s-small-zip-v2")
    changed = sorted(s for n, s in v2.items() if v1.get(n) != s)
    with Mirror(tmp_path / "tree") as m:
        inv = _inventory(tmp_path, m.url, pull=("p1",), push=())
        p, out = _install(tmp_path, inv, "k0s-small-zip")
        assert recap(out)["p1"]["failed"] == 0, out
        cur = _current(tmp_path, "p1")
        # Corrupted: refused at once (never retried), naming the stream, the URL and both hashes.
        m.faults["corrupt"] = set(changed)
        del m.log[:]
        p, out = _install(tmp_path, inv, "k0s-small-zip-v2")
        assert recap(out)["p1"]["failed"] == 1, out
        flat = " ".join(out.split())
        assert "served other bytes for the stream of" in flat and "/blobs/sha256/" in flat, out
        assert "nothing was switched" in flat
        assert _current(tmp_path, "p1") == cur
        assert len(m.blob_requests()) == 1   # the first corrupted stream ends the run
        # Truncated: retried (k0s_mirror_retries=1), then a clear error; still nothing switched.
        m.faults.clear()
        m.faults["truncate"] = set(changed)
        p, out = _install(tmp_path, inv, "k0s-small-zip-v2")
        flat = " ".join(out.split())
        assert recap(out)["p1"]["failed"] == 1 and "truncated" in flat and "after 2 attempts" in flat, out
        assert _current(tmp_path, "p1") == cur
        url = m.url
        m.faults.clear()
    # The mirror is gone: a clear error after the retries, nothing switched.
    p, out = _install(tmp_path, inv, "k0s-small-zip-v2")
    flat = " ".join(out.split())
    assert recap(out)["p1"]["failed"] == 1 and "could not fetch the stream for" in flat and url in flat, out
    assert _current(tmp_path, "p1") == cur
    # The mirror is back (another port: the inventory follows it): the re-run converges.
    with Mirror(tmp_path / "tree") as m2:
        inv = _inventory(tmp_path, m2.url, pull=("p1",), push=())
        p, out = _install(tmp_path, inv, "k0s-small-zip-v2")
        assert recap(out)["p1"]["failed"] == 0, out
        assert _current(tmp_path, "p1") != cur
        assert sorted(m2.blob_requests()) == changed


def test_credentials_never_reach_the_output(tmp_path):
    load_fixtures()
    _publish(tmp_path, "k0s-small-zip")
    secret = "Bearer s3cr3t-t0ken-%s" % os.getpid()
    with Mirror(tmp_path / "tree") as m:
        m.faults["corrupt"] = set(_streams(tmp_path, "k0s-small-zip").values())
        inv = _inventory(tmp_path, m.url, pull=("p1",), push=(), k0s_mirror_headers={"Authorization": secret})
        p, out = _install(tmp_path, inv, "k0s-small-zip")
        assert recap(out)["p1"]["failed"] == 1, out
        assert m.log and all(e["headers"].get("Authorization") == secret for e in m.log)
        p2, out2 = run_playbook(["-vvv", "-i", inv, tmp_path / "install.yml",
                                 "-e", json.dumps(dict(k0s_executable=str(FIXTURES / "k0s-small-zip"),
                                                       k0s_controller_cache_dir=str(tmp_path / "cache")))],
                                cwd=tmp_path)
    assert "s3cr3t" not in out and "s3cr3t" not in out2
    # A URL with credentials is refused by the query, before anything on the host changes, without echoing them.
    inv = _inventory(tmp_path, "https://user:pa55word@127.0.0.1:9/k0s", pull=("p9",), push=())
    p, out = _install(tmp_path, inv, "k0s-small-zip")
    assert recap(out)["p9"]["failed"] == 1 and "carries credentials" in out, out
    assert "pa55word" not in out
    assert not (tmp_path / "p9" / "store" / "current").exists()


@pytest.mark.parametrize("url,extra,words", [
    ("ftp://127.0.0.1/x", {}, "not an http:// or https:// URL"),
    ("", {}, "needs k0s_mirror_url"),
    ("https://127.0.0.1:9", {"k0s_mirror_ca_file": "/nonexistent/ca.pem"}, "does not exist on the host"),
    ("http://127.0.0.1:9", {"k0s_distribution": "pul"}, "k0s_distribution"),
])
def test_bad_mirror_options_fail_before_any_change(tmp_path, url, extra, words):
    load_fixtures()
    inv = _inventory(tmp_path, url, pull=("p1",), push=(), **extra)
    p, out = _install(tmp_path, inv, "k0s-small-zip")
    assert recap(out)["p1"]["failed"] == 1 and words in " ".join(out.split()), out
    assert not (tmp_path / "p1" / "store" / "releases").exists()


STAGED_PLAY = """
- hosts: all
  gather_facts: false
  roles:
    - role: fleetsplit.k0s.split
  tasks:
    - name: Stage (the upgrade role's way)
      ansible.builtin.include_role:
        name: fleetsplit.k0s.install
      vars:
        k0s_install_switch: false
    - name: Record what was staged
      ansible.builtin.copy:
        content: "{{ {'missing': k0s_install_query.missing,
                      'current': lookup('ansible.builtin.pipe', 'readlink ' ~ k0s_store_dir ~ '/current || true')} | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0600"
    - name: Switch
      ansible.builtin.include_role:
        name: fleetsplit.k0s.install
        tasks_from: switch.yml
"""


def test_check_mode_and_staged_upgrade_pull(tmp_path):
    """--check asks the mirror nothing and writes nothing; the upgrade role's stage-then-switch fetches while
    staging (before the switch) and the switch needs no request."""
    load_fixtures()
    _publish(tmp_path, "k0s-small-zip")
    _publish(tmp_path, "k0s-small-zip-v2")
    v1, v2 = _streams(tmp_path, "k0s-small-zip"), _streams(tmp_path, "k0s-small-zip-v2")
    changed = sorted(s for n, s in v2.items() if v1.get(n) != s)
    (tmp_path / "out").mkdir()
    (tmp_path / "staged.yml").write_text(STAGED_PLAY)
    with Mirror(tmp_path / "tree") as m:
        inv = _inventory(tmp_path, m.url, pull=("p1",), push=())
        (tmp_path / "install.yml").write_text(INSTALL_PLAY)
        p, out = run_playbook(["--check", "--diff", "-i", inv, tmp_path / "install.yml",
                               "-e", json.dumps(dict(k0s_executable=str(FIXTURES / "k0s-small-zip"),
                                                     k0s_controller_cache_dir=str(tmp_path / "cache")))], cwd=tmp_path)
        assert recap(out)["p1"]["failed"] == 0 and recap(out)["p1"]["changed"] > 0, out
        assert m.log == [] and not (tmp_path / "p1" / "store" / "releases").exists()
        p, out = _install(tmp_path, inv, "k0s-small-zip")
        assert recap(out)["p1"]["failed"] == 0, out
        cur = _current(tmp_path, "p1")
        del m.log[:]
        p, out = run_playbook(["-i", inv, tmp_path / "staged.yml",
                               "-e", json.dumps(dict(k0s_executable=str(FIXTURES / "k0s-small-zip-v2"),
                                                     out_dir=str(tmp_path / "out"),
                                                     k0s_controller_cache_dir=str(tmp_path / "cache")))], cwd=tmp_path)
        assert recap(out)["p1"]["failed"] == 0, out
        staged = json.loads((tmp_path / "out" / "p1.json").read_text())
        # While staging the host still ran the old release, and the mirror had already sent the changed streams.
        assert staged["current"] == cur and len(staged["missing"]) == len(changed)
        assert sorted(m.blob_requests()) == changed
        assert _current(tmp_path, "p1") != cur
