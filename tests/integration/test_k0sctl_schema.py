"""k0sctl.yaml written by roles/k0sctl_prepare, validated against k0sctl's v1beta1 Cluster schema.

No k0sctl binary is available here, so the schema facts the generated file relies on are written
down below (K0SCTL_SCHEMA_* and validate_cluster) with where they come from in k0sctl's source
(github.com/k0sproject/k0sctl, read for this test; nothing copied):

- pkg/apis/k0sctl.k0sproject.io/v1beta1/cluster.go: APIVersion = "k0sctl.k0sproject.io/v1beta1";
  Cluster{apiVersion, kind, metadata, spec}; Validate: kind must be "cluster" or "Cluster";
  ClusterMetadata{name} (default "k0s-cluster").
- .../v1beta1/cluster/spec.go: Spec{hosts, k0s} (+ options in newer releases); hosts required.
- .../v1beta1/cluster/hosts.go: at least one host, a controller among them, no "single" host in a
  cluster of more than one, each host's connection (address:port) unique.
- .../v1beta1/cluster/host.go: the yaml keys of Host; role in controller|worker|controller+worker|single;
  privateAddress an IP; noTaints only for controller+worker; useExistingK0s cannot be combined with
  uploadBinary, k0sBinaryPath or k0sDownloadURL.
- github.com/k0sproject/rig protocol/ssh/config.go (embedded through rig.CompositeConfig as "ssh"):
  address (required), user (default root), port (default 22, 1..65535), keyPath, bastion, configPath.
- .../v1beta1/cluster/k0s.go: K0s{version, versionChannel, dynamicConfig, config}; version at least
  0.11.0-rc1 (K0sMinVersion); versionChannel stable|latest.
- phase/gather_k0s_facts.go, phase/download_k0s.go, phase/upload_k0s.go: the installed k0s is
  `<k0sInstallPath> version` with surrounding whitespace trimmed, parsed as a version and compared
  with spec.k0s.version (Equal, so "+k0s.N" counts); equal means nothing is downloaded or uploaded.
"""
import ipaddress
import re

import pytest
import yaml

import testlib

K0SCTL_SCHEMA_API_VERSION = "k0sctl.k0sproject.io/v1beta1"
K0SCTL_SCHEMA_KINDS = {"cluster", "Cluster"}
K0SCTL_SCHEMA_SPEC_KEYS = {"hosts", "k0s", "options"}
K0SCTL_SCHEMA_HOST_KEYS = {
    # cluster/host.go
    "role", "reset", "privateInterface", "privateAddress", "dataDir", "kubeletRootDir", "environment",
    "uploadBinary", "useExistingK0s", "k0sBinaryPath", "k0sInstallPath", "k0sDownloadURL", "installFlags",
    "files", "os", "hostname", "noTaints", "hooks",
    # rig.CompositeConfig, inlined
    "ssh", "winRM", "openSSH", "localhost",
}
K0SCTL_SCHEMA_ROLES = {"controller", "worker", "controller+worker", "single"}
K0SCTL_SCHEMA_SSH_KEYS = {"address", "user", "port", "keyPath", "bastion", "configPath"}
K0SCTL_SCHEMA_K0S_KEYS = {"version", "versionChannel", "dynamicConfig", "config"}
# k0sproject/version: vMAJOR.MINOR.PATCH[-PRE][+k0s.N]
K0S_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+k0s\.\d+)?$")


