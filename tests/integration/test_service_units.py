"""roles/service and the overlay play of playbooks/deploy_k0s.yml, rendered by real ansible-playbook runs.

Units are written below temporary roots (k0s_root), compared line by line with what `k0s install`
writes, checked with `systemd-analyze verify` (when present) and `sh -n`; the OpenRC command line is
parsed back by a real shell. The overlay test builds an overlay from the small fixtures and, as root,
runs the fixture k0s inside it (chroot) to prove k0s finds every binary through the data-dir links.
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from systemd_syntax import env_file as parse_env_file, exec_words, unit_words
from testlib import FIXTURES, REPO, recap, run_playbook, sha256, stage_in_chroot
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def playbook(args, cwd):
    return run_playbook(args, cwd=cwd)


def unit_entries(text):
    """[(section, key, value)] of a systemd unit, comments and blank lines dropped."""
    section, out = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, dummy, value = line.partition("=")
        out.append((section, key, value))
    return out


# k0s install's unit: these entries, in these sections.
SYSTEMD_REQUIRED = [
    ("Unit", "Description", "k0s - Zero Friction Kubernetes"),
    ("Unit", "Documentation", "https://docs.k0sproject.io"),
    ("Unit", "After", "network-online.target"),
    ("Unit", "Wants", "network-online.target"),
    ("Service", "StartLimitInterval", "5"),
    ("Service", "StartLimitBurst", "10"),
    ("Service", "RestartSec", "10"),
    ("Service", "Delegate", "yes"),
    ("Service", "KillMode", "process"),
    ("Service", "LimitCORE", "infinity"),
    ("Service", "TasksMax", "infinity"),
    ("Service", "TimeoutStartSec", "0"),
    ("Service", "LimitNOFILE", "999999"),
    ("Service", "Restart", "always"),
    ("Install", "WantedBy", "multi-user.target"),
]

CASES = {
    # name: (role vars, expected unit name, expected argv after the k0s path)
    "controller": (
        dict(k0s_role="controller",
             k0s_config={"apiVersion": "k0s.k0sproject.io/v1beta1", "kind": "ClusterConfig",
                         "metadata": {"name": "test"}, "spec": {"api": {"port": 6443}}},
             k0s_env={"HTTPS_PROXY": "http://user:s3cr%40t@proxy:3128", "ODD": " a b'c\"d$e%f\\g '",
                      "PATH": "/opt/extra/bin"},
             k0s_extra_args=["--labels=zone=a,tier=x", "--debug", "two words", "it's", "100%", "$HOME",
                             "back\\slash", '"quoted"'],
             k0s_openrc_conf={"rc_ulimit": "-n 20000"}),
        "k0scontroller",
        ["controller", "--data-dir=/var/lib/k0s", "--config=/etc/k0s/k0s.yaml",
         "--labels=zone=a,tier=x", "--debug", "two words", "it's", "100%", "$HOME", "back\\slash", '"quoted"']),
    "worker": (
        dict(k0s_role="worker", k0s_extra_args="--token-file=/etc/k0s/token --kubelet-extra-args=--v=2",
             k0s_config={"ignored": "on workers"}),
        "k0sworker",
        ["worker", "--data-dir=/var/lib/k0s", "--token-file=/etc/k0s/token", "--kubelet-extra-args=--v=2"]),
    "controller+worker": (
        dict(k0s_role="controller+worker", k0s_data_dir="/srv/k0s", k0s_libexec_dir="/opt/k0s/libexec"),
        "k0scontroller",
        ["controller", "--data-dir=/srv/k0s", "--enable-worker"]),
}

RENDER = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render the units of one case
      ansible.builtin.include_role:
        name: fleetsplit.k0s.service
      vars:
        k0s_root: "{{ item.root }}"
        k0s_service_managers: [systemd, openrc]
        k0s_role: "{{ item.vars.k0s_role }}"
        k0s_config: "{{ item.vars.k0s_config | default({}) }}"
        k0s_env: "{{ item.vars.k0s_env | default({}) }}"
        k0s_extra_args: "{{ item.vars.k0s_extra_args | default([]) }}"
        k0s_openrc_conf: "{{ item.vars.k0s_openrc_conf | default({}) }}"
        k0s_data_dir: "{{ item.vars.k0s_data_dir | default('/var/lib/k0s') }}"
        k0s_libexec_dir: "{{ item.vars.k0s_libexec_dir | default('/usr/libexec/k0s') }}"
        k0s_bin_dir: "{{ item.bin_dir }}"
        k0s_service_manage: "{{ item.manage }}"
      loop: "{{ cases }}"
      loop_control:
        label: "{{ item.root }}"
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, fixture_index):
    """Renders every case twice (default bin dir, and a bin dir holding a real k0s for verify)."""
    tmp = tmp_path_factory.mktemp("units")
    bindir = tmp / "bin"
    bindir.mkdir()
    shutil.copy2(FIXTURES / "k0s-small-zip.bare", bindir / "k0s")
    cases = []
    for name, (rvars, dummy, dummy) in CASES.items():
        slug = name.replace("+", "_")
        cases.append(dict(root=str(tmp / slug), vars=rvars, bin_dir="/usr/bin", manage=True))
        cases.append(dict(root=str(tmp / (slug + "-verify")), vars=rvars, bin_dir=str(bindir), manage=True))
    cases.append(dict(root=str(tmp / "unmanaged"), vars=dict(k0s_role="worker"), bin_dir="/usr/bin", manage=False))
    (tmp / "render.yml").write_text(RENDER)
    (tmp / "vars.json").write_text(json.dumps(dict(cases=cases)))
    args = ["-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable,
            "-e", "@%s" % (tmp / "vars.json"), str(tmp / "render.yml")]
    proc, out = playbook(args, tmp)
    assert proc.returncode == 0, out
    again, out2 = playbook(args, tmp)
    return dict(tmp=tmp, bindir=bindir, first=out, second=out2, second_rc=again.returncode)


@pytest.mark.parametrize("case", list(CASES))
def test_systemd_unit_matches_k0s_install(rendered, case):
    rvars, unit, argv = CASES[case]
    root = rendered["tmp"] / case.replace("+", "_")
    text = (root / "etc/systemd/system" / (unit + ".service")).read_text()
    entries = unit_entries(text)
    for want in SYSTEMD_REQUIRED:
        assert want in entries, "%s missing from\n%s" % (want, text)
    assert ("Unit", "ConditionFileIsExecutable", "/usr/bin/k0s") in entries
    execs = [v for s, k, v in entries if k == "ExecStart"]
    assert len(execs) == 1 and execs[0].startswith("/usr/bin/k0s ")
    # Read back with systemd's rules (tests/systemd_syntax.py): the exact argv and environment.
    assert exec_words(execs[0]) == ["/usr/bin/k0s"] + argv
    env = rvars.get("k0s_env", {})
    env_values = [v for s, k, v in entries if (s, k) == ("Service", "Environment")]
    path = "%s:%s" % (rvars.get("k0s_libexec_dir", "/usr/libexec/k0s"), env.get("PATH", SYSTEM_PATH))
    assert [unit_words(v) for v in env_values] == [["PATH=" + path]], "only PATH, libexec first in it"
    env_file = root / "etc/k0s" / (unit + ".env")
    secret = {k: v for k, v in env.items() if k != "PATH"}
    files = [v for s, k, v in entries if (s, k) == ("Service", "EnvironmentFile")]
    if secret:
        assert files == ["/etc/k0s/%s.env" % unit]
        assert parse_env_file(env_file.read_text()) == secret
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        for value in secret.values():
            assert value.strip() not in text, "k0s_env values stay out of the 0644 unit"
    else:
        assert files == [] and not env_file.exists()
    # Enabled inside the image the way `systemctl enable` would.
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants" / (unit + ".service")) == \
        "/etc/systemd/system/%s.service" % unit
    config = root / "etc/k0s/k0s.yaml"
    if "--config=/etc/k0s/k0s.yaml" in argv:
        import yaml
        assert yaml.safe_load(config.read_text()) == rvars["k0s_config"]
        assert (config.stat().st_mode & 0o777) == 0o600
    else:
        assert not config.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_systemd_analyze_verify(rendered, case):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    dummy, unit, dummy = CASES[case]
    path = rendered["tmp"] / (case.replace("+", "_") + "-verify") / "etc/systemd/system" / (unit + ".service")
    assert "ConditionFileIsExecutable=%s/k0s" % rendered["bindir"] in path.read_text()
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # verify prints warnings about the unit without failing: there must be none.
    assert unit not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_openrc_script(rendered, case):
    rvars, unit, argv = CASES[case]
    root = rendered["tmp"] / case.replace("+", "_")
    script = root / "etc/init.d" / unit
    text = script.read_text()
    assert text.startswith("#!/sbin/openrc-run\n")
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True)
    for line in ("supervisor=supervise-daemon", 'description="k0s - Zero Friction Kubernetes"',
                 'retry="SIGTERM/90/SIGKILL/5"', ': "${rc_ulimit=-n 1048576 -u unlimited}"',
                 'supervise_daemon_args="--stdout /var/log/${name}.log --stderr /var/log/${name}.err"'):
        assert line in text.splitlines(), line
    depend = re.search(r"^depend\(\) \{\n(.*?)^\}", text, re.S | re.M).group(1).split("\n")
    assert [d.strip() for d in depend if d.strip()] == ["need cgroups", "need net", "use dns", "after firewall"]
    # Source the script's variables the way openrc-run does and eval command_args like supervise-daemon.
    # conf.d first (k0s_env is exported there, mode 0600), then the script, as openrc-run does; a child
    # process (the daemon) sees the exported values.
    conf = root / "etc/conf.d" / unit
    probe = ('. "$1"; . "$2" >/dev/null 2>&1; printf "%s\\n" "$PATH" "$command"; eval "set -- $command_args"; '
             'printf "%s\\n" "$@"; sh -c \'printf "ENV %s\\n" "$ODD" "$HTTPS_PROXY"\'')
    out = subprocess.run(["sh", "-c", probe, "sh", str(conf), str(script)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=True).stdout.split("\n")
    libexec = rvars.get("k0s_libexec_dir", "/usr/libexec/k0s")
    env = rvars.get("k0s_env", {})
    # Prepended to the PATH openrc-run runs with (it needs its own helpers on it).
    assert out[0] == "%s:/usr/bin:/bin%s" % (libexec, ":" + env["PATH"] if "PATH" in env else "")
    assert out[1] == "/usr/bin/k0s"
    assert out[2:2 + len(argv)] == argv
    assert out[2 + len(argv):4 + len(argv)] == ["ENV " + env.get("ODD", ""), "ENV " + env.get("HTTPS_PROXY", "")]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    for name, value in env.items():
        if name != "PATH":
            assert value.strip() not in text, "k0s_env values stay out of the 0755 script"
    if "k0s_openrc_conf" in rvars:
        # openrc-run sources conf.d first; the script's ": ${rc_ulimit=...}" must keep that value.
        got = subprocess.run(["sh", "-c", '. "$1"; . "$2" >/dev/null 2>&1; printf "%s" "$rc_ulimit"', "sh",
                              str(conf), str(script)], capture_output=True, text=True, check=True).stdout
        assert got == rvars["k0s_openrc_conf"]["rc_ulimit"]
    else:
        got = subprocess.run(["sh", "-c", '. "$1"; . "$2" >/dev/null 2>&1; printf "%s" "$rc_ulimit"', "sh",
                              str(conf), str(script)],
                             capture_output=True, text=True, check=True).stdout
        assert got == "-n 1048576 -u unlimited"
    link = root / "etc/runlevels/default" / unit
    assert os.readlink(link) == "/etc/init.d/%s" % unit


def test_unmanaged_writes_nothing_and_rerun_is_unchanged(rendered):
    root = rendered["tmp"] / "unmanaged"
    assert not root.exists() or not any(root.rglob("*"))
    assert rendered["second_rc"] == 0
    assert recap(rendered["second"])["localhost"]["changed"] == 0, rendered["second"]


@pytest.mark.parametrize("fixture,fmt", [("k0s-small-zip", "zip"),
                                         pytest.param("k0s-small-legacy", "legacy", marks=pytest.mark.newest_core_only)])
def test_overlay_play(tmp_path, fixture_index, fixture, fmt):
    exe = tmp_path / fixture
    shutil.copy2(FIXTURES / fixture, exe)   # private copy: a fixture rebuild must not change the mtime mid-test
    root = tmp_path / "overlay"
    evars = dict(k0s_executable=str(exe), k0s_controller_cache_dir=str(tmp_path / "cache"),
                 k0s_overlay_root=str(root))
    args = [str(REPO / "playbooks/deploy_k0s.yml"), "-e", json.dumps(evars)]

    # Check mode on a fresh root reports changes and writes nothing there.
    proc, out = playbook(args + ["--check", "--diff"], tmp_path)
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] > 0
    assert not root.exists()

    proc, out = playbook(args, tmp_path)
    assert proc.returncode == 0, out
    binaries = fixture_index[fixture]["binaries"]
    manifest = json.loads((root / "usr/share/fleetsplit-k0s/manifest.json").read_text())
    assert manifest["format"] == fmt
    assert manifest["k0s_role"] == "controller+worker"
    assert sorted(f["name"] for f in manifest["files"]) == sorted(binaries)
    k0s = root / "usr/bin/k0s"
    assert sha256(k0s) == manifest["k0s"]["sha256"] == sha256(FIXTURES / (fixture + ".bare"))
    assert manifest["k0s"]["size"] == k0s.stat().st_size
    for f in manifest["files"]:
        target = root / "usr/libexec/k0s" / f["name"]
        assert sha256(target) == f["sha256"] == binaries[f["name"]]["sha256"]
        assert target.stat().st_size == f["size"]
        assert os.readlink(root / "var/lib/k0s/bin" / f["name"]) == "/usr/libexec/k0s/" + f["name"]
        if fmt == "legacy":
            assert target.stat().st_mtime_ns == k0s.stat().st_mtime_ns == exe.stat().st_mtime_ns
    assert "--enable-worker" in (root / "etc/systemd/system/k0scontroller.service").read_text()
    assert (root / "etc/init.d/k0scontroller").is_file()
    assert "overlay root: %s" % root in out and "%s payload" % fmt in out, out

    proc, out = playbook(args, tmp_path)
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out
    proc, out = playbook(args + ["--check", "--diff"], tmp_path)
    assert proc.returncode == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out

    # The image as a running system would see it: k0s resolves each binary through the data-dir links.
    image = tmp_path / "image"
    shutil.copytree(root, image, symlinks=True)
    stage_in_chroot(image, fmt, binaries)


INJECTIONS = {
    # variable: (value, what the refusal must say)
    "k0s_env value": (dict(k0s_env={"HTTPS_PROXY": "http://p:3128\n[Service]\nExecStartPre=/bin/touch /tmp/pwned"}),
                      "k0s_env.HTTPS_PROXY contains the control character \\n"),
    "k0s_env name": (dict(k0s_env={"A=1\nExecStartPre=/bin/touch /tmp/pwned\nB": "1"}), "k0s_env: 'A=1\\nExecStartPre"),
    "k0s_libexec_dir": (dict(k0s_libexec_dir="/usr/libexec/k0s\n[Service]\nExecStartPre=/bin/touch /tmp/pwned"),
                        "k0s_libexec_dir contains the control character \\n"),
    "k0s_extra_args": (dict(k0s_extra_args=["--debug", "x\nExecStartPre=/bin/true"]),
                       "k0s_extra_args[1] contains the control character \\n"),
    "k0s_data_dir": (dict(k0s_data_dir="/var/lib/k0s\n"), "k0s_data_dir contains the control character \\n"),
    "k0s_config_path": (dict(k0s_config_path="/etc/k0s/k0s.yaml\nExecStartPre=/bin/true"),
                        "k0s_config_path contains the control character \\n"),
    "k0s_role": (dict(k0s_role="controler"), "k0s_role"),
}

INJECT = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render with one hostile value
      ansible.builtin.include_role:
        name: fleetsplit.k0s.service
      vars:
        k0s_root: "{{ root }}"
        k0s_service_managers: [systemd, openrc]
        k0s_config: {spec: {storage: {type: kine}}}
"""


