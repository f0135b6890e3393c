"""k3s executables (format ``k3s``): the embedded archive found and verified, every member sha256-exact against
``zstd -dc | tar -x`` of the same bytes, a data dir the fixture k3s (k3s's extract rules, tests/fixtures/fake_k3s)
accepts without extracting again, streams per content, and bad inputs refused with nothing written."""
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import sys
import subprocess
import tarfile
import time

import pytest
import zstandard

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import k3s
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import CorruptPayloadError, PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.streams import inflate_gzip_member

import testlib


@pytest.fixture(scope="module")
def k3s_fixtures(fixtures):
    missing = [n for n in ("k3s", "k3s-v2", "k3s-bad-zstd", "k3s-bad-escape", "k3s-bad-hash") if n not in fixtures]
    assert not missing, "fixtures.json lacks %s: rebuild with tests/fixtures/build_fixtures.py (set k3s)" % missing
    return fixtures


def archive_bytes(path, fact):
    with open(path, "rb") as f:
        f.seek(fact["archive"]["offset"])
        return f.read(fact["archive"]["length"])


def unpack_with_tools(path, fact, out):
    """The reference: the zstd CLI and GNU tar on the archive's bytes (cut out by the fixture's own facts)."""
    os.makedirs(out)
    data = archive_bytes(path, fact)
    tarball = subprocess.run(["zstd", "-dc", "--long=25"], input=data, stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=tarball, check=True)
    return out


def tree_of(root):
    """{path: (type, mode, sha256 or target)} below ``root``."""
    found = {}
    for entry in testlib.tree_entries(root):
        path, st, content = entry
        rel = os.path.relpath(path, root)
        kind = "symlink" if stat.S_ISLNK(st.st_mode) else ("dir" if stat.S_ISDIR(st.st_mode) else "file")
        found[rel] = (kind, stat.S_IMODE(st.st_mode) if kind == "file" else None, content if kind != "dir" else None)
    return found


def members_as_tree(members):
    return dict((m["path"], (m["type"], m["mode"] if m["type"] == "file" else None,
                             m["sha256"] if m["type"] == "file" else m["target"])) for m in members)


