"""roles/k3s: the units k3s's install.sh writes (create_systemd_service_file, create_openrc_service_file in
k3s-io/k3s install.sh), rendered by real ansible-playbook runs (entry point `units`), and the check entry point
of playbooks/deploy_k3s.yml refusing bad values before anything is split or written.

The systemd unit is compared entry by entry with install.sh's and checked with `systemd-analyze verify`; the
OpenRC script is sourced by a real shell the way openrc-run does and its command_args eval'ed like
supervise-daemon.sh, so the argv k3s gets is the one asked for. Molecule's k3s scenario runs them on hosts.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from systemd_syntax import exec_words
from testlib import FIXTURES, recap, run_playbook

RENDER = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render the units
      ansible.builtin.include_role:
        name: fleetsplit.k0s.k3s
        tasks_from: units
      vars:
        _k3s_managers: [systemd, openrc]
    - name: Write them out
      ansible.builtin.copy:
        content: "{{ item.value }}"
        dest: "{{ out }}/{{ item.key }}"
        mode: "0755"
      loop: "{{ _k3s_units | dict2items }}"
"""

# install.sh's systemd unit: these entries, in this order (ExecStart apart).
INSTALL_SH_SYSTEMD = [
    ("Unit", "Description", "Lightweight Kubernetes"),
    ("Unit", "Documentation", "https://k3s.io"),
    ("Unit", "Wants", "network-online.target"),
    ("Unit", "After", "network-online.target"),
    ("Install", "WantedBy", "multi-user.target"),
    ("Service", "Type", "notify"),
    ("Service", "EnvironmentFile", "-/etc/default/%N"),
    ("Service", "EnvironmentFile", "-/etc/sysconfig/%N"),
    ("Service", "EnvironmentFile", None),   # FILE_K3S_ENV, per unit name
    ("Service", "KillMode", "process"),
    ("Service", "Delegate", "yes"),
    ("Service", "User", "root"),
    ("Service", "LimitNOFILE", "1048576"),
    ("Service", "LimitNPROC", "infinity"),
    ("Service", "LimitCORE", "infinity"),
    ("Service", "TasksMax", "infinity"),
    ("Service", "TimeoutStartSec", "0"),
    ("Service", "Restart", "always"),
    ("Service", "RestartSec", "5s"),
    ("Service", "ExecStartPre", "-/sbin/modprobe br_netfilter"),
    ("Service", "ExecStartPre", "-/sbin/modprobe overlay"),
    ("Service", "ExecStart", None),
]

ODD_ARGS = ["--node-label=zone=a", "two words", "it's", "100%", "$HOME", "back\\slash", '"quoted"', "`id`"]
CASES = {
    # name: (role vars, unit name, argv after the k3s path)
    "server": (dict(k3s_role="server", k3s_extra_args=ODD_ARGS), "k3s", ["server"] + ODD_ARGS),
    "agent": (dict(k3s_role="agent", k3s_extra_args="--node-ip=10.0.0.2 --debug", k3s_data_dir="/srv/k3s"),
              "k3s-agent", ["agent", "--data-dir=/srv/k3s", "--node-ip=10.0.0.2", "--debug"]),
}


def unit_entries(text):
    """[(section, key, value)] with install.sh's backslash-newline continuations joined."""
    section, out = None, []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, dummy, value = line.partition("=")
        out.append((section, key, value))
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k3s-units")
    (tmp / "render.yml").write_text(RENDER)
    out = {}
    for name, (rvars, unit, argv) in CASES.items():
        d = tmp / name
        d.mkdir()
        proc, log = run_playbook(["-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable,
                                  "-e", json.dumps(dict(rvars, out=str(d))), str(tmp / "render.yml")], cwd=tmp)
        assert proc.returncode == 0, log
        out[name] = d
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_systemd_unit_is_install_sh_s(rendered, case):
    rvars, unit, argv = CASES[case]
    text = (rendered[case] / "systemd").read_text()
    got = unit_entries(text)
    assert [(s, k) for s, k, v in got] == [(s, k) for s, k, v in INSTALL_SH_SYSTEMD]
    for (s, k, v), (s2, k2, v2) in zip(got, INSTALL_SH_SYSTEMD):
        if v2 is not None:
            assert v == v2, (k, v, v2)
    env = [v for s, k, v in got if k == "EnvironmentFile"][2]
    assert env == "-/etc/systemd/system/%s.service.env" % unit
    words = exec_words([v for s, k, v in got if k == "ExecStart"][0])
    assert words == ["/usr/local/bin/k3s"] + argv
    assert "K3S_TOKEN" not in text and "K3S_URL" not in text


