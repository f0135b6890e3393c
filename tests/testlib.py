"""Helpers shared by every test directory: paths, the collection link, fixtures, real ansible-playbook runs.

Ansible runs from the interpreter running pytest (its venv's bin), so the same tests exercise the
oldest supported ansible-core when pytest runs from .venv-compat (see `make test-compat`).
"""
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

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
