"""A k3s data tree and its release description for the k3s_data tests (tests/unit/test_k3s_data.py,
tests/integration/test_k3s_data_playbook.py): trees laid out as k3s's scripts/package-cli makes them, the members and
gzip streams payload_split would report, and the fixture k3s (tests/fixtures/fake_k3s) run for real."""
import gzip
import hashlib
import json
import os
import stat
import subprocess
import time
import zlib

from testlib import FIXTURES, load_fixtures

CNI_LINKS = ("bandwidth", "bridge", "firewall", "flannel", "host-local", "loopback", "portmap")
K3S_LINKS = ("containerd", "crictl", "kubectl", "k3s-agent", "k3s-server")


def fixture_bin(name):
    path = FIXTURES / "bins" / name
    if not path.exists():
        load_fixtures()
    return path.read_bytes()


def package(root, files, links):
    """A data tree as scripts/package-cli makes it: bin/.sha256sums of every visible regular file under bin/
    (sorted by path), bin/.links of every symlink; returns payload_split-like members (sorted by path)."""
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, 0o755 if rel.startswith("bin/") else 0o644)
    for rel, target in links.items():
        os.symlink(target, os.path.join(root, rel))
    sums = sorted((rel[4:], hashlib.sha256(d).hexdigest()) for rel, d in files.items()
                  if rel.startswith("bin/") and not os.path.basename(rel).startswith("."))
    with open(os.path.join(root, "bin/.sha256sums"), "w") as f:
        f.write("".join("%s  %s\n" % (s, n) for n, s in sums))
    with open(os.path.join(root, "bin/.links"), "w") as f:
        f.write("".join("%s %s\n" % (rel[4:], t) for rel, t in sorted(links.items())))
    return members_of(root)


def members_of(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            m = {"path": os.path.relpath(p, root), "mode": stat.S_IMODE(st.st_mode)}
            if stat.S_ISLNK(st.st_mode):
                m.update(type="symlink", target=os.readlink(p), mode=0o777)
            elif stat.S_ISDIR(st.st_mode):
                m.update(type="dir")
            else:
                data = open(p, "rb").read()
                m.update(type="file", size=len(data), sha256=hashlib.sha256(data).hexdigest())
            out.append(m)
    return sorted(out, key=lambda m: m["path"])


class Release(object):
    """One k3s release as payload_split describes it, with the gzip streams of its contents."""

    def __init__(self, tmp, name, tree, exe_bytes, data_hash):
        self.tree = tree
        self.members = members_of(tree)
        self.data_hash = data_hash
        self.exe = {"name": "k3s", "size": len(exe_bytes), "sha256": hashlib.sha256(exe_bytes).hexdigest(),
                    "crc32": zlib.crc32(exe_bytes)}
        self.streams = {}
        sdir = tmp / ("streams-" + name)
        sdir.mkdir()
        for m in self.members:
            if m["type"] == "file" and m["sha256"] not in self.streams:
                p = sdir / (m["sha256"] + ".gz")
                p.write_bytes(gzip.compress(open(os.path.join(tree, m["path"]), "rb").read(), 6, mtime=0))
                self.streams[m["sha256"]] = str(p)
        p = sdir / "k3s.gz"
        p.write_bytes(gzip.compress(exe_bytes, 6, mtime=0))
        self.streams["k3s"] = str(p)


def k3s_fixture(name):
    fx = load_fixtures()
    assert name in fx, "fixture %s missing from %s: rebuild with tests/fixtures/build_fixtures.py" % (name, FIXTURES)
    return fx[name]


def run_k3s(exe, data_dir):
    """Start the fixture `k3s server --data-dir D` until it reports its status, stop it; returns the status."""
    status = os.path.join(data_dir, "fixture-status.json")
    if os.path.exists(status):
        os.unlink(status)
    proc = subprocess.Popen([exe, "server", "--data-dir", data_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    found = None
    try:
        deadline = time.time() + 30
        while found is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            if os.path.exists(status):   # written once the service runs (removed when it stops)
                try:
                    found = json.load(open(status))
                except ValueError:
                    pass
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert found is not None, out
    return found, out


def check_data(exe, data_dir):
    return subprocess.run([exe, "check-data", "--data-dir", data_dir], capture_output=True, text=True, check=False)


def _facts(m):
    """A member's facts to compare (a symlink's own mode means nothing on Linux)."""
    return dict((k, v) for k, v in m.items() if k not in ("path", "source") and not (k == "mode" and m["type"] == "symlink"))


def fixture_release(tmp_path, name):
    """The tree the fixture k3s extracts itself (its members must be those fixtures.json records)."""
    fx = k3s_fixture(name)
    d0 = str(tmp_path / ("extract-" + name))
    status, dummy = run_k3s(fx["path"], d0)
    assert status["extracted"] is True
    tree = os.path.join(d0, "data", fx["data_hash"])
    rel = Release(tmp_path, name, tree, open(fx["path"], "rb").read(), fx["data_hash"])
    assert dict((m["path"], _facts(m)) for m in rel.members) == dict((p, _facts(m)) for p, m in fx["members"].items())
    return fx, rel
