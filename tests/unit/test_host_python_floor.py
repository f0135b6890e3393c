"""Host-side code must parse and run on Python 3.6, the oldest Python on managed hosts (ansible-core 2.16 still
manages 3.6). Host-side is k0s_release, k0s_service and k0s_join_token plus every module_utils file they import, followed
recursively through their imports; the controller-side modules may use newer Python.

ast.parse(feature_version=(3, 6)) catches new syntax (walrus, positional-only parameters); a small AST scan
catches what parses but fails on 3.6 at import or run time. Where a real Python 3.6 exists (pyenv, PATH or
FLEETSPLIT_PYTHON36), the files are also compiled by it and the module_utils imported and exercised."""
import __future__
import ast
import glob
import hashlib
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(REPO, "plugins")
COLLECTION_PKG = "ansible_collections.fleetsplit.k0s"
MODULE_UTILS_PKG = COLLECTION_PKG + ".plugins.module_utils"
FLOOR = (3, 6)

HOST_MODULES = ("k0s_release", "k0s_service", "k0s_join_token", "k0s_images", "k0s_reset", "k0s_sysext", "k3s_data")
# Run where the k0s executable is (k0s_kubeconfig: the admin kubeconfig is written there; k0s_backup_store: the
# backup store and the identity file that decrypts never leave the controller).
CONTROLLER_MODULES = ("image_bundles", "image_output", "image_root_paths", "k0s_backup_store", "k0s_kubeconfig",
                      "mirror_publish", "payload_info", "payload_split", "stream_bundle", "sysext_channel")

# Known stdlib additions after 3.6 (attribute or function names), with the version that added them.
NEWER_ATTRIBUTES = {
    "fromisoformat": "3.7", "time_ns": "3.7", "monotonic_ns": "3.7", "perf_counter_ns": "3.7",
    "nullcontext": "3.7", "cached_property": "3.8", "shlex.join": "3.8", "math.isqrt": "3.8", "math.prod": "3.8",
    "removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9", "itertools.pairwise": "3.10",
}
NEWER_MODULES = {"dataclasses": "3.7", "contextvars": "3.7", "importlib.resources": "3.7",
                 "zoneinfo": "3.9", "graphlib": "3.9", "tomllib": "3.11"}
SUBPROCESS_KEYWORDS = {"capture_output": "3.7", "text": "3.7"}   # subprocess.run/Popen/check_output...
FUTURE_ON_36 = {name for name in __future__.all_feature_names
                if getattr(__future__, name).getOptionalRelease()[:2] <= FLOOR}
SUBSCRIPTABLE_SINCE_39 = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _module_utils_imports(path, tree):
    """Paths of this collection's module_utils files that ``tree`` imports (absolute or relative form)."""
    package = COLLECTION_PKG.split(".") + os.path.relpath(os.path.dirname(path), REPO).split(os.sep)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:   # from ..module_utils.x import y, from ..module_utils import x
            mod = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        for name in [mod] + ["%s.%s" % (mod, a.name) for a in node.names]:
            if name.startswith(MODULE_UTILS_PKG + "."):
                rel = name[len(MODULE_UTILS_PKG) + 1:].replace(".", os.sep)
                for cand in (rel + ".py", os.path.join(rel, "__init__.py")):
                    if os.path.isfile(os.path.join(PLUGINS, "module_utils", cand)):
                        out.append(os.path.join(PLUGINS, "module_utils", cand))
    return out


def host_side_files():
    todo = [os.path.join(PLUGINS, "modules", name + ".py") for name in HOST_MODULES]
    todo.append(os.path.join(PLUGINS, "module_utils", "host_module.py"))   # the compact transport's host side
    seen = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        with open(path) as f:
            todo += _module_utils_imports(path, ast.parse(f.read(), path))
    return sorted(seen)


HOST_FILES = host_side_files()


def _rel(path):
    return os.path.relpath(path, REPO)


def test_every_module_is_classified():
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PLUGINS, "modules", "*.py")))
    assert modules == sorted(HOST_MODULES + CONTROLLER_MODULES), "add new modules to HOST_MODULES or CONTROLLER_MODULES"