@pytest.mark.parametrize("case", list(INJECTIONS))
def test_hostile_values_are_refused_naming_the_variable_and_write_nothing(tmp_path, case):
    rvars, message = INJECTIONS[case]
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "inject.yml").write_text(INJECT)
    evars = dict(dict(k0s_role="controller"), root=str(root), **rvars)
    proc, out = playbook(["-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable,
                          "-e", json.dumps(evars), str(tmp_path / "inject.yml")], tmp_path)
    assert proc.returncode != 0, out
    # ansible-core 2.16 prints the message JSON-escaped (a backslash doubled)
    assert message in out.replace("\\\\", "\\"), out
    assert list(root.rglob("*")) == [], "nothing may be written: %s" % list(root.rglob("*"))


SECRET_PASSWORD = "kine-Pa55-w0rd-7f3a"
SECRET_PROXY = "proxy-S3cret-91c2"


@pytest.mark.parametrize("verbosity", ["-v", "-vvv"])
def test_secrets_stay_out_of_diff_and_verbose_output_and_are_stored_0600(tmp_path, verbosity):
    root = tmp_path / "root"
    (tmp_path / "inject.yml").write_text(INJECT.replace("        k0s_config: {spec: {storage: {type: kine}}}\n", ""))
    outputs = []
    for run in (1, 2):   # created, then changed: both diffs
        evars = dict(root=str(root), k0s_role="controller",
                     k0s_config={"spec": {"storage": {"type": "kine", "kine": {
                         "dataSource": "postgres://k0s:%s%d@db:5432/k0s" % (SECRET_PASSWORD, run)}}}},
                     k0s_env={"HTTPS_PROXY": "http://user:%s%d@proxy:3128" % (SECRET_PROXY, run), "NO_PROXY": "x"})
        proc, out = playbook(["-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable,
                              "-e", json.dumps(evars), "--diff", verbosity, str(tmp_path / "inject.yml")], tmp_path)
        assert proc.returncode == 0, out
        assert recap(out)["localhost"]["changed"] > 0, out
        outputs.append(out)
    text = "\n".join(outputs)
    for secret in (SECRET_PASSWORD, SECRET_PROXY):
        assert secret not in text
    assert "(secret content, sha256" in text, "the diff says the secret files changed"
    for path in ("etc/k0s/k0s.yaml", "etc/k0s/k0scontroller.env", "etc/conf.d/k0scontroller"):
        st = (root / path).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, path
    assert SECRET_PROXY + "2" in (root / "etc/k0s/k0scontroller.env").read_text()
    assert SECRET_PROXY + "2" in (root / "etc/conf.d/k0scontroller").read_text()
    assert SECRET_PASSWORD + "2" in (root / "etc/k0s/k0s.yaml").read_text()
    for path in ("etc/systemd/system/k0scontroller.service", "etc/init.d/k0scontroller"):
        assert SECRET_PROXY not in (root / path).read_text()


