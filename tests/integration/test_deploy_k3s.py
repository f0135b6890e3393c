"""playbooks/deploy_k3s.yml (roles/k3s) for real on this machine, every host path under tmp_path and no service
(k3s_service_manage=false; the units run on real hosts in molecule's k3s scenario).

The fixture k3s (tests/fixtures/fake_k3s: k3s's extract rules re-implemented) is then started on the deployed
tree: it must take it as it is (no line in its fixture-extractions.log). Upgrading to k3s-v2 (bin/runc changed,
so bin/.sha256sums too) must bundle only the executable and the changed contents; rollback swaps back.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testlib import FIXTURES, REPO, recap, run_playbook, sha256

PLAYBOOK = REPO / "playbooks" / "deploy_k3s.yml"
TOKEN = "k3s-T0ken-5ecret-77a0"


def need_fixtures():
    for name in ("k3s", "k3s-v2"):
        if not (FIXTURES / name).exists():
            pytest.skip("fixture %s missing: .venv/bin/python tests/fixtures/build_fixtures.py --set k3s" % name)


@pytest.fixture
def lab(tmp_path):
    need_fixtures()
    host = tmp_path / "host"
    (tmp_path / "inv.yml").write_text(json.dumps({"k3s_servers": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    evars = dict(k3s_token=TOKEN, k3s_controller_cache_dir=str(tmp_path / "cache"),
                 k3s_data_dir=str(host / "data"), k3s_bin_dir=str(host / "bin"), k3s_store_dir=str(host / "store"),
                 k3s_service_manage=False)

    def deploy(executable, *extra, **more):
        args = ["-i", str(tmp_path / "inv.yml"), "-e", json.dumps(dict(evars, k3s_executable=str(executable), **more))]
        proc, out = run_playbook(args + list(extra) + [str(PLAYBOOK)], cwd=tmp_path)
        assert proc.returncode == 0, out
        return out
    return dict(tmp=tmp_path, host=host, data=host / "data", deploy=deploy)


def split_result(tmp, executable):
    path = tmp / "cache" / "split" / sha256(executable) / "streams" / "manifest.json"
    return json.loads(path.read_text())


def start_fixture(lab, role="server"):
    """The deployed k3s started on the deployed tree until it wrote its status; returns that status."""
    status = lab["data"] / "fixture-status.json"
    if status.exists():
        status.unlink()
    p = subprocess.Popen([str(lab["host"] / "bin" / "k3s"), role, "--data-dir", str(lab["data"])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not status.exists():
            assert p.poll() is None, "the fixture k3s exited: %s" % (p.communicate()[1],)
            assert time.monotonic() < deadline, "no status from the fixture k3s"
            time.sleep(0.1)
        return json.loads(status.read_text())
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


def bundles(tmp, executable):
    """{bundle file: member names} written for ``executable`` (the sidecar of each bundle)."""
    d = tmp / "cache" / "split" / sha256(executable) / "bundles"
    return dict((p.name, sorted(m["name"] for m in json.loads(p.read_text())["members"]))
                for p in sorted(d.glob("*.json"))) if d.exists() else {}


def test_deploy_rerun_upgrade_rollback(lab):
    tmp, data = lab["tmp"], lab["data"]
    v1, v2 = FIXTURES / "k3s", FIXTURES / "k3s-v2"
    out = lab["deploy"](v1)
    assert recap(out)["localhost"]["changed"] > 0
    s1 = split_result(tmp, v1)
    tree1 = data / "data" / s1["data_hash"]
    assert os.readlink(data / "data" / "current") == str(tree1)
    assert sha256(lab["host"] / "bin" / "k3s") == sha256(v1)
    assert all(os.readlink(lab["host"] / "bin" / n) == "k3s" for n in ("kubectl", "crictl", "ctr"))
    # Every distinct content and the executable in the fresh deploy's one bundle.
    assert list(bundles(tmp, v1).values()) == [sorted(set(f["name"] for f in s1["files"]) | {"k3s"})]
    st = start_fixture(lab)
    assert st["dir"] == str(tree1) and st["extracted"] is False and st["version"] == s1["k3s_version"]
    assert not (data / "fixture-extractions.log").exists(), "k3s extracted its archive over the pre-staged tree"
    assert TOKEN not in out

    out = lab["deploy"](v1)
    assert recap(out)["localhost"]["changed"] == 0, out

    out = lab["deploy"](v2)
    s2 = split_result(tmp, v2)
    changed = sorted(set(f["name"] for f in s2["files"]) - set(f["name"] for f in s1["files"]))
    assert changed, "k3s-v2 differs from k3s in at least one member"
    assert list(bundles(tmp, v2).values()) == [sorted(changed + ["k3s"])], "only the executable and new contents travel"
    tree2 = data / "data" / s2["data_hash"]
    assert os.readlink(data / "data" / "current") == str(tree2)
    assert os.readlink(data / "data" / "previous") == str(tree1)
    st = start_fixture(lab)
    assert st["dir"] == str(tree2) and st["extracted"] is False and st["version"] == s2["k3s_version"] != s1["k3s_version"]
    assert not (data / "fixture-extractions.log").exists()
    assert recap(lab["deploy"](v2))["localhost"]["changed"] == 0

    out = lab["deploy"](v2, k3s_rollback=True)
    assert recap(out)["localhost"]["changed"] > 0
    assert os.readlink(data / "data" / "current") == str(tree1)
    assert os.readlink(data / "data" / "previous") == str(tree2)
    assert sha256(lab["host"] / "bin" / "k3s") == sha256(v1)
    assert start_fixture(lab)["dir"] == str(tree1)
    assert not (data / "fixture-extractions.log").exists()


def test_a_k0s_executable_is_refused_before_any_host_change(lab):
    proc, out = run_playbook(["-i", str(lab["tmp"] / "inv.yml"), "-e", json.dumps(dict(
        k3s_executable=str(FIXTURES / "k0s-small-zip"), k3s_token=TOKEN,
        k3s_controller_cache_dir=str(lab["tmp"] / "cache"), k3s_data_dir=str(lab["data"]),
        k3s_bin_dir=str(lab["host"] / "bin"), k3s_store_dir=str(lab["host"] / "store"))), str(PLAYBOOK)],
        cwd=lab["tmp"])
    assert proc.returncode != 0
    assert "not k3s: deploy k0s with fleetsplit.k0s.deploy_k0s" in out.replace("\n", " "), out
    assert not lab["host"].exists()