@pytest.mark.parametrize("case", list(CASES))
def test_systemd_analyze_verify(rendered, case, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    rvars, unit, argv = CASES[case]
    # verify needs the ExecStart binary: point it at a real executable of the same name.
    path = tmp_path / (unit + ".service")
    path.write_text((rendered[case] / "systemd").read_text().replace("/usr/local/bin/k3s", str(FIXTURES / "k0s-small-zip.bare"), 1))
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert unit + ".service" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_openrc_script_is_install_sh_s(rendered, case, tmp_path):
    rvars, unit, argv = CASES[case]
    script = rendered[case] / "openrc"
    text = script.read_text()
    assert text.startswith("#!/sbin/openrc-run\n")
    subprocess.run(["sh", "-n", str(script)], check=True)
    lines = text.splitlines()
    for line in ("supervisor=supervise-daemon", "name=%s" % unit, 'command="/usr/local/bin/k3s"',
                 "output_log=/var/log/%s.log" % unit, "error_log=/var/log/%s.log" % unit,
                 'pidfile="/var/run/%s.pid"' % unit, "respawn_delay=5", "respawn_max=0", "set -o allexport",
                 "if [ -f /etc/environment ]; then . /etc/environment; fi",
                 "if [ -f /etc/rancher/k3s/%s.env ]; then . /etc/rancher/k3s/%s.env; fi" % (unit, unit),
                 "set +o allexport", "    after network-online", "    want cgroups", "    rm -f /tmp/k3s.*"):
        assert line in lines, line
    # Source it like openrc-run (the env file with allexport), eval command_args like supervise-daemon.sh
    # (which also evaluates install.sh's trailing redirection: here into a file of ours).
    env = tmp_path / "k3s.env"
    env.write_text("K3S_TOKEN='t0k'\"'\"'en'\n")
    probe = ('. "$1" >/dev/null 2>&1; printf "%s\\n" "$command"; '
             'eval "set -- $(printf "%s" "$command_args" | sed "s#/var/log/#$2/#")"; printf "%s\\n" "$@"; '
             'sh -c \'printf "ENV %s\\n" "$K3S_TOKEN"\'')
    body = text.replace("/etc/rancher/k3s/%s.env" % unit, str(env))
    (tmp_path / "script").write_text(body)
    out = subprocess.run(["sh", "-c", probe, "sh", str(tmp_path / "script"), str(tmp_path)], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, check=True).stdout.split("\n")
    assert out[0] == "/usr/local/bin/k3s"
    assert out[1:1 + len(argv)] == argv
    assert out[1 + len(argv)] == "ENV t0k'en", "the env file is exported to the daemon"


BAD = {
    "role": (dict(k3s_role="srever"), "k3s_role must be one of: server, agent, got: srever"),
    "url": (dict(k3s_role="agent", k3s_server_url="http://10.0.0.1:6443"), "k3s_server_url must be an https:// URL"),
    "agent without url": (dict(k3s_role="agent", k3s_server_url=""), "k3s_server_url is empty: an agent needs"),
    "data dir": (dict(k3s_data_dir="/var/lib/rancher/../k3s"), "k3s_data_dir must not contain '.' or '..'"),
    "bin dir": (dict(k3s_bin_dir="/usr/local/bin\nExecStartPre=/bin/id"), "k3s_bin_dir contains the control character"),
    "args": (dict(k3s_extra_args=["--debug", "--x\n[Service]"]), "k3s_extra_args[1] contains the control character"),
    "token": (dict(k3s_token="s3cret-tok\nen-5a1"), "k3s_env.K3S_TOKEN contains the control character"),
    "env": (dict(k3s_env={"A B": "1"}), "k3s_env: 'A B' is not a variable name"),
    "links": (dict(k3s_cli_links=["kubectl", "../sbin/x"]), "k3s_cli_links must be a list of plain command names"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_deploy_k3s_refuses_bad_values_before_anything(tmp_path, case):
    """deploy_k3s on this machine with every path under tmp_path: the check play stops it before the split."""
    rvars, message = BAD[case]
    (tmp_path / "inv.yml").write_text(json.dumps({"k3s_servers": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    base = tmp_path / "host"
    evars = dict(dict(k3s_role="server", k3s_token="s3cret-token-5a1", k3s_server_url="https://10.0.0.1:6443",
                      k3s_executable=str(FIXTURES / "k0s-small-zip"), k3s_controller_cache_dir=str(tmp_path / "cache"),
                      k3s_data_dir=str(base / "data"), k3s_bin_dir=str(base / "bin"),
                      k3s_store_dir=str(base / "store"), k3s_service_managers=["systemd"]), **rvars)
    proc, out = run_playbook(["-i", str(tmp_path / "inv.yml"), "-e", json.dumps(evars), "-vvv",
                              str(os.path.join(os.path.dirname(__file__), "..", "..", "playbooks", "deploy_k3s.yml"))],
                             cwd=tmp_path)
    assert proc.returncode != 0, out
    assert message in out.replace("\\\\", "\\"), out
    assert "s3cret" not in out and "en-5a1" not in out, "a secret reached the output"
    assert recap(out)["localhost"]["changed"] == 0
    assert not (tmp_path / "cache").exists() and not base.exists(), "nothing may be split or written"


def test_one_host_s_bad_value_stops_every_host(tmp_path):
    """Two hosts (both this machine), the agent's URL is http://: the server is not deployed either."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    (tmp_path / "inv.yml").write_text(json.dumps({
        "k3s_servers": {"hosts": {"server-1": dict(local, k3s_data_dir=str(tmp_path / "s/data"))}},
        "k3s_agents": {"hosts": {"agent-1": dict(local, k3s_data_dir=str(tmp_path / "a/data"),
                                                 k3s_server_url="http://10.0.0.1:6443")}}}))
    evars = dict(k3s_token="s3cret-token-5a1", k3s_executable=str(FIXTURES / "k0s-small-zip"),
                 k3s_controller_cache_dir=str(tmp_path / "cache"), k3s_bin_dir=str(tmp_path / "bin"),
                 k3s_store_dir=str(tmp_path / "store"), k3s_service_managers=["systemd"])
    proc, out = run_playbook(["-i", str(tmp_path / "inv.yml"), "-e", json.dumps(evars),
                              str(os.path.join(os.path.dirname(__file__), "..", "..", "playbooks", "deploy_k3s.yml"))],
                             cwd=tmp_path)
    assert proc.returncode != 0, out
    assert "agent-1: k3s_server_url must be an https:// URL" in out, out
    assert "Deploy k3s to hosts" not in out, "the deploy play must not start"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.yml"], "nothing split or written for any host"