def test_bad_k0s_role_stops_deploy_before_anything_is_installed(tmp_path):
    """deploy_k0s play 2 on this machine with every path in tmp_path: the service check comes first."""
    base = tmp_path / "host"
    (tmp_path / "inv.yml").write_text(json.dumps({"k0s_controllers": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    evars = dict(k0s_role="controler", k0s_executable=str(FIXTURES / "k0s-small-zip"),
                 k0s_controller_cache_dir=str(tmp_path / "cache"), k0s_store_dir=str(base / "store"),
                 k0s_bin_dir=str(base / "bin"), k0s_libexec_dir=str(base / "libexec"),
                 k0s_data_dir=str(base / "data"), k0s_config_path=str(base / "etc/k0s.yaml"),
                 k0s_join_token_path=str(base / "etc/token"), k0s_service_managers=["systemd"],
                 k0s_cluster_bootstrap=False)
    proc, out = playbook(["-i", str(tmp_path / "inv.yml"), "-e", json.dumps(evars),
                          str(REPO / "playbooks/deploy_k0s.yml")], tmp_path)
    assert proc.returncode != 0, out
    assert "k0s_role" in out and "controler" in out, out
    assert not base.exists() or list(base.rglob("*")) == [], list(base.rglob("*"))
    assert not (tmp_path / "cache").exists(), "not even the split ran"