def validate_cluster(doc):
    """Errors (strings) k0sctl's v1beta1 validation would raise for DOC; empty when valid."""
    errors = []
    if not isinstance(doc, dict):
        return ["document is not a mapping"]
    unknown = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        errors.append("unknown top-level keys %s" % sorted(unknown))
    if doc.get("apiVersion") != K0SCTL_SCHEMA_API_VERSION:
        errors.append("apiVersion must equal %s" % K0SCTL_SCHEMA_API_VERSION)
    if doc.get("kind") not in K0SCTL_SCHEMA_KINDS:
        errors.append("kind must equal Cluster")
    meta = doc.get("metadata", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("name", "k0s-cluster"), str):
        errors.append("metadata.name must be a string")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errors + ["spec missing"]
    if set(spec) - K0SCTL_SCHEMA_SPEC_KEYS:
        errors.append("unknown spec keys %s" % sorted(set(spec) - K0SCTL_SCHEMA_SPEC_KEYS))
    hosts = spec.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        return errors + ["at least one host required"]
    seen = set()
    for idx, host in enumerate(hosts, 1):
        where = "host #%d" % idx
        if not isinstance(host, dict):
            errors.append("%s: not a mapping" % where)
            continue
        if set(host) - K0SCTL_SCHEMA_HOST_KEYS:
            errors.append("%s: unknown keys %s" % (where, sorted(set(host) - K0SCTL_SCHEMA_HOST_KEYS)))
        if host.get("role") not in K0SCTL_SCHEMA_ROLES:
            errors.append("%s: unknown role %r" % (where, host.get("role")))
        if host.get("role") == "single" and len(hosts) > 1:
            errors.append("%s: role single in a cluster of %d hosts" % (where, len(hosts)))
        if "privateAddress" in host:
            try:
                ipaddress.ip_address(host["privateAddress"])
            except ValueError:
                errors.append("%s: privateAddress must be an IP" % where)
        if host.get("noTaints") and host.get("role") != "controller+worker":
            errors.append("%s: noTaints can only be true for controller+worker role" % where)
        if host.get("useExistingK0s"):
            if host.get("uploadBinary"):
                errors.append("%s: uploadBinary cannot be true when useExistingK0s is true" % where)
            for key in ("k0sBinaryPath", "k0sDownloadURL"):
                if host.get(key):
                    errors.append("%s: %s cannot be set when useExistingK0s is true" % (where, key))
        ssh = host.get("ssh")
        if not isinstance(ssh, dict):
            errors.append("%s: no ssh connection" % where)
            continue
        if set(ssh) - K0SCTL_SCHEMA_SSH_KEYS:
            errors.append("%s: unknown ssh keys %s" % (where, sorted(set(ssh) - K0SCTL_SCHEMA_SSH_KEYS)))
        if not isinstance(ssh.get("address"), str) or not ssh["address"]:
            errors.append("%s: ssh.address is required" % where)
        port = ssh.get("port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            errors.append("%s: ssh.port must be between 1 and 65535" % where)
        if not isinstance(ssh.get("user", "root"), str):
            errors.append("%s: ssh.user must be a string" % where)
        key = (ssh.get("address"), port)
        if key in seen:
            errors.append("%s: %s:%s is not unique" % (where, key[0], key[1]))
        seen.add(key)
    if not any(h.get("role") in ("controller", "controller+worker", "single") for h in hosts if isinstance(h, dict)):
        errors.append("no hosts with a controller role defined")
    k0s = spec.get("k0s") or {}
    if set(k0s) - K0SCTL_SCHEMA_K0S_KEYS:
        errors.append("unknown spec.k0s keys %s" % sorted(set(k0s) - K0SCTL_SCHEMA_K0S_KEYS))
    if "version" in k0s:
        match = K0S_VERSION_RE.match(str(k0s["version"])) if isinstance(k0s["version"], str) else None
        if not match:
            errors.append("spec.k0s.version %r is not a version string" % (k0s["version"],))
        elif tuple(int(g) for g in match.groups()[:3]) < (0, 11, 0):
            errors.append("minimum supported k0s version is 0.11.0-rc1")
    if k0s.get("versionChannel", "stable") not in ("stable", "latest"):
        errors.append("spec.k0s.versionChannel must be stable or latest")
    return errors


GOOD = {
    "apiVersion": K0SCTL_SCHEMA_API_VERSION, "kind": "Cluster", "metadata": {"name": "k0s-cluster"},
    "spec": {"hosts": [
        {"role": "controller", "ssh": {"address": "10.0.0.1", "user": "root", "port": 22},
         "k0sInstallPath": "/usr/bin/k0s", "useExistingK0s": True},
        {"role": "worker", "ssh": {"address": "10.0.0.2", "user": "root", "port": 22, "keyPath": "~/.ssh/id"},
         "k0sInstallPath": "/usr/bin/k0s", "useExistingK0s": True},
    ], "k0s": {"version": "v1.36.3+k0s.0"}},
}


def _mutated(path, value):
    import copy
    doc = copy.deepcopy(GOOD)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, error", [
    (["kind"], "Foo", "kind must equal Cluster"),
    (["apiVersion"], "k0sctl.k0sproject.io/v1alpha1", "apiVersion must equal"),
    (["spec", "hosts", 0, "role"], "worker", "no hosts with a controller role"),
    (["spec", "hosts", 1, "uploadBinary"], True, "uploadBinary cannot be true"),
    (["spec", "hosts", 1, "k0sBinaryPath"], "/tmp/k0s", "k0sBinaryPath cannot be set"),
    (["spec", "hosts", 1, "k0sBinarypath"], "/tmp/k0s", "unknown keys"),
    (["spec", "hosts", 1, "ssh", "address"], "10.0.0.1", "is not unique"),
    (["spec", "hosts", 1, "ssh", "port"], "22", "ssh.port"),
    (["spec", "hosts", 1, "noTaints"], True, "noTaints"),
    (["spec", "k0s", "version"], "1.36", "not a version"),
])
def test_validator_rejects(path, value, error):
    assert validate_cluster(GOOD) == []
    errors = validate_cluster(_mutated(path, value))
    assert any(error in e for e in errors), errors


INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{python}"
  children:
    k0s_workers:
      hosts:
        w1:
          ansible_host: 192.0.2.11
          ansible_user: core
          ansible_port: 2201
          ansible_ssh_private_key_file: ~/.ssh/fleet_ed25519
        cw:
          ansible_host: 192.0.2.10
          k0sctl_private_address: 10.1.0.10
          k0sctl_host_extra: {{installFlags: ["--debug"], noTaints: true}}
        w2:
          ansible_host: 192.0.2.12
    k0s_controllers:
      hosts:
        cw:
"""

CONFIG_PLAY = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: fleetsplit.k0s.k0sctl_prepare
        tasks_from: config
"""


@pytest.fixture()
def generated(tmp_path, fixtures):
    """k0sctl.yaml written by the role's config entry point for an inventory of three local hosts."""
    (tmp_path / "hosts.yml").write_text(INVENTORY.format(python=testlib.sys.executable))
    (tmp_path / "play.yml").write_text(CONFIG_PLAY)
    k0s = fixtures["k0s-zip"]
    out = tmp_path / "out" / "k0sctl.yaml"
    proc, output = testlib.run_playbook(["-i", tmp_path / "hosts.yml", tmp_path / "play.yml",
                                         "-e", "k0sctl_install_path=%s" % k0s["bare_path"],
                                         "-e", "k0sctl_config_path=%s" % out], cwd=tmp_path)
    assert proc.returncode == 0, output
    return k0s, out


def test_generated_config_is_valid_and_matches_inventory(generated):
    k0s, out = generated
    text = out.read_text()
    doc = yaml.safe_load(text)
    assert validate_cluster(doc) == []
    # spec.k0s.version is exactly what the stripped executable prints, minus k0s's one newline.
    printed = testlib.subprocess.run([k0s["bare_path"], "version"], capture_output=True, check=True).stdout
    assert printed == doc["spec"]["k0s"]["version"].encode() + b"\n"
    assert doc["spec"]["k0s"]["version"] == k0s["version"]
    hosts = doc["spec"]["hosts"]
    # Controllers first (k0sctl's leader), then workers in inventory order.
    assert [h["ssh"]["address"] for h in hosts] == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    assert hosts[0] == {"role": "controller+worker", "ssh": {"address": "192.0.2.10", "user": "root", "port": 22},
                        "privateAddress": "10.1.0.10", "k0sInstallPath": k0s["bare_path"],
                        "useExistingK0s": True, "installFlags": ["--debug"], "noTaints": True}
    assert hosts[1] == {"role": "worker", "ssh": {"address": "192.0.2.11", "user": "core", "port": 2201,
                                                  "keyPath": "~/.ssh/fleet_ed25519"},
                        "k0sInstallPath": k0s["bare_path"], "useExistingK0s": True}
    assert (out.stat().st_mode & 0o777) == 0o600


def test_generated_config_is_stable(generated, tmp_path):
    """A re-run writes the same bytes (no timestamps), so it reports no change."""
    k0s, out = generated
    before = out.read_bytes()
    proc, output = testlib.run_playbook(["-i", tmp_path / "hosts.yml", tmp_path / "play.yml",
                                         "-e", "k0sctl_install_path=%s" % k0s["bare_path"],
                                         "-e", "k0sctl_config_path=%s" % out], cwd=tmp_path)
    assert proc.returncode == 0, output
    assert out.read_bytes() == before
    assert "changed=0" in output
