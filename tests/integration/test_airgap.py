"""Airgap image bundles (issue 13 item 5) for real: ansible-playbook on localhost runs the split role's
airgap.yml (local tars, or the release asset from a local HTTP server checked against sha256sums.txt) and
the install role's images_query.yml / images_apply.yml (image_bundles on the controller, the k0s_images
action and module on two local "hosts": a worker and a controller). Tars are built from real files at test
time.
"""
import json
import os
import sys
import tarfile

from testlib import ansible_env, recap, run_playbook, sha256
from test_download import VERSION, Release, write_sums  # noqa: F401  (the local release server)

PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - name: Prepare the bundles on the controller (the split role's airgap part)
      ansible.builtin.include_role:
        name: fleetsplit.k0s.split
        tasks_from: airgap.yml
        apply:
          run_once: true
          delegate_to: localhost
      vars:
        _k0s_cache_dir: "{{ cache_dir }}"
    - name: Query
      ansible.builtin.include_role:
        name: fleetsplit.k0s.install
        tasks_from: images_query.yml
    - name: Apply
      ansible.builtin.include_role:
        name: fleetsplit.k0s.install
        tasks_from: images_apply.yml
      when: __k0s_images_query is not skipped
    - name: Record the result
      ansible.builtin.copy:
        content: "{{ {'query': __k0s_images_query, 'present': __k0s_images_present | default({})} | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      check_mode: false
      changed_when: false   # test bookkeeping, not part of the recap
      delegate_to: localhost
"""


def make_tar(path, *members):
    with tarfile.open(str(path), "w") as t:
        for m in members:
            t.add(m, arcname=os.path.basename(m))
    return str(path)


class Lab(object):
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        (tmp_path / "out").mkdir()
        (tmp_path / "play.yml").write_text(PLAY)
        (tmp_path / "hosts.ini").write_text(
            "[k0s_workers]\nworker k0s_data_dir=%s/worker/var/lib/k0s\n"
            "[k0s_controllers]\ncontroller k0s_data_dir=%s/controller/var/lib/k0s\n"
            "[all:vars]\nansible_connection=local\nansible_python_interpreter=%s\n"
            % (tmp_path, tmp_path, sys.executable))
        for h in ("worker", "controller"):
            (tmp_path / h / "var" / "lib" / "k0s").mkdir(parents=True)
        self.images = tmp_path / "worker" / "var" / "lib" / "k0s" / "images"

    def run(self, bundles, *extra, **evars):
        evars.update(k0s_airgap_bundles=bundles, cache_dir=str(self.tmp / "cache"), out_dir=str(self.tmp / "out"),
                     k0s_controller_cache_keep=2)
        env = ansible_env(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
            env.pop(var, None)
        proc, out = run_playbook(["-i", self.tmp / "hosts.ini", self.tmp / "play.yml", "-e", json.dumps(evars)]
                                 + list(extra), cwd=self.tmp, env=env, timeout=300)
        assert proc.returncode == 0, out
        return out, json.loads((self.tmp / "out" / "worker.json").read_text())

    def listing(self):
        return sorted(os.listdir(str(self.images)))


def test_deploy_rerun_upgrade_and_check_mode(tmp_path):
    lab = Lab(tmp_path)
    v1 = make_tar(tmp_path / "apps-v1.tar", "/bin/ls", "/bin/cat")
    v2 = make_tar(tmp_path / "apps-v2.tar", "/bin/cp", "/bin/mv")

    out, res = lab.run([v1])
    assert res["query"]["missing"] == ["apps-v1.tar"]
    sent = res["present"]["bundle_bytes"]
    assert 0 < sent < os.path.getsize(v1)   # compressed, one transfer
    assert sha256(lab.images / "apps-v1.tar") == sha256(v1)
    mtime = os.stat(str(lab.images / "apps-v1.tar")).st_mtime_ns
    assert not (tmp_path / "controller" / "var" / "lib" / "k0s" / "images").exists()   # no worker component there
    assert res["present"]["changed"]

    # Re-run: nothing sent, changed=0 on every host, mtime kept (k0s does not re-import).
    out, res = lab.run([v1])
    assert res["query"]["up_to_date"] and res["present"].get("skipped")
    assert all(r["changed"] == 0 for r in recap(out).values()), out
    assert os.stat(str(lab.images / "apps-v1.tar")).st_mtime_ns == mtime

    # A file fleetsplit did not place is kept through everything.
    (lab.images / "operator.tar").write_bytes(b"mine")

    # Check mode + diff: reports the replacement, changes nothing.
    before = {n: os.stat(str(lab.images / n)).st_mtime_ns for n in lab.listing()}
    out, res = lab.run([v2], "--check", "--diff")
    assert res["present"]["changed"] and res["present"]["stale"] == ["apps-v1.tar"]
    assert "+apps-v2.tar" in out and "-apps-v1.tar" in out
    assert {n: os.stat(str(lab.images / n)).st_mtime_ns for n in lab.listing()} == before

    # Upgrade: the new bundle replaces the old one, which is removed (k0s unpins its images).
    out, res = lab.run([v2])
    assert res["query"]["missing"] == ["apps-v2.tar"] and res["present"]["bundle_bytes"] > 0
    assert lab.listing() == ["apps-v2.tar", "operator.tar"]
    assert (lab.images / "operator.tar").read_bytes() == b"mine"


def test_names_refused_before_any_change(tmp_path):
    lab = Lab(tmp_path)
    bad = make_tar(tmp_path / "apps.tar.gz", "/bin/ls")
    evars = dict(k0s_airgap_bundles=[bad], cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"))
    proc, out = run_playbook(["-i", tmp_path / "hosts.ini", tmp_path / "play.yml", "-e", json.dumps(evars)],
                             cwd=tmp_path, env=ansible_env(), timeout=300)
    assert proc.returncode != 0 and "apps.tar.gz" in out and "ending in .tar" in out
    assert not lab.images.exists()


def test_release_asset_downloaded_and_checked(tmp_path):
    lab = Lab(tmp_path)
    vdir = tmp_path / "srv" / VERSION
    vdir.mkdir(parents=True)
    asset = "k0s-airgap-bundle-%s-linux-amd64.tar" % VERSION
    make_tar(vdir / asset, "/bin/ls")
    rel = Release(tmp_path / "srv")
    try:
        common = dict(k0s_version=VERSION, k0s_download_base_url=rel.base_url, k0s_download_insecure=True,
                      k0s_download_arch="amd64")
        write_sums(rel, ["%s  %s" % ("0" * 64, asset)])   # wrong checksum: refused, nothing placed
        evars = dict(common, k0s_airgap_bundles=["release"], cache_dir=str(tmp_path / "cache"),
                     out_dir=str(tmp_path / "out"))
        env = ansible_env(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
            env.pop(var, None)
        proc, out = run_playbook(["-i", tmp_path / "hosts.ini", tmp_path / "play.yml", "-e", json.dumps(evars)],
                                 cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode != 0 and not lab.images.exists(), out
        write_sums(rel, ["%s *%s" % (sha256(vdir / asset), asset)])
        out, res = lab.run(["release"], **common)
        assert lab.listing() == [asset]
        assert sha256(lab.images / asset) == sha256(vdir / asset)
        cached = tmp_path / "cache" / "downloads" / VERSION
        assert oct(os.stat(str(cached.parent)).st_mode & 0o777) == "0o700"
    finally:
        rel.close()


# ------------------------------------------------------------------------------------ overlays
def overlay(tmp_path, root, bundles, *extra):
    from testlib import FIXTURES, REPO
    evars = dict(k0s_executable=str(FIXTURES / "k0s-small-zip"), k0s_controller_cache_dir=str(tmp_path / "cache"),
                 k0s_overlay_root=str(root), k0s_airgap_bundles=bundles)
    return run_playbook([str(REPO / "playbooks/deploy_k0s.yml"), "-e", json.dumps(evars)] + list(extra),
                        cwd=tmp_path, timeout=300)


def test_overlay_writes_bundles_checked_first_with_stable_mtime(tmp_path):
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_images import stable_mtime_ns
    root = tmp_path / "overlay"
    v1 = make_tar(tmp_path / "apps-v1.tar", "/bin/ls")
    v2 = make_tar(tmp_path / "apps-v2.tar", "/bin/cat")
    proc, out = overlay(tmp_path, root, [v1], "-v")
    assert proc.returncode == 0, out
    images = root / "var/lib/k0s/images"
    assert sorted(os.listdir(str(images))) == ["apps-v1.tar"]
    assert sha256(images / "apps-v1.tar") == sha256(v1)
    assert os.stat(str(images / "apps-v1.tar")).st_mtime_ns == stable_mtime_ns(sha256(v1))
    # Everything written was among the paths image_root_paths proved first.
    line = out[out.index("TASK [Check that every overlay path stays inside the overlay root]"):].splitlines()[1]
    checked = set(json.loads(line.split(" => ", 1)[1])["host_paths"].values())
    assert {str(images / "apps-v1.tar"), str(root / "var/lib/k0s/.fleetsplit-images.json")} <= checked

    proc, out = overlay(tmp_path, root, [v1])
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out

    proc, out = overlay(tmp_path, root, [v2])
    assert proc.returncode == 0, out
    assert sorted(os.listdir(str(images))) == ["apps-v2.tar"]


def test_overlay_images_symlink_leading_out_refused_before_any_write(tmp_path):
    root = tmp_path / "overlay"
    (root / "var/lib/k0s").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(str(tmp_path / "outside"), str(root / "var/lib/k0s/images"))
    proc, out = overlay(tmp_path, root, [make_tar(tmp_path / "apps.tar", "/bin/ls")])
    assert proc.returncode != 0 and "images" in out, out
    assert os.listdir(str(tmp_path / "outside")) == [] and not (root / "usr").exists()


def test_a_string_instead_of_a_list_is_refused(tmp_path):
    lab = Lab(tmp_path)
    evars = dict(k0s_airgap_bundles="release", cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"))
    proc, out = run_playbook(["-i", tmp_path / "hosts.ini", tmp_path / "play.yml", "-e", json.dumps(evars)],
                             cwd=tmp_path, env=ansible_env(), timeout=300)
    assert proc.returncode != 0 and "k0s_airgap_bundles must be a list" in out, out
    assert not lab.images.exists() and not (tmp_path / "cache").exists()