def test_host_side_files_are_derived_from_imports():
    # The walk must find the module_utils the host modules use (a broken walk would check nothing).
    assert {_rel(p) for p in HOST_FILES} >= {"plugins/modules/k0s_release.py", "plugins/modules/k0s_service.py",
                                             "plugins/module_utils/k0s_hostfs.py", "plugins/module_utils/payload/streams.py",
                                             "plugins/module_utils/payload/bundles.py", "plugins/module_utils/payload/fsio.py",
                                             "plugins/module_utils/release_store.py", "plugins/module_utils/release_plan.py",
                                             "plugins/module_utils/release_build.py", "plugins/module_utils/k0s_membership.py",
                                             "plugins/modules/k0s_images.py", "plugins/module_utils/k0s_images.py",
                                             "plugins/modules/k0s_reset.py", "plugins/module_utils/k0s_reset.py",
                                             "plugins/modules/k0s_sysext.py", "plugins/module_utils/k0s_sysext.py",
                                             "plugins/modules/k3s_data.py", "plugins/module_utils/k3s_data.py",
                                             "plugins/module_utils/k3s_tree.py"}
    # Host modules carry only the stream/bundle side of the payload library: no ELF, zip or legacy readers.
    controller_only = {"plugins/module_utils/k0s_payload.py", "plugins/module_utils/payload/elf.py",
                       "plugins/module_utils/payload/elfheaders.py",
                       "plugins/module_utils/payload/zipfmt.py", "plugins/module_utils/payload/legacy.py",
                       "plugins/module_utils/k0s_kubeconfig.py", "plugins/module_utils/image_sysext.py",
                       "plugins/module_utils/image_sysupdate.py", "plugins/module_utils/payload/k3s.py",
                       "plugins/module_utils/k0s_backup.py", "plugins/module_utils/k0s_age.py"}
    assert not {_rel(p) for p in HOST_FILES} & controller_only


def _newer_uses(tree):
    """(line, what) for uses that parse on 3.6 but fail there."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            found += [(node.lineno, "from __future__ import %s (3.7+)" % a.name)
                      for a in node.names if a.name not in FUTURE_ON_36]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom):
                names += ["%s.%s" % (node.module, a.name) for a in node.names]
            found += [(node.lineno, "import %s (%s+)" % (n, NEWER_MODULES[n])) for n in names if n in NEWER_MODULES]
        if isinstance(node, ast.Attribute):
            dotted = "%s.%s" % (node.value.id, node.attr) if isinstance(node.value, ast.Name) else node.attr
            for key in (dotted, node.attr):
                if key in NEWER_ATTRIBUTES:
                    found.append((node.lineno, "%s (%s+)" % (key, NEWER_ATTRIBUTES[key])))
                    break
        if isinstance(node, ast.Call):
            func = node.func
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            if owner == "subprocess":
                found += [(node.lineno, "subprocess.%s(%s=...) (%s+)" % (func.attr, k.arg, SUBPROCESS_KEYWORDS[k.arg]))
                          for k in node.keywords if k.arg in SUBPROCESS_KEYWORDS]
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in SUBSCRIPTABLE_SINCE_39:
            found.append((node.lineno, "%s[...] at run time (3.9+)" % node.value.id))
    return sorted(set(found))


@pytest.mark.parametrize("path", HOST_FILES, ids=_rel)
def test_parses_as_python_36(path):
    with open(path) as f:
        source = f.read()
    try:
        tree = ast.parse(source, path, feature_version=FLOOR)
    except SyntaxError as e:
        pytest.fail("%s:%s: not Python %d.%d syntax: %s" % (_rel(path), e.lineno, FLOOR[0], FLOOR[1], e.msg))
    problems = ["%s:%d: %s" % (_rel(path), line, what) for line, what in _newer_uses(tree)]
    assert not problems, "newer than Python 3.6:\n" + "\n".join(problems)


def test_scan_catches_known_cases():
    src = ("from __future__ import annotations\nimport dataclasses\nimport subprocess\n"
           "subprocess.run(['true'], capture_output=True, text=True)\nx = date.fromisoformat('2020-01-01')\n"
           "y = list[str]\n")
    lines = [line for line, _what in _newer_uses(ast.parse(src))]
    assert lines == [1, 2, 4, 4, 5, 6]
    with pytest.raises(SyntaxError):
        ast.parse("if (n := 1):\n    pass\n", feature_version=FLOOR)


def _python36():
    cands = [os.environ.get("FLEETSPLIT_PYTHON36"), shutil.which("python3.6")]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    cands += sorted(glob.glob(os.path.join(root, "versions", "3.6*", "bin", "python3.6")))
    for cand in cands:
        if cand and os.path.isfile(cand):
            probe = subprocess.run([cand, "-c", "import sys; assert sys.version_info[:2] == (3, 6)"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if probe.returncode == 0:
                return cand
    return None


PYTHON36 = _python36()
needs_36 = pytest.mark.skipif(PYTHON36 is None, reason="no Python 3.6 here (set FLEETSPLIT_PYTHON36)")


@needs_36
def test_real_python_36_compiles_host_side_files():
    script = ("import sys\nfor p in sys.argv[1:]:\n"
              "    with open(p) as f:\n        compile(f.read(), p, 'exec')\n")
    proc = subprocess.run([PYTHON36, "-c", script] + HOST_FILES, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stdout


# Run by Python 3.6: the stdlib-only module_utils import and do real work (the modules themselves need
# ansible's module_utils, which this venv's ansible-core no longer ships for 3.6).
SMOKE = """
import gzip, hashlib, os, sys, tempfile, zlib
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import k0s_hostfs
from module_utils.payload import bundles, fsio, streams
data = os.urandom(100000) + bytes(100000)
d = tempfile.mkdtemp()
k0s_hostfs.check_dir_chain(d)
stream = os.path.join(d, "x.gz")
k0s_hostfs.atomic_write(stream, gzip.compress(data), 0o600)
dst = os.path.join(d, "x")
streams.inflate_gzip_member(stream, dst, len(data), zlib.crc32(data), hashlib.sha256(data).hexdigest())
assert fsio.sha256_file(dst) == hashlib.sha256(data).hexdigest()
assert bundles.check_bundle_members([{"name": "x", "offset": 0, "size": 5}], 5) == {"x": (0, 5)}
from module_utils import k0s_payload   # the facade (k0s_release imported it before the payload package)
print("ok", k0s_payload.HAS_PYELFTOOLS)
"""


@needs_36
def test_real_python_36_runs_module_utils(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run([PYTHON36, "-I", "-c", SMOKE, os.path.join(PLUGINS, "module_utils")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout


# Run by Python 3.6: the release store builds, switches and queries a release from a real gzip stream.
RELEASE_SMOKE = """
import gzip, hashlib, os, sys, tempfile, zlib
sys.path.insert(0, sys.argv[1])
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_build
with open("/bin/ls", "rb") as f:
    data = f.read()
