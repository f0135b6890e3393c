"""Helpers shared by every test directory: paths, the collection link, fixtures, real ansible-playbook runs.

Ansible runs from the interpreter running pytest (its venv's bin), so the same tests exercise the
oldest supported ansible-core when pytest runs from .venv-compat (see `make test-compat`).
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / ".build" / "collections"
FIXTURES = Path(os.environ.get("FLEETSPLIT_FIXTURES", REPO / ".cache" / "fixtures"))
VENV_BIN = Path(sys.executable).parent

sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from build_fixtures import sha256_file  # noqa: E402  (one sha256 helper for the fixtures and the tests)


def ensure_collection_link():
    """The link `make collection` creates (.build/ is not tracked), and the collection importable."""
    link = COLLECTIONS / "ansible_collections" / "fleetsplit" / "k0s"
    if not os.path.lexists(link):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../../../..")
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    return link


def load_fixtures():
    """fixtures.json of tests/fixtures/build_fixtures.py, built on first use (cached after)."""
    index = FIXTURES / "fixtures.json"
    if not index.exists():
        subprocess.check_call([sys.executable, str(REPO / "tests" / "fixtures" / "build_fixtures.py"),
                               "--out", str(FIXTURES)])
    return json.loads(index.read_text())["fixtures"]


def sha256(path):
    return sha256_file(path)


def tree_entries(root):
    """(path, lstat, link target or sha256 or None) of everything below ``root``."""
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            yield p, st, os.readlink(p) if stat.S_ISLNK(st.st_mode) else (sha256(p) if stat.S_ISREG(st.st_mode) else None)


def tree_snapshot(root):
    """{path: (mode, mtime_ns, inode, link target or sha256)} of everything below ``root``: proves a run left it untouched."""
    return {p: (st.st_mode, st.st_mtime_ns, st.st_ino, content) for p, st, content in tree_entries(root)}


def ansible_env(**extra):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.update(extra)
    return env


def user_env(home=None, collections=None):
    """The environment of a user who installed the collection: no project configuration (no ANSIBLE_* or
    MOLECULE_* variables), optionally their own HOME and collections path, this venv's tools first on PATH."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_")))
    env.update(ANSIBLE_NOCOLOR="1", PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    if home is not None:
        env["HOME"] = str(home)
    if collections is not None:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    return env


def ansible_galaxy(args, cwd=None, env=None):
    """Run this venv's ansible-galaxy (default: user_env(), no project configuration); fails loudly."""
    proc = subprocess.run([str(VENV_BIN / "ansible-galaxy")] + args, cwd=cwd, env=env or user_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def local_inventory():
    """ansible-playbook arguments for localhost with this venv's python (controller modules need pyelftools)."""
    return ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable]


def local_host_vars(base, store_dir=None):
    """Variables of a local-connection inventory host whose store, bin, libexec, data and etc paths are under ``base``
    (none created), so several such hosts share one machine."""
    return dict(ansible_connection="local", ansible_python_interpreter=sys.executable,
                k0s_store_dir=str(store_dir or base / "store"), k0s_bin_dir=str(base / "bin"),
                k0s_libexec_dir=str(base / "libexec"), k0s_data_dir=str(base / "data"),
                k0s_config_path=str(base / "etc/k0s.yaml"), k0s_join_token_path=str(base / "etc/token"),
                k0s_service_managers=["systemd"])


def run_playbook(args, cwd=REPO, timeout=600, env=None):
    """ansible-playbook ARGS for real; returns (CompletedProcess, stdout+stderr)."""
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook")] + [str(a) for a in args], cwd=str(cwd),
                          env=env or ansible_env(), capture_output=True, text=True, timeout=timeout, check=False)
    return proc, proc.stdout + proc.stderr


def recap(output):
    """{host: {ok, changed, failed, ...}} from the PLAY RECAP lines."""
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def in_namespace(script, *args):
    """``script`` (sh) as root in a private mount and pid namespace; skips where mounting is not allowed."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare")
    run = subprocess.run(["unshare", "--fork", "--pid", "--mount", "--propagation", "private", "sh", "-ec", script,
                          "sh"] + [str(a) for a in args], capture_output=True, text=True, timeout=300, check=False)
    if run.returncode != 0 and "mount" in run.stderr and "ermission" in run.stderr:
        pytest.skip("cannot mount here: " + run.stderr)
    return run


def assert_staged(run, fmt, binaries):
    """The fixture k0s's `stage` output: every binary (name -> {sha256}) found at /usr/libexec/k0s/<name>."""
    assert run.returncode == 0, run.stdout + run.stderr
    staged = json.loads(run.stdout[run.stdout.index("{"):])
    assert staged["format"] == fmt
    assert sorted(staged["binaries"]) == sorted(binaries)
    for name, info in staged["binaries"].items():
        assert info["realpath"] == "/usr/libexec/k0s/" + name
        assert info["sha256"] == binaries[name]["sha256"]