def run_fixture_server(exe, data_dir, timeout=20):
    """Start ``k3s server --data-dir`` (the fixture), wait for its status file, stop it; returns the status."""
    status_path = os.path.join(data_dir, "fixture-status.json")
    proc = subprocess.Popen([exe, "server", "--data-dir", data_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(status_path):
            assert proc.poll() is None, "fixture k3s exited: %s" % proc.stderr.read().decode()
            assert time.monotonic() < deadline, "fixture k3s wrote no status within %d s" % timeout
            time.sleep(0.05)
        with open(status_path) as f:
            status = json.load(f)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    return status, err.decode()


# --------------------------------------------------------------------------- facts

def test_info_finds_and_verifies_the_archive(k3s_fixtures):
    fact = k3s_fixtures["k3s"]
    payload = k0s_payload.inspect(fact["path"])
    info = k0s_payload.describe(payload)
    assert info["format"] == "k3s"
    assert info["k3s_version"] == fact["version"] == "v1.31.4+k3s1"
    assert info["archive"] == dict((k, fact["archive"][k]) for k in ("name", "offset", "length", "sha256"))
    assert info["data_hash"] == fact["data_hash"] == hashlib.sha256(archive_bytes(fact["path"], fact)).hexdigest()
    assert info["elf_machine"] == "x86_64"
    assert k0s_payload.describe(k0s_payload.inspect(k3s_fixtures["k3s-v2"]["path"]))["k3s_version"] == "v1.31.5+k3s1"


def test_every_member_matches_zstd_and_tar(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    info = k0s_payload.describe(k0s_payload.inspect(fact["path"]))
    reference = tree_of(unpack_with_tools(fact["path"], fact, str(tmp_path / "ref")))
    assert members_as_tree(info["members"]) == reference
    files = [m for m in info["members"] if m["type"] == "file"]
    assert {"bin/k3s", "bin/runc", "bin/cni", "bin/.sha256sums", "bin/.links"} <= set(m["path"] for m in files)
    assert all(set(m) == {"path", "type", "mode", "size", "sha256", "target"} for m in info["members"])
    assert [m["path"] for m in info["members"]] == sorted(m["path"] for m in info["members"])
    # files: one per distinct content, named by its sha256
    assert sorted(f["name"] for f in info["files"]) == sorted(set(m["sha256"] for m in files))
    assert all(f["name"] == f["sha256"] for f in info["files"])


# --------------------------------------------------------------------------- data dir and streams

def test_split_data_dir_is_accepted_without_extraction(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    data_dir = str(tmp_path / "k3s")
    result = k0s_payload.split(fact["path"], dest=data_dir)
    final = os.path.join(data_dir, "data", fact["data_hash"])
    assert result["data_dir"] == {"path": final, "changed": True}
    reference = tree_of(unpack_with_tools(fact["path"], fact, str(tmp_path / "ref")))
    assert tree_of(final) == reference                      # modes, contents, links exactly as tar leaves them
    assert os.readlink(os.path.join(data_dir, "data", "current")) == final
    assert os.readlink(os.path.join(data_dir, "data", "cni", "cni")) == os.path.join(final, "bin", "cni")
    assert os.readlink(os.path.join(data_dir, "data", "cni", "flannel")) == os.path.join(final, "bin", "cni")
    assert not os.path.lexists(final + "-tmp")
    check = subprocess.run([fact["path"], "check-data", "--data-dir", data_dir], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    status, err = run_fixture_server(fact["path"], data_dir)
    assert status["extracted"] is False and status["dir"] == final, (status, err)
    assert "Preparing data dir" not in err
    assert not os.path.exists(os.path.join(data_dir, "fixture-extractions.log"))


def test_fixture_extracts_into_an_empty_data_dir(k3s_fixtures, tmp_path):
    """The control: without the split's tree the same fixture does extract (so the test above can fail)."""
    fact = k3s_fixtures["k3s"]
    data_dir = str(tmp_path / "k3s")
    status, err = run_fixture_server(fact["path"], data_dir)
    assert status["extracted"] is True
    with open(os.path.join(data_dir, "fixture-extractions.log")) as f:
        assert f.read() == "extracted %s\n" % fact["data_hash"]
    # and the split then finds k3s's own tree exactly as it would write it: nothing to change
    result = k0s_payload.split(fact["path"], dest=data_dir, write=False)
    assert result["data_dir"]["changed"] is False


def test_second_split_writes_nothing(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    kw = dict(dest=str(tmp_path / "k3s"), streams_dest=str(tmp_path / "streams"),
              stripped_executable=str(tmp_path / "exe" / "k3s"))
    os.makedirs(str(tmp_path / "exe"))
    first = k0s_payload.split(fact["path"], **kw)
    assert all(f["changed"] for f in first["files"])
    before = testlib.tree_snapshot(str(tmp_path))
    again = k0s_payload.split(fact["path"], **kw)
    assert testlib.tree_snapshot(str(tmp_path)) == before
    assert not any(f["changed"] for f in again["files"])
    assert again["data_dir"]["changed"] is False and again["stripped_executable"]["changed"] is False
    assert again["healed"] == []
    assert again["files"] == [dict(f, changed=False) for f in first["files"]]


def test_streams_inflate_to_every_file_and_the_whole_executable(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    result = k0s_payload.split(fact["path"], streams_dest=str(tmp_path / "streams"))
    members = dict((m["sha256"], m) for m in result["members"] if m["type"] == "file")
    for item in result["files"]:
        assert item["stream"] == str(tmp_path / "streams" / "k3s" / (item["sha256"] + ".gz"))
        assert item["stream_sha256"] == testlib.sha256(item["stream"]) and item["size"] == members[item["name"]]["size"]
        out = str(tmp_path / ("out-" + item["name"]))
        inflate_gzip_member(item["stream"], out, item["size"], item["crc32"], item["sha256"])
    exe = result["stripped_executable"]
    assert exe["name"] == "k3s" and exe["size"] == fact["size"] and exe["sha256"] == fact["sha256"]
    assert exe["stream"] == str(tmp_path / "streams" / "bin" / "k3s.gz")
    with gzip.open(exe["stream"]) as f:
        assert hashlib.sha256(f.read()).hexdigest() == fact["sha256"]


def test_upgrade_rewrites_only_changed_content_and_rotates_current(k3s_fixtures, tmp_path):
    v1, v2 = k3s_fixtures["k3s"], k3s_fixtures["k3s-v2"]
    kw = dict(dest=str(tmp_path / "k3s"), streams_dest=str(tmp_path / "streams"))
    k0s_payload.split(v1["path"], **kw)
    result = k0s_payload.split(v2["path"], **kw)
    changed = sorted(f["name"] for f in result["files"] if f["changed"])
    new_content = set(m["sha256"] for m in result["members"] if m["type"] == "file") - \
        set(m["sha256"] for m in k0s_payload.describe(k0s_payload.inspect(v1["path"]))["members"] if m["type"] == "file")
    assert changed == sorted(new_content) and len(changed) == 2      # bin/runc and bin/.sha256sums
    data = os.path.join(kw["dest"], "data")
    assert os.readlink(os.path.join(data, "current")) == os.path.join(data, v2["data_hash"])
    assert os.readlink(os.path.join(data, "previous")) == os.path.join(data, v1["data_hash"])
    assert os.readlink(os.path.join(data, "cni", "cni")) == os.path.join(data, v2["data_hash"], "bin", "cni")
    status, err = run_fixture_server(v2["path"], kw["dest"])
    assert status["extracted"] is False, err
    assert not os.path.exists(os.path.join(kw["dest"], "fixture-extractions.log"))


def test_tampered_tree_is_rebuilt(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    data_dir = str(tmp_path / "k3s")
    k0s_payload.split(fact["path"], dest=data_dir)
    runc = os.path.join(data_dir, "data", fact["data_hash"], "bin", "runc")
    with open(runc, "ab") as f:
        f.write(b"tampered")
    check = subprocess.run([fact["path"], "check-data", "--data-dir", data_dir], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 1 and "runc" in check.stdout + check.stderr
    assert k0s_payload.split(fact["path"], dest=data_dir, write=False)["data_dir"]["changed"] is True
    assert testlib.sha256(runc) != [m for m in k0s_payload.describe(k0s_payload.inspect(fact["path"]))["members"]
                                    if m["path"] == "bin/runc"][0]["sha256"]      # check mode wrote nothing
    result = k0s_payload.split(fact["path"], dest=data_dir)
    assert result["healed"] == [os.path.join(data_dir, "data", fact["data_hash"])]
    assert subprocess.run([fact["path"], "check-data", "--data-dir", data_dir], check=False).returncode == 0
    assert sorted(os.listdir(os.path.join(data_dir, "data"))) == sorted([".lock", "cni", "current", fact["data_hash"]])


# --------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("name, words", [
    ("k3s-bad-zstd", "zstd frame is truncated"),
    ("k3s-bad-escape", "escapes the data directory"),
    ("k3s-bad-hash", "its name is not its hash"),
])
def test_bad_archives_are_refused_with_nothing_written(k3s_fixtures, tmp_path, name, words):
    fact = k3s_fixtures[name]
    out = tmp_path / "out"
    with pytest.raises(PayloadError) as e:
        k0s_payload.split(fact["path"], dest=str(out / "k3s"), streams_dest=str(out / "streams"),
                          stripped_executable=str(out / "k3s.exe"))
    assert words in str(e.value) and fact["path"] in str(e.value)
    assert not out.exists()


def test_bad_escape_names_the_member(k3s_fixtures):
    with pytest.raises(PayloadError) as e:
        k0s_payload.inspect(k3s_fixtures["k3s-bad-escape"]["path"])
    assert k3s_fixtures["k3s-bad-escape"]["escape_member"] in str(e.value)


def test_corrupt_frame_is_refused(k3s_fixtures, tmp_path):
    """Bytes flipped inside the frame (name hash bypassed: the walk itself must notice)."""
    fact = k3s_fixtures["k3s"]
    copy = str(tmp_path / "k3s")
    shutil.copyfile(fact["path"], copy)
    payload = k0s_payload.inspect(copy)
    archive = payload.k3s
    with open(copy, "r+b") as f:
        f.seek(archive.offset + archive.length // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(CorruptPayloadError) as e:
        k3s.walk(copy, archive)
    assert "corrupt" in str(e.value) or "tar" in str(e.value)
    with pytest.raises(CorruptPayloadError):
        k0s_payload.inspect(copy)          # and the name check refuses it first in a real run


def synthetic(tmp_path, entries, lists=True):
    """A .tar.zst file of ``entries`` [(name, type, data or target)] plus, optionally, matching .sha256sums/.links."""
    buf = io.BytesIO()
    files = dict((n, d) for n, t, d in entries if t == "file")
    links = dict((n, d) for n, t, d in entries if t == "symlink")
    if lists:
        sums = "".join("%s  %s\n" % (hashlib.sha256(d).hexdigest(), n[len("./bin/"):]) for n, d in sorted(files.items())
                       if n.startswith("./bin/"))
        linklist = "".join("%s %s\n" % (n[len("./bin/"):], t) for n, t in sorted(links.items()) if n.startswith("./bin/"))
        entries = entries + [("./bin/.sha256sums", "file", sums.encode()), ("./bin/.links", "file", linklist.encode())]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tar.addfile(info)
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    blob = zstandard.ZstdCompressor(level=3).compress(buf.getvalue())
    path = str(tmp_path / "archive.tar.zst")
    with open(path, "wb") as f:
        f.write(blob)
    name = "embed/%s.tar.zst" % hashlib.sha256(blob).hexdigest()
    return path, k3s.Archive(name, 0, len(blob), b"", "v1.31.4+k3s1")


GOOD = [("./bin", "dir", None), ("./bin/k3s", "file", b"\x7fELF k3s"), ("./bin/cni", "file", b"\x7fELF cni"),
        ("./bin/kubectl", "symlink", "k3s"), ("./bin/bridge", "symlink", "cni")]


def test_synthetic_archive_is_read(tmp_path):
    path, archive = synthetic(tmp_path, GOOD)
    k3s.walk(path, archive)
    assert [m["path"] for m in archive.members] == [
        "bin", "bin/.links", "bin/.sha256sums", "bin/bridge", "bin/cni", "bin/k3s", "bin/kubectl"]


@pytest.mark.parametrize("extra, lists, words", [
    ([("./bin/abs", "symlink", "/usr/bin/runc")], True, "points outside data/<hash>/"),
    ([("./bin/up", "symlink", "../../../etc/passwd")], True, "points outside data/<hash>/"),
    ([("./bin/hard", "hardlink", "./bin/k3s")], True, "hard link"),
    ([("bin/x/..", "dir", None)], True, "not a plain relative path"),
    ([("/bin/abs", "file", b"x")], True, "escapes the data directory"),
    ([("./bin/k3s", "file", b"again")], True, "occurs twice"),
    ([], False, ".sha256sums is missing or empty"),
    ([("./bin/a", "symlink", "k3s"), ("./bin/a/x", "file", b"x")], True, "lies below bin/a, which is a symlink"),
    ([("./bin/d/x", "file", b"x"), ("./bin/d", "symlink", "cni")], True, "other members lie below it"),
    ([("./bin/k3s/x", "file", b"x")], True, "lies below bin/k3s, which is a file"),
])
def test_synthetic_refusals(tmp_path, extra, lists, words):
    path, archive = synthetic(tmp_path, GOOD + extra, lists=lists)
    with pytest.raises(PayloadError) as e:
        k3s.walk(path, archive)
    assert words in str(e.value)


def test_sums_that_do_not_match_are_refused(tmp_path):
    path, archive = synthetic(tmp_path, [e for e in GOOD if e[0] != "./bin/k3s"], lists=True)
    with pytest.raises(PayloadError) as e:
        k3s.walk(path, archive)
    assert "no bin/k3s" in str(e.value)
    entries = GOOD + [("./bin/.sha256sums", "file", b"0000  k3s\n"), ("./bin/.links", "file", b"kubectl k3s\n")]
    path, archive = synthetic(tmp_path, entries, lists=False)
    with pytest.raises(PayloadError) as e:
        k3s.walk(path, archive)
    assert "k3s (sha256 0000 listed" in str(e.value)


def test_k0s_executables_are_not_k3s(fixtures):
    small = fixtures["k0s-small-zip"]
    assert k0s_payload.inspect(small["path"]).format == "zip"
    assert k0s_payload.inspect(small["bare_path"]).format == "bare"


def test_changed_embed_table_hash_is_refused(k3s_fixtures, tmp_path):
    """The compiler's 16-byte content hash in the embed.FS entry must match the archive's bytes."""
    fact = k3s_fixtures["k3s"]
    copy = str(tmp_path / "k3s")
    shutil.copyfile(fact["path"], copy)
    embed_hash = k0s_payload.inspect(copy).k3s.embed_hash
    with open(copy, "r+b") as f:
        data = f.read()
        assert data.count(embed_hash) == 1
        f.seek(data.index(embed_hash))
        f.write(bytes(b ^ 0x55 for b in embed_hash))
    with pytest.raises(CorruptPayloadError) as e:
        k0s_payload.inspect(copy)
    assert "changed after linking" in str(e.value)


def test_damaged_stream_is_healed(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    streams = str(tmp_path / "streams")
    first = k0s_payload.split(fact["path"], streams_dest=streams)
    runc = [m["sha256"] for m in first["members"] if m["path"] == "bin/runc"][0]
    damaged = os.path.join(streams, "k3s", runc + ".gz")
    with open(damaged, "r+b") as f:
        f.truncate(100)
    result = k0s_payload.split(fact["path"], streams_dest=streams)
    assert result["healed"] == [damaged]
    assert [f["name"] for f in result["files"] if f["changed"]] == [runc]
    assert testlib.sha256(damaged) == [f for f in first["files"] if f["name"] == runc][0]["stream_sha256"]


GO_EMBED = """package main

import (
\t"embed"
\t"fmt"
)

//go:embed embed/*
var data embed.FS

var Version = "unset"

func main() { fmt.Println(Version, data) }
"""


@pytest.mark.parametrize("goarch, machine, extra", [
    ("386", "i386", []),                    # 32-bit words: table entries of 4-byte pointers and lengths
    ("s390x", "s390x", []),                 # big-endian
    ("amd64", "x86_64", ["-buildmode=pie"]),  # the table in .data.rel.ro
])
def test_embed_table_on_other_word_sizes_and_byte_orders(tmp_path, goarch, machine, extra):
    """A real Go build (go:embed as pkg/data does) for another architecture: the same archive is found."""
    from build_fixtures import find_go, go_env
    path, archive = synthetic(tmp_path, GOOD)
    src = tmp_path / "src"
    (src / "embed").mkdir(parents=True)
    shutil.copyfile(path, str(src / "embed" / archive.name[len("embed/"):]))
    (src / "main.go").write_text(GO_EMBED)
    (src / "go.mod").write_text("module example.com/k3slike\n\ngo 1.22\n")
    exe = str(tmp_path / "k3s")
    env = dict(go_env(testlib.REPO / ".cache"), GOARCH=goarch)
    subprocess.run([find_go(None), "build", "-trimpath", "-o", exe] + extra +
                   ["-ldflags", "-X main.Version=v1.30.2+k3s1", "."], cwd=str(src), env=env, check=True)
    info = k0s_payload.describe(k0s_payload.inspect(exe))
    assert (info["format"], info["elf_machine"], info["k3s_version"]) == ("k3s", machine, "v1.30.2+k3s1")
    assert info["archive"]["name"] == archive.name and info["archive"]["length"] == archive.length
    with open(path, "rb") as f:
        assert archive_bytes(exe, info) == f.read()
    assert [m["path"] for m in info["members"]] == [
        "bin", "bin/.links", "bin/.sha256sums", "bin/bridge", "bin/cni", "bin/k3s", "bin/kubectl"]


def test_cli_info_and_split(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    cli = [sys.executable, str(testlib.REPO / "scripts" / "k0s-payload")]
    info = subprocess.run(cli + ["info", fact["path"], "--json"], capture_output=True, text=True, check=True)
    facts = json.loads(info.stdout)
    assert facts["format"] == "k3s" and facts["data_hash"] == fact["data_hash"]
    assert facts["stripped_executable"]["sha256"] == fact["sha256"]
    text = subprocess.run(cli + ["info", fact["path"]], capture_output=True, text=True, check=True).stdout
    assert "format k3s, k3s v1.31.4+k3s1" in text and "-> data/%s/" % fact["data_hash"] in text
    assert "symlink 0777 bin/kubectl" in text and "-> k3s" in text
    split = subprocess.run(cli + ["split", fact["path"], "--dest", str(tmp_path / "d")], capture_output=True,
                           text=True, check=True).stdout
    assert "data dir written" in split
    assert os.path.isfile(str(tmp_path / "d" / "data" / fact["data_hash"] / "bin" / "k3s"))
    bad = subprocess.run(cli + ["info", k3s_fixtures["k3s-bad-zstd"]["path"]], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and "k0s-payload: error:" in bad.stderr and "truncated" in bad.stderr


def test_a_planted_tmp_link_is_not_followed(k3s_fixtures, tmp_path):
    """k3s's temporary name <hash>-tmp as a symlink elsewhere: removed, never written through."""
    fact = k3s_fixtures["k3s"]
    data = tmp_path / "k3s" / "data"
    data.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(str(elsewhere), str(data / (fact["data_hash"] + "-tmp")))
    k0s_payload.split(fact["path"], dest=str(tmp_path / "k3s"))
    assert os.listdir(str(elsewhere)) == []
    assert os.path.isfile(str(data / fact["data_hash"] / "bin" / "k3s"))


def test_without_zstandard_the_cli_says_what_to_install(k3s_fixtures, tmp_path):
    """This interpreter without site-packages (-S) but with pyelftools on PYTHONPATH: zstandard is out of reach."""
    import elftools
    libs = tmp_path / "libs"
    libs.mkdir()
    os.symlink(os.path.dirname(elftools.__file__), str(libs / "elftools"))
    env = dict(os.environ, PYTHONPATH=str(libs))
    probe = subprocess.run([sys.executable, "-S", "-c", "import elftools, zstandard"], env=env, capture_output=True,
                           text=True, check=False)
    assert "No module named 'zstandard'" in probe.stderr
    cli = [sys.executable, "-S", str(testlib.REPO / "scripts" / "k0s-payload")]
    proc = subprocess.run(cli + ["info", k3s_fixtures["k3s"]["path"]], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "needs the python zstandard package (pip install zstandard)" in proc.stderr


def test_first_split_decompresses_the_archive_once(k3s_fixtures, tmp_path, monkeypatch):
    """The walk that checks the archive also writes the data dir and the streams when none exist yet; a second
    split still reads it once (to re-derive the facts) and writes nothing."""
    fact = k3s_fixtures["k3s"]
    opened = []
    real = k3s.ZstdStream.__init__

    def counting(self, *args, **kwargs):
        opened.append(args)
        real(self, *args, **kwargs)
    monkeypatch.setattr(k3s.ZstdStream, "__init__", counting)
    kw = dict(dest=str(tmp_path / "k3s"), streams_dest=str(tmp_path / "streams"))
    first = k0s_payload.split(fact["path"], **kw)
    assert len(opened) == 1 and first["data_dir"]["changed"] and all(f["changed"] for f in first["files"])
    assert tree_of(str(tmp_path / "k3s" / "data" / fact["data_hash"])) == tree_of(
        unpack_with_tools(fact["path"], fact, str(tmp_path / "ref")))
    assert sorted(os.listdir(str(tmp_path / "streams" / "k3s"))) == sorted(f["name"] + ".gz" for f in first["files"])
    assert not [n for n in os.listdir(str(tmp_path / "k3s" / "data")) if n.endswith("-tmp") or n.endswith(".old")]
    del opened[:]
    again = k0s_payload.split(fact["path"], **kw)
    assert len(opened) == 1 and not again["data_dir"]["changed"] and not any(f["changed"] for f in again["files"])


def test_foreign_current_is_refused_before_the_tree_is_written(k3s_fixtures, tmp_path):
    fact = k3s_fixtures["k3s"]
    data = tmp_path / "k3s" / "data"
    data.mkdir(parents=True)
    (data / "current").write_bytes(b"a file, not k3s's link")
    with pytest.raises(PayloadError) as e:
        k0s_payload.split(fact["path"], dest=str(tmp_path / "k3s"))
    assert "current exists and is not a symlink" in str(e.value)
    assert sorted(os.listdir(str(data))) == ["current"]


def test_an_extra_file_in_the_tree_is_rebuilt(k3s_fixtures, tmp_path):
    """The tree must be exactly the archive's (the host library's check): a planted file makes the split rebuild it."""
    fact = k3s_fixtures["k3s"]
    dest = str(tmp_path / "k3s")
    k0s_payload.split(fact["path"], dest=dest)
    planted = os.path.join(dest, "data", fact["data_hash"], "bin", "planted")
    with open(planted, "wb") as f:
        f.write(b"x")
    result = k0s_payload.split(fact["path"], dest=dest)
    assert result["data_dir"]["changed"] and not os.path.lexists(planted)
    assert result["healed"] == [os.path.join(dest, "data", fact["data_hash"])]