root = tempfile.mkdtemp()
p = dict(state="present", release_id=None, k0s_version="v1", files=[], switch=True, bundle=None,
         executable=dict(size=len(data), sha256=hashlib.sha256(data).hexdigest(), crc32=zlib.crc32(data)),
         streams_dir=os.path.join(root, "in"), bundle_members=None, store_dir=os.path.join(root, "store"),
         bin_dir=os.path.join(root, "bin"), libexec_dir=os.path.join(root, "libexec", "k0s"),
         data_dir=os.path.join(root, "data"), link_data_dir=True, pinned_mtime=None, keep_releases=2,
         verify=False, selinux_relabel=True)
os.makedirs(p["streams_dir"])
with open(os.path.join(p["streams_dir"], "k0s.gz"), "wb") as f:
    f.write(gzip.compress(data))
res = release_build.Runner(p).run()
with open(os.path.join(p["bin_dir"], "k0s"), "rb") as f:
    assert f.read() == data
assert res["sources"] == {"k0s": "stream"}, res
assert release_build.Runner(dict(p, state="query")).run()["up_to_date"] is True
print("ok", res["release_id"])
"""


@needs_36
def test_real_python_36_runs_the_release_store(tmp_path):
    from testlib import COLLECTIONS, ensure_collection_link
    ensure_collection_link()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run([PYTHON36, "-I", "-c", RELEASE_SMOKE, str(COLLECTIONS)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("ok v1-"), proc.stdout


# Run by Python 3.6: k3s_data stages a small k3s data tree from one real bundle, then queries it up to date.
K3S_SMOKE = """
import gzip, hashlib, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k3s_data
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import bundle_id
files = {}
for rel, src in (("bin/k3s", "/bin/ls"), ("bin/cni", "/bin/cat")):
    with open(src, "rb") as f:
        files[rel] = f.read()
sha = lambda d: hashlib.sha256(d).hexdigest()
files["bin/.sha256sums"] = "".join("%s  %s\\n" % (sha(files[r]), r[4:]) for r in sorted(files)).encode()
files["bin/.links"] = b"bridge cni\\n"
members = [dict(path=r, type="file", mode=0o755, size=len(d), sha256=sha(d)) for r, d in sorted(files.items())]
members.append(dict(path="bin/bridge", type="symlink", target="cni"))
exe = files["bin/k3s"] + b"outer"
root = tempfile.mkdtemp()
blobs = dict((sha(d), d) for d in files.values())
blobs["k3s"] = exe
bundle, table, offset = os.path.join(root, "b"), [], 0
with open(bundle, "wb") as f:
    for name in sorted(blobs):
        z = gzip.compress(blobs[name])
        f.write(z)
        table.append(dict(name=name, offset=offset, size=len(z)))
        offset += len(z)