def stage_in_chroot(tree, fmt, binaries):
    """The stripped fixture k0s in ``tree`` (an image root) resolves every binary through the data-dir links."""
    Path(tree, "proc").mkdir(exist_ok=True)
    run = in_namespace('mount -t proc proc "$1/proc" && exec chroot "$1" /usr/bin/k0s stage --data-dir /var/lib/k0s',
                       tree)
    assert_staged(run, fmt, binaries)


# A k0s join token as `k0s token create` prints it: base64 of a gzip of a kubeconfig (k0s
# pkg/token/kubeconfig.go, joinencode.go). Used to make tokens of clusters that do not exist.
JOIN_KUBECONFIG = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: k0s
contexts:
- context:
    cluster: k0s
    user: {user}
  name: k0s
current-context: k0s
kind: Config
preferences: {{}}
users:
- name: {user}
  user:
    token: {token}
"""


def make_join_token(ca, user="kubelet-bootstrap", token="abcdef.0123456789abcdef", server="https://10.0.0.1:6443"):
    import base64
    import gzip
    text = JOIN_KUBECONFIG.format(ca=base64.b64encode(ca).decode(), server=server, user=user, token=token)
    return base64.b64encode(gzip.compress(text.encode())).decode()


def admin_kubeconfig(server="https://172.17.0.2:6443"):
    """(text, key PEM) of a kubeconfig as k0s kubeconfig admin prints it (k0s cmd/kubeconfig/admin.go: cluster
    local, context Default, user user, CA and admin client certificate and key inlined), with a real CA and a
    real client certificate and key made for this call."""
    import base64
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject, issuer, key, sign_key, ca):
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        return b.sign(sign_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, admin_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-ca")])
    admin_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                            x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin")])
    ca_pem = cert(ca_name, ca_name, ca_key, ca_key, True)
    admin_pem = cert(admin_name, ca_name, admin_key, ca_key, False)
    key_pem = admin_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())

    def b64(data):
        return base64.b64encode(data).decode()

    text = ("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: %s\n    server: %s\n  name: local\n"
            "contexts:\n- context:\n    cluster: local\n    user: user\n  name: Default\ncurrent-context: Default\n"
            "kind: Config\npreferences: {}\nusers:\n- name: user\n  user:\n    client-certificate-data: %s\n"
            "    client-key-data: %s\n" % (b64(ca_pem), server, b64(admin_pem), b64(key_pem)))
    return text, b64(key_pem)


class FakeController:
    """The fixture k0s running `k0s controller` on loopback (free ports, its own status file), as
    tests/fixtures/check_fixtures.py starts it; killed on exit."""

    def __init__(self, exe, data_dir, api_address="127.0.0.1"):
        self.exe, self.data_dir = Path(exe), Path(data_dir)
        self.env = {k: v for k, v in os.environ.items() if k not in ("K0S_TOKEN", "K0S_JOIN_TOKEN")}
        self.env.update(FAKE_K0S_STATUS_FILE=str(self.data_dir) + ".status.json", FAKE_K0S_API_ADDRESS=api_address,
                        FAKE_K0S_API_PORT="0", FAKE_K0S_JOIN_PORT="0")
        self.proc, self.api_port = None, None

    def __enter__(self):
        import time
        status = Path(self.env["FAKE_K0S_STATUS_FILE"])
        self.proc = subprocess.Popen([str(self.exe), "controller", "--data-dir", str(self.data_dir)], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                st = json.loads(status.read_text())
                if st["pid"] == self.proc.pid:
                    self.api_port = st["api_port"]
                    return self
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        self.__exit__()
        raise RuntimeError("the fake k0s controller did not start in %s" % self.data_dir)

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def kubeconfig_admin(self):
        return subprocess.run([str(self.exe), "kubeconfig", "admin", "--data-dir=%s" % self.data_dir], env=self.env,
                              capture_output=True, text=True, check=True, timeout=60).stdout
