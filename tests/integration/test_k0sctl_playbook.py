"""playbooks/prepare_k0sctl_hosts.yml run for real on this machine (connection local).

- One host: preconditions pass, the split k0s is installed below a temporary root with no service
  unit, and k0sctl.yaml says useExistingK0s with spec.k0s.version = what the installed k0s prints.
- Three inventory hosts that are all this machine: k0sctl would refuse them (same hostname,
  machine-id and private address); the play fails on every host with those messages BEFORE
  anything is installed or written.
The molecule scenario `k0sctl` covers real separate hosts (sudo, clock skew, units, lock).
"""
import subprocess

import yaml

import testlib


def _inventory(tmp_path, names):
    hosts = "".join("        %s:\n          ansible_host: 192.0.2.%d\n" % (n, 20 + i) for i, n in enumerate(names))
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  vars:\n    ansible_connection: local\n    ansible_python_interpreter: %s\n"
                    "  children:\n    k0s_controllers:\n      hosts:\n%s" % (testlib.sys.executable, hosts))
    return path


def _run(tmp_path, names, fixture, extra=()):
    root = tmp_path / "root"
    args = ["-i", _inventory(tmp_path, names), testlib.REPO / "playbooks" / "prepare_k0sctl_hosts.yml",
            "-e", "k0s_executable=%s" % fixture["path"],
            "-e", "k0s_controller_cache_dir=%s" % (tmp_path / "cache"),
            "-e", "k0sctl_install_path=%s" % (root / "usr/bin/k0s"),
            "-e", "k0s_libexec_dir=%s" % (root / "usr/libexec/k0s"),
            "-e", "k0s_data_dir=%s" % (root / "var/lib/k0s"),
            "-e", "k0s_store_dir=%s" % (root / "var/lib/fleetsplit-k0s"),
            "-e", "k0sctl_config_path=%s" % (tmp_path / "out/k0sctl.yaml")] + list(extra)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/libexec").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    return root, testlib.run_playbook(args, cwd=tmp_path)


def test_one_host_end_to_end(tmp_path, fixtures):
    fixture = fixtures["k0s-small-zip"]
    root, (proc, output) = _run(tmp_path, ["node1"], fixture)
    assert proc.returncode == 0, output
    k0s = root / "usr/bin/k0s"
    printed = subprocess.run([str(k0s), "version"], capture_output=True, check=True).stdout
    doc = yaml.safe_load((tmp_path / "out/k0sctl.yaml").read_text())
    assert printed == doc["spec"]["k0s"]["version"].encode() + b"\n" == fixture["version"].encode() + b"\n"
    (host,) = doc["spec"]["hosts"]
    assert host["useExistingK0s"] is True and host["k0sInstallPath"] == str(k0s)
    assert host["dataDir"] == str(root / "var/lib/k0s")
    # The stripped k0s and its binaries are in place; no unit was written anywhere under the root.
    assert sorted(p.name for p in (root / "usr/libexec/k0s").iterdir()) == sorted(fixture["binaries"])
    assert not list(root.rglob("k0s*.service")) and not (root / "etc").exists()


def test_refused_hosts_fail_before_install(tmp_path, fixtures):
    fixture = fixtures["k0s-small-zip"]
    root, (proc, output) = _run(tmp_path, ["node1", "node2", "node3"], fixture)
    assert proc.returncode == 2, output
    flat = " ".join(output.split())
    for name, others in (("node1", "node2, node3"), ("node2", "node1, node3"), ("node3", "node1, node2")):
        assert "%s is not ready for k0sctl: hostname " % name in flat, output
        assert "is not unique (also on %s)" % others in flat
    assert flat.count("machine-id ") >= 3 and flat.count("private address ") >= 3
    # any_errors_fatal: nothing installed, no configuration written.
    assert not (root / "usr/bin/k0s").exists() and not (root / "var/lib/fleetsplit-k0s").exists()
    assert not (tmp_path / "out").exists()


def test_hostile_ssh_user_is_refused_before_any_shell_sees_it(tmp_path, fixtures):
    marker = tmp_path / "pwned"
    user = "x$(touch %s)'; touch %s; echo '" % (marker, marker)
    root, (proc, output) = _run(tmp_path, ["node1"], fixtures["k0s-small-zip"],
                                extra=["-e", "k0sctl_ssh_user=%s" % user])
    assert proc.returncode != 0, output
    assert "k0sctl_ssh_user" in output and "is not a user name" in output, output
    assert not marker.exists()
    assert not (root / "usr/bin/k0s").exists() and not (tmp_path / "out").exists()