p = dict(data_dir=root + "/k3s", bin_dir=root + "/bin", store_dir=root + "/store", cli_links=["kubectl"])
e = dict(size=len(exe), sha256=sha(exe))
h = "a" * 64
assert k3s_data.present(p, members, e, h, bundle, table)["changed"]
assert os.readlink(root + "/k3s/data/cni/bridge") == root + "/k3s/data/" + h + "/bin/cni"
assert k3s_data.result(k3s_data.query(p, members, e, h))["up_to_date"]
print("ok", len(table))
"""


@needs_36
def test_real_python_36_runs_k3s_data(tmp_path):
    from testlib import COLLECTIONS, ensure_collection_link
    ensure_collection_link()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run([PYTHON36, "-I", "-c", K3S_SMOKE, str(COLLECTIONS)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("ok 5"), proc.stdout


def _ansible_core():
    from ansible.release import __version__
    return tuple(int(x) for x in __version__.split(".")[:2])


HOST_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.k0s_release:
        state: query
        store_dir: "{{ root }}/store"
        bin_dir: "{{ root }}/bin"
        libexec_dir: "{{ root }}/libexec/k0s"
        data_dir: "{{ root }}/data"
        files: [{name: runc, size: 3, sha256: "{{ '0' * 64 }}", crc32: 0}]
        executable: {size: 3, sha256: "{{ '1' * 64 }}", crc32: 0}
      register: query
    - fleetsplit.k0s.k0s_service: {name: k0sworker, manager: systemd, unit: "[Unit]\\n", root: "{{ root }}/overlay"}
    - ansible.builtin.copy: {content: "{{ query | to_json }}", dest: "{{ root }}/query.json"}
      vars: {ansible_python_interpreter: "{{ ansible_playbook_python }}"}
"""


@needs_36
@pytest.mark.skipif(_ansible_core() >= (2, 17), reason="ansible-core 2.17+ manages no Python 3.6 host; "
                    "runs under the oldest supported ansible-core (.venv-compat)")
def test_host_modules_run_on_a_python_36_host(tmp_path):
    import json
    from testlib import run_playbook
    (tmp_path / "play.yml").write_text(HOST_PLAY)
    proc, out = run_playbook(["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % PYTHON36,
                              "-e", "root=%s" % tmp_path, tmp_path / "play.yml"], cwd=tmp_path)
    assert proc.returncode == 0, out
    assert json.loads((tmp_path / "query.json").read_text())["missing"] == ["k0s", "runc"]
    assert (tmp_path / "overlay" / "etc" / "systemd" / "system" / "k0sworker.service").read_text() == "[Unit]\n"


# Run by Python 3.6: pull distribution's fetch (urllib) against a real mirror on 127.0.0.1 (served by the test):
# a good stream, a corrupted one (refused), a truncated one resumed with Range.
MIRROR_SMOKE = """
import hashlib, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
from ansible_collections.fleetsplit.k0s.plugins.module_utils import mirror_fetch as mf
url, good, bad, cut, size = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
d = tempfile.mkdtemp()
f = mf.Fetcher(url, timeout=5, retries=1, headers={"Authorization": "Bearer x"}, sleep=lambda s: None)
f.fetch("a", good, size, d)
with open(os.path.join(d, "a.gz"), "rb") as fh:
    assert hashlib.sha256(fh.read()).hexdigest() == good
try:
    f.fetch("b", bad, size, d)
    raise SystemExit("corrupted stream accepted")
except mf.MismatchError as e:
    assert bad in str(e) and "Bearer" not in str(e)
f.sleep = lambda s: open(sys.argv[7], "w").close()   # the mirror stops truncating while the client backs off
f.fetch("c", cut, size, d)
assert sorted(os.listdir(d)) == ["a.gz", "c.gz"], os.listdir(d)
print("ok", f.requests)
"""


@needs_36
def test_real_python_36_fetches_from_a_mirror(tmp_path):
    from mirrorlib import Mirror
    from testlib import COLLECTIONS, ensure_collection_link
    ensure_collection_link()
    blobs = tmp_path / "tree" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    names = []
    for i in range(3):
        data = os.urandom(100000) + bytes([i])
        name = hashlib.sha256(data).hexdigest()
        (blobs / name).write_bytes(data)
        names.append(name)
    healed = tmp_path / "healed"
    with Mirror(tmp_path / "tree") as m:
        m.faults.update(corrupt={names[1]}, truncate={names[2]}, ranges=True)

        class Heal(set):   # the truncation ends once the Python 3.6 client signals its backoff
            def __contains__(self, item):
                return not healed.exists() and set.__contains__(self, item)
        m.faults["truncate"] = Heal({names[2]})
        proc = subprocess.run([PYTHON36, "-I", "-c", MIRROR_SMOKE, str(COLLECTIONS), m.url] + names
                              + ["100001", str(healed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, check=False, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("ok 4"), proc.stdout
        assert [e["range"] for e in m.log][-2:] == [None, "bytes=50000-"], m.log
