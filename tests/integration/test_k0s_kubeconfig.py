"""The admin kubeconfig on the controller, for real: fleetsplit.k0s.k0s_kubeconfig through ansible-playbook on
localhost (0600, changed then unchanged, a wrong mode repaired, check mode writes nothing, --diff and -vvv show no
credential, bad values refused), and the cluster role's check + kubeconfig entry points against the fixture k0s
running as a controller on loopback (k0s status, /readyz, k0s kubeconfig admin, the server rule)."""
import json
import os
import stat
import sys

import yaml

from testlib import FakeController, admin_kubeconfig, ansible_env, local_inventory, recap, run_playbook

WRITE = """
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.k0s_kubeconfig:
        content: "{{ lookup('ansible.builtin.file', src) }}"
        path: "{{ dest }}"
        server: "{{ server | default('') }}"
        server_fallback: leader
      register: written
    - ansible.builtin.debug:
        var: written
"""


def play(tmp_path, *extra, server=None, check=False):
    pb = tmp_path / "write.yml"
    pb.write_text(WRITE)
    args = local_inventory() + ["-vvv", "--diff", pb, "-e", "src=%s" % (tmp_path / "admin.conf"),
                                "-e", "dest=%s" % (tmp_path / "out" / "kubeconfig")]
    if server is not None:
        args += ["-e", json.dumps({"server": server})]
    if check:
        args.append("--check")
    proc, out = run_playbook(args + list(extra))
    return proc, out


def secrets_absent(out, text, key):
    """Neither the key nor the client certificate, whole or a middle part (their first bytes are the PEM header's
    base64, which the CA shares)."""
    cert = yaml.safe_load(text)["users"][0]["user"]["client-certificate-data"]
    return all(s not in out for s in (key, key[60:120], cert, cert[60:120]))


def test_module_writes_private_file_once(tmp_path):
    text, key = admin_kubeconfig(server="https://127.0.0.1:6443")
    (tmp_path / "admin.conf").write_text(text)
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "kubeconfig"

    proc, out = play(tmp_path, server="10.0.0.5", check=True)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 1, out[-3000:]
    assert not dest.exists() and os.listdir(tmp_path / "out") == [], "check mode writes nothing"
    assert "ESTABLISH LOCAL CONNECTION" in out and "+    server: https://10.0.0.5:6443" in out, "-vvv and the diff took effect"
    assert "<redacted>" in out and secrets_absent(out, text, key)

    proc, out = play(tmp_path, server="10.0.0.5")
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 1, out[-3000:]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600 and os.listdir(tmp_path / "out") == ["kubeconfig"]
    doc = yaml.safe_load(dest.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.0.0.5:6443" and doc["current-context"] == "k0s"
    assert [len(doc[k]) for k in ("clusters", "users", "contexts")] == [1, 1, 1]
    assert doc["users"][0]["user"]["client-key-data"] == key
    assert secrets_absent(out, text, key)

    before = dest.stat()
    proc, out = play(tmp_path, server="10.0.0.5")
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out[-3000:]
    assert dest.stat().st_ino == before.st_ino, "an unchanged file is not rewritten"

    dest.chmod(0o644)
    proc, out = play(tmp_path, server="10.0.0.5")
    assert recap(out)["localhost"]["changed"] == 1 and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert "set the mode of" in out

    # k0s printed loopback and no server is given: the fallback (the leader's inventory name).
    proc, out = play(tmp_path)
    assert recap(out)["localhost"]["changed"] == 1 and "server: https://leader:6443" in dest.read_text()
    assert "-    server: https://10.0.0.5:6443" in out and secrets_absent(out, text, key)


def test_module_refusals_change_nothing(tmp_path):
    text, key = admin_kubeconfig()
    (tmp_path / "admin.conf").write_text(text)
    (tmp_path / "out").mkdir()
    for server in ("https://10.0.0.5", "10.0.0.5:6443", "two words"):
        proc, out = play(tmp_path, server=server)
        assert proc.returncode != 0 and "server must be a bare host name or IP address" in out, out[-2000:]
    (tmp_path / "admin.conf").write_text(text.replace("kind: Config", "kind: Secret"))
    proc, out = play(tmp_path, server="10.0.0.5")
    assert proc.returncode != 0 and "kind is not Config" in out and secrets_absent(out, text, key)
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "kubeconfig")
    (tmp_path / "admin.conf").write_text(text)
    proc, out = play(tmp_path, server="10.0.0.5")
    assert proc.returncode != 0 and "not a regular file" in out and not (tmp_path / "elsewhere").exists()
    assert os.listdir(tmp_path / "out") == ["kubeconfig"]


ROLE = """
- hosts: k0s_controllers
  gather_facts: false
  tasks:
    - ansible.builtin.import_role:
        name: fleetsplit.k0s.cluster
        tasks_from: check
    # What the plan entry point sets from the install role's query (the leader already runs its cluster).
    - ansible.builtin.set_fact:
        k0s_cluster_join: {leader: true, controller: true, member: true, pending: false}
    - ansible.builtin.import_role:
        name: fleetsplit.k0s.cluster
        tasks_from: kubeconfig
"""


def role_run(tmp_path, exe_dir, data_dir, env, *extra, connection="local", host_vars=""):
    inv = tmp_path / "hosts.ini"
    inv.write_text("[k0s_controllers]\nleader ansible_connection=%s ansible_python_interpreter=%s %s\n"
                   % (connection, sys.executable, host_vars))
    pb = tmp_path / "role.yml"
    pb.write_text(ROLE)
    args = ["-i", inv, "-vvv", "--diff", pb, "-e", "k0s_bin_dir=%s" % exe_dir, "-e", "k0s_data_dir=%s" % data_dir,
            "-e", "k0s_join_poll_interval=1", "-e", "k0s_join_timeout=20"]
    return run_playbook(args + list(extra), cwd=tmp_path, env=ansible_env(**env))


def test_role_fetches_from_the_fixture_controller(fixtures, tmp_path):
    exe_dir = tmp_path / "bin"
    exe_dir.mkdir()
    os.symlink(fixtures["k0s-small-zip"]["path"], exe_dir / "k0s")
    data_dir = tmp_path / "k0s"
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "kubeconfig"
    with FakeController(exe_dir / "k0s", data_dir) as c:
        secret = (data_dir / "fake-cluster" / "admin-token").read_text().strip()
        # Relative to the directory ansible-playbook runs in (cwd tmp_path).
        rel = ["-e", "k0s_kubeconfig_path=out/kubeconfig"]
        proc, out = role_run(tmp_path, exe_dir, data_dir, c.env, *rel, "--check")
        assert proc.returncode == 0 and not dest.exists(), out[-3000:]
        assert "+    server: https://leader:%d" % c.api_port in out, "check mode reads and shows the plan"

        proc, out = role_run(tmp_path, exe_dir, data_dir, c.env, *rel)
        assert proc.returncode == 0 and recap(out)["leader"]["changed"] == 1, out[-3000:]
        # k0s printed 127.0.0.1 (FAKE_K0S_API_ADDRESS) over a local connection: the leader's inventory name.
        doc = yaml.safe_load(dest.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == "https://leader:%d" % c.api_port
        assert doc["users"] == [{"name": "admin", "user": {"token": secret}}]
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600 and secret not in out
        # Pipelined: the module and its arguments never went into a file of Ansible's temp dirs.
        assert "k0s_kubeconfig.py" in out and "PUT " in out and "AnsiballZ_k0s_kubeconfig" not in out

        proc, out = role_run(tmp_path, exe_dir, data_dir, c.env, *rel)
        assert proc.returncode == 0 and recap(out)["leader"]["changed"] == 0, out[-3000:]

        proc, out = role_run(tmp_path, exe_dir, data_dir, c.env, *rel, "-e", "k0s_api_address=fd00::7")
        assert recap(out)["leader"]["changed"] == 1 and secret not in out
        assert yaml.safe_load(dest.read_text())["clusters"][0]["cluster"]["server"] == "https://[fd00::7]:%d" % c.api_port

        # k0s_fetch_kubeconfig=false: nothing read, nothing written.
        dest.unlink()
        proc, out = role_run(tmp_path, exe_dir, data_dir, c.env, *rel, "-e", "k0s_fetch_kubeconfig=false")
        assert proc.returncode == 0 and not dest.exists() and recap(out)["leader"]["changed"] == 0


def test_role_refuses_bad_settings_before_reading(fixtures, tmp_path):
    exe_dir = tmp_path / "bin"
    exe_dir.mkdir()
    os.symlink(fixtures["k0s-small-zip"]["path"], exe_dir / "k0s")
    env = dict(FAKE_K0S_STATUS_FILE=str(tmp_path / "none.json"))
    cases = [
        (["-e", "k0s_api_address=https://api.example.com"], "", "local", "k0s_api_address must be a bare host name"),
        (["-e", "k0s_kubeconfig_path=missing/kubeconfig"], "", "local", "does not exist on the controller"),
        # Over ssh the leader's ansible_host is the server: an ssh alias with a port is refused, k0s_api_address named.
        ([], "ansible_host='10.0.0.5:22'", "ssh", "ansible_host of the leader leader must be a bare host name"),
    ]
    for extra, host_vars, connection, message in cases:
        proc, out = role_run(tmp_path, exe_dir, tmp_path / "k0s", env, *extra, connection=connection, host_vars=host_vars)
        assert proc.returncode != 0 and message in out, out[-3000:]
        assert "Wait for k0s to run on the leader" not in out, "refused in the check entry point, before anything runs"
    assert not (tmp_path / "kubeconfig").exists() and not (tmp_path / "missing").exists()


def test_role_reports_k0s_error_without_controller_state(fixtures, tmp_path):
    """The reading task has no_log; k0s's own error (no credential in it) still reaches the user."""
    exe_dir = tmp_path / "bin"
    exe_dir.mkdir()
    os.symlink(fixtures["k0s-small-zip"]["path"], exe_dir / "k0s")
    # Check mode with a leader said to be a member: the wait is skipped and k0s kubeconfig admin runs read-only.
    proc, out = role_run(tmp_path, exe_dir, tmp_path / "empty", dict(FAKE_K0S_STATUS_FILE=str(tmp_path / "s.json")),
                         "-e", "k0s_kubeconfig_path=%s" % (tmp_path / "kubeconfig"), "--check")
    assert proc.returncode != 0, out[-3000:]
    assert "k0s kubeconfig admin failed on leader (rc 1): Error: admin PKI file" in out
    assert "check if the control plane is initialized on this node" in out and "k0s_fetch_kubeconfig=false" in out
    assert not (tmp_path / "kubeconfig").exists()
