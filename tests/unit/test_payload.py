"""The payload library against genuine-format k0s executables and damaged copies of them."""
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import zipfile
import zlib

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload as kp

FORMATS = ["zip", "legacy"]

# Every test here runs under each deflate engine installed (isal, zlib-ng) and under zlib alone (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("deflate_engine")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data, mode=0o755):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return str(path)


def snapshot(directory):
    """Names, bytes and inodes below a directory: proves a failed split left it untouched."""
    state = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        state[name] = (st.st_ino, read(path) if os.path.isfile(path) else None)
    return state


@pytest.fixture
def small(fixtures):
    return {"zip": fixtures["k0s-small-zip"], "legacy": fixtures["k0s-small-legacy"]}


@pytest.fixture
def populated_dest(tmp_path):
    """A dest that already holds an earlier split; errors must leave it exactly so."""
    dest = tmp_path / "dest"
    dest.mkdir()
    write(dest / "runc", b"previous runc\n")
    write(dest / "kubelet", b"previous kubelet\n")
    return str(dest)


def copy_of(fixture, tmp_path, name="k0s"):
    path = tmp_path / name
    shutil.copyfile(fixture["path"], path)
    os.chmod(path, 0o755)
    return str(path)


def exe_with_zip(tmp_path, bare_path, entries, name="k0s", compression=zipfile.ZIP_DEFLATED, patch=None):
    """A k0s-shaped executable: a real bare Go program with a zip built by Python's zipfile appended."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for entry_name, data in entries:
            zf.writestr(zipfile.ZipInfo(entry_name, (1980, 1, 1, 0, 0, 0)), data, compress_type=compression)
    blob = buf.getvalue()
    if patch:
        blob = patch(bytearray(blob))
    return write(tmp_path / name, read(bare_path) + bytes(blob))


# --------------------------------------------------------------------------- genuine fixtures

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", ["small", "full"])
def test_inspect_genuine(fixtures, fmt, size):
    fixture = fixtures["k0s-%s" % fmt if size == "full" else "k0s-small-%s" % fmt]
    payload = kp.inspect(fixture["path"])
    assert payload.format == fmt
    assert payload.names() == sorted(fixture["binaries"])
    assert payload.payload_offset == os.path.getsize(fixture["bare_path"])
    assert payload.k0s_version == fixture["version"]
    assert payload.elf_machine == "x86_64"
    for entry in payload.entries:
        assert entry.size == fixture["binaries"][entry.name]["size"]
    if fmt == "legacy":
        assert payload.bin_data_size == payload.payload_size
        assert all(e.sha256 == fixture["binaries"][e.name]["sha256"] for e in payload.entries)


def test_bare_build_has_no_payload(fixtures, tmp_path):
    payload = kp.inspect(fixtures["k0s-zip"]["bare_path"])
    assert payload.format == kp.FORMAT_BARE and payload.entries == []
    with pytest.raises(kp.PayloadError, match="no embedded payload"):
        kp.split(fixtures["k0s-zip"]["bare_path"], dest=str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("workers", [1, 2])
def test_split_full_fixture_byte_exact(fixtures, tmp_path, fmt, workers):
    fixture = fixtures["k0s-%s" % fmt]
    dest, streams = tmp_path / "libexec", tmp_path / "streams"
    result = kp.split(fixture["path"], dest=str(dest), stripped_executable=str(tmp_path / "bin" / "k0s"),
                      streams_dest=str(streams), workers=workers)
    assert result["format"] == fmt
    assert sorted(os.listdir(dest)) == sorted(fixture["binaries"])
    for item in result["files"]:
        expected = fixture["binaries"][item["name"]]
        assert sha256(dest / item["name"]) == expected["sha256"] == item["sha256"]
        assert os.stat(dest / item["name"]).st_mode & 0o777 == 0o755
        # The shipped stream is a genuine gzip member of the same bytes.
        with gzip.open(item["stream"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == expected["sha256"]
    assert read(tmp_path / "bin" / "k0s") == read(fixture["bare_path"])
    with gzip.open(result["stripped_executable"]["stream"], "rb") as f:
        assert f.read() == read(fixture["bare_path"])
    # The stripped executable is a working k0s-like program.
    out = subprocess.run([str(tmp_path / "bin" / "k0s"), "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fixture["version"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_split_is_idempotent(small, tmp_path, fmt):
    dest = tmp_path / "d"
    first = kp.split(small[fmt]["path"], dest=str(dest), stripped_executable=str(tmp_path / "k0s"),
                     streams_dest=str(tmp_path / "s"))
    assert all(f["changed"] for f in first["files"]) and first["stripped_executable"]["changed"]
    inodes = dict((n, os.stat(dest / n).st_ino) for n in os.listdir(dest))
    second = kp.split(small[fmt]["path"], dest=str(dest), stripped_executable=str(tmp_path / "k0s"),
                      streams_dest=str(tmp_path / "s"))
    assert not any(f["changed"] for f in second["files"]) and not second["stripped_executable"]["changed"]
    assert inodes == dict((n, os.stat(dest / n).st_ino) for n in os.listdir(dest))
    assert not [n for n in os.listdir(dest) if n.startswith(".")], "temp files left behind"
    # One changed file is rewritten, the rest are not.
    write(dest / "runc", b"tampered")
    third = kp.split(small[fmt]["path"], dest=str(dest))
    assert [f["name"] for f in third["files"] if f["changed"]] == ["runc"]
    assert sha256(dest / "runc") == small[fmt]["binaries"]["runc"]["sha256"]


def test_check_mode_writes_nothing(small, tmp_path):
    result = kp.split(small["zip"]["path"], dest=str(tmp_path / "d"), stripped_executable=str(tmp_path / "k0s"),
                      streams_dest=str(tmp_path / "s"), write=False)
    assert all(f["changed"] for f in result["files"])
    assert os.listdir(tmp_path) == []


def test_legacy_pin_mtime(small, tmp_path):
    fixture = small["legacy"]
    result = kp.split(fixture["path"], dest=str(tmp_path / "d"), stripped_executable=str(tmp_path / "k0s"), pin_mtime=True)
    want = os.stat(fixture["path"]).st_mtime_ns
    assert result["pinned_mtime_ns"] == want
    for name in fixture["binaries"]:
        assert os.stat(tmp_path / "d" / name).st_mtime_ns == want
    assert os.stat(tmp_path / "k0s").st_mtime_ns == want


@pytest.mark.parametrize("fmt", FORMATS)
def test_stripped_runs_from_split_binaries(small, tmp_path, fmt):
    """The fixture's k0s-style staging, stripped, finds the split binaries through <data-dir>/bin links."""
    fixture = small[fmt]
    kp.split(fixture["path"], dest=str(tmp_path / "libexec"), stripped_executable=str(tmp_path / "k0s"), pin_mtime=True)
    bindir = tmp_path / "data" / "bin"
    bindir.mkdir(parents=True)
    for name in fixture["binaries"]:
        os.symlink(str(tmp_path / "libexec" / name), str(bindir / name))
    out = subprocess.run([str(tmp_path / "k0s"), "stage", "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    import json
    staged = json.loads(out.stdout)["binaries"]
    for name, info in staged.items():
        assert info["sha256"] == fixture["binaries"][name]["sha256"]
        assert os.path.realpath(info["path"]) == str(tmp_path / "libexec" / name)
    if fmt == "legacy":
        # Legacy k0s needs the mtime pinning: a different mtime makes it try to re-extract and fail.
        os.utime(str(tmp_path / "libexec" / "runc"), ns=(1, 1))
        out = subprocess.run([str(tmp_path / "k0s"), "stage", "--data-dir", str(tmp_path / "data")],
                             capture_output=True, text=True, check=False)
        assert out.returncode != 0


def test_go_build_info(small, tmp_path):
    result = kp.split(small["zip"]["path"], dest=str(tmp_path / "d"), stripped_executable=str(tmp_path / "k0s"))
    info = kp.go_build_info(str(tmp_path / "k0s"))
    assert info["go_version"].startswith("go1.")
    assert info["path"] == "fleetsplit.test/fakek0s"
    runc = kp.go_build_info(str(tmp_path / "d" / "runc"))
    assert runc["go_version"].startswith("go1.") and runc["path"] == "github.com/opencontainers/runc"
    assert kp.go_build_info(str(tmp_path / "d" / "xtables-nft-multi")) is None   # a C program
    assert result["files"]


# --------------------------------------------------------------------------- bad input

def test_missing_and_non_file_sources(tmp_path):
    with pytest.raises(kp.PayloadError, match="cannot read k0s executable .*No such file"):
        kp.inspect(str(tmp_path / "nope"))
    with pytest.raises(kp.PayloadError, match="not a regular file"):
        kp.inspect(str(tmp_path))


def test_unreadable_source(small, tmp_path):
    if os.geteuid() != 0:
        path = copy_of(small["zip"], tmp_path)
        os.chmod(path, 0o000)
        with pytest.raises(kp.PayloadError, match="Permission denied"):
            kp.inspect(path)
        return
    # root reads anything: run the library as an unprivileged user from a directory it can enter.
    import tempfile
    work = tempfile.mkdtemp(prefix="fleetsplit-unreadable-")
    try:
        os.chmod(work, 0o755)
        os.mkdir(os.path.join(work, "module_utils"))
        shutil.copy(kp.__file__, os.path.join(work, "module_utils", "k0s_payload.py"))
        # The facade writes its small files (manifest, cache marker) with the host library's atomic_write, and
        # reads k3s archives with the host library's k3s rules (k3s_tree, which uses k0s_settings).
        for name in ("k0s_hostfs.py", "k3s_tree.py", "k0s_settings.py"):
            shutil.copy(os.path.join(os.path.dirname(kp.__file__), name), os.path.join(work, "module_utils"))
        shutil.copytree(os.path.join(os.path.dirname(kp.__file__), "payload"), os.path.join(work, "module_utils", "payload"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        path = copy_of(small["zip"], tmp_path)
        shutil.move(path, os.path.join(work, "k0s"))
        os.chmod(os.path.join(work, "k0s"), 0o000)
        code = "from module_utils import k0s_payload as kp\ntry:\n kp.inspect('k0s')\nexcept kp.PayloadError as e:\n print(e)\n"
        # The system python3 has no isal/zlib-ng: it runs on zlib whatever engine this test run selected.
        env = dict((k, v) for k, v in os.environ.items() if k != "FLEETSPLIT_DEFLATE_ENGINE")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", code],
                             capture_output=True, text=True, cwd=work, env=env, check=False)
        assert "cannot read k0s executable k0s: Permission denied" in out.stdout, out.stdout + out.stderr
    finally:
        shutil.rmtree(work)


def test_not_elf(tmp_path):
    path = write(tmp_path / "k0s", b"#!/bin/sh\necho not k0s\n")
    with pytest.raises(kp.PayloadError, match="not an ELF executable"):
        kp.inspect(path)


def zip_layout(path):
    data = read(path)
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd + 12)
    start = eocd - cd_size - cd_offset
    return data, start, start + cd_offset, eocd


@pytest.mark.parametrize("where", ["entry", "central-directory", "end-record"])
def test_truncated_zip(small, tmp_path, populated_dest, where):
    data, start, cd, eocd = zip_layout(small["zip"]["path"])
    cut = {"entry": start + 5000, "central-directory": cd + 30, "end-record": eocd + 10}[where]
    path = write(tmp_path / "k0s", data[:cut])
    before = snapshot(populated_dest)
    with pytest.raises(kp.CorruptPayloadError, match="truncated or damaged"):
        kp.split(path, dest=populated_dest, stripped_executable=os.path.join(populated_dest, "k0s"))
    assert snapshot(populated_dest) == before


def test_truncated_legacy_member(small, tmp_path, populated_dest):
    fixture = small["legacy"]
    data = read(fixture["path"])
    path = write(tmp_path / "k0s", data[:fixture["payload_offset"] + 100000])
    before = snapshot(populated_dest)
    # BinDataSize no longer matches the shortened blob: caught before any inflation.
    with pytest.raises(kp.CorruptPayloadError, match="BinDataSize"):
        kp.split(path, dest=populated_dest)
    assert snapshot(populated_dest) == before


def patch_bin_data_size(bare_path, new_value, out_path):
    """Rewrite the int64 BinDataSize in .noptrdata (found through the symbol table) of a legacy bare build."""
    from elftools.elf.elffile import ELFFile
    data = bytearray(read(bare_path))
    with open(bare_path, "rb") as f:
        elf = ELFFile(f)
        symbol = [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name.endswith(".BinDataSize")][0]
        section = elf.get_section(symbol["st_shndx"])
        offset = section["sh_offset"] + symbol["st_value"] - section["sh_addr"]
    struct.pack_into("<q", data, offset, new_value)
    write(out_path, bytes(data))
    return offset


def test_truncated_legacy_member_with_consistent_size(small, tmp_path, populated_dest):
    """Even when BinDataSize is made to agree, a member cut short is reported as truncated."""
    fixture = small["legacy"]
    data = read(fixture["path"])
    blob = data[fixture["payload_offset"]:-1000]
    patch_bin_data_size(fixture["bare_path"], len(blob), tmp_path / "bare")
    path = write(tmp_path / "k0s", read(tmp_path / "bare") + blob)
    with pytest.raises(kp.CorruptPayloadError, match="truncated"):
        kp.split(path, dest=populated_dest)


def test_legacy_name_count_differs_from_members(small, tmp_path, populated_dest):
    fixture = small["legacy"]
    data = read(fixture["path"])
    blob = data[fixture["payload_offset"]:] + gzip.compress(b"an extra member", 9, mtime=0)
    patch_bin_data_size(fixture["bare_path"], len(blob), tmp_path / "bare")
    path = write(tmp_path / "k0s", read(tmp_path / "bare") + blob)
    with pytest.raises(kp.PayloadError, match="more gzip members than the 3"):
        kp.split(path, dest=populated_dest)
    # Fewer members than names.
    first = kp.inspect(fixture["path"]).entries[0]
    blob = data[first.member_offset:first.member_offset + first.member_size]
    patch_bin_data_size(fixture["bare_path"], len(blob), tmp_path / "bare")
    path = write(tmp_path / "k0s", read(tmp_path / "bare") + blob)
    with pytest.raises(kp.PayloadError, match="names 3 embedded binaries .* holds 1 gzip members"):
        kp.inspect(path)


def test_legacy_bin_data_size_mismatch(small, tmp_path):
    data = read(small["legacy"]["path"]) + gzip.compress(b"x", 9, mtime=0)
    path = write(tmp_path / "k0s", data)
    with pytest.raises(kp.CorruptPayloadError, match="BinDataSize"):
        kp.inspect(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_byte_in_compressed_data(small, tmp_path, populated_dest, fmt):
    fixture = small[fmt]
    entry = [e for e in kp.inspect(fixture["path"]).entries if e.name == "runc"][0]
    data = bytearray(read(fixture["path"]))
    data[entry.data_offset + entry.compressed_size // 2] ^= 0x40
    path = write(tmp_path / "k0s", bytes(data))
    before = snapshot(populated_dest)
    with pytest.raises(kp.CorruptPayloadError, match="runc"):
        kp.split(path, dest=populated_dest, stripped_executable=os.path.join(populated_dest, "k0s"))
    assert snapshot(populated_dest) == before


def test_crc_mismatch_in_directory(small, tmp_path, populated_dest):
    data, start, cd, eocd = zip_layout(small["zip"]["path"])
    data = bytearray(data)
    data[cd + 16] ^= 0x01    # CRC-32 field of the first central directory entry
    path = write(tmp_path / "k0s", bytes(data))
    with pytest.raises(kp.CorruptPayloadError, match="CRC-32 mismatch"):
        kp.split(path, dest=populated_dest)
    assert sorted(os.listdir(populated_dest)) == ["kubelet", "runc"]


@pytest.mark.parametrize("junk", [100, 70 * 1024])
def test_trailing_junk(small, tmp_path, junk):
    path = write(tmp_path / "k0s", read(small["zip"]["path"]) + b"\x00" * junk)
    with pytest.raises(kp.CorruptPayloadError, match="%d bytes of trailing data" % junk):
        kp.inspect(path)


def test_unknown_data_after_elf(small, tmp_path):
    path = write(tmp_path / "k0s", read(small["zip"]["bare_path"]) + b"garbage" * 10)
    with pytest.raises(kp.PayloadError, match="neither a zip local header nor a gzip member"):
        kp.inspect(path)


@pytest.mark.parametrize("name,message", [
    ("bin/runc", "binary 'runc' occurs twice \\(as 'runc' and 'bin/runc'\\)"),
    ("../runc", "'../runc' is a path"),
    ("/etc/runc", "'/etc/runc' is a path"),
    ("bin/sub/runc", "'bin/sub/runc' is a path"),
    ("images/sub/x.tar", "'images/sub/x.tar' is a path"),
    ("lib/x", "'lib/x' is a path"),
    ("bin/", "'bin/': embedded name is empty"),
    ("bin/..", "not a file name"),
    ("..", "not a file name"),
    ("ru\x01nc", "control character"),
])
def test_hostile_names(small, tmp_path, populated_dest, name, message):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"\x7fELF ok"), (name, b"evil")])
    with pytest.raises(kp.PayloadError, match=message):
        kp.split(path, dest=populated_dest)
    assert sorted(os.listdir(populated_dest)) == ["kubelet", "runc"]
    assert not os.path.exists(os.path.join(str(tmp_path), "runc"))


def test_nul_in_name(small, tmp_path):
    # zipfile cuts names at NUL, so write "ruXnc" and patch the byte in both headers.
    def patch(blob):
        return bytes(blob).replace(b"ruXnc", b"ru\x00nc")
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("ruXnc", b"evil")], patch=patch)
    with pytest.raises(kp.PayloadError, match="NUL"):
        kp.inspect(path)


def test_duplicate_names(small, tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # zipfile warns about the duplicate; that is the point
        path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"one"), ("runc", b"two")])
    with pytest.raises(kp.PayloadError, match="occurs twice"):
        kp.inspect(path)


def test_stored_entries_work(small, tmp_path):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("a", b"alpha" * 1000), ("b", b"")],
                        compression=zipfile.ZIP_STORED)
    result = kp.split(path, dest=str(tmp_path / "d"), streams_dest=str(tmp_path / "s"))
    assert read(tmp_path / "d" / "a") == b"alpha" * 1000 and read(tmp_path / "d" / "b") == b""
    assert gzip.decompress(read(tmp_path / "s" / "libexec" / "a.gz")) == b"alpha" * 1000
    assert [f["size"] for f in result["files"]] == [5000, 0]


def test_unsupported_method(small, tmp_path):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"x" * 100)], compression=zipfile.ZIP_BZIP2)
    with pytest.raises(kp.PayloadError, match=r"method 12 \(bzip2\)"):
        kp.inspect(path)


def test_encrypted_entry(small, tmp_path):
    def patch(blob):
        # set flag bit 0 in the local header and in the central directory entry
        blob[6] |= 1
        cd = bytes(blob).index(b"PK\x01\x02")
        blob[cd + 8] |= 1
        return blob
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"x" * 100)], patch=patch)
    with pytest.raises(kp.PayloadError, match="encrypted"):
        kp.inspect(path)


def test_zip64_records_are_read(small, tmp_path, monkeypatch):
    """Force zip64 extra fields and end records (Go writes them past 4 GiB) and split for real."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 0)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 0)
    runc = read(small["zip"]["binaries"]["runc"]["source"])
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", runc), ("tiny", b"t")])
    assert b"PK\x06\x06" in read(path)[-200:]
    payload = kp.inspect(path)
    assert payload.zip64 and payload.payload_offset == os.path.getsize(small["zip"]["bare_path"])
    kp.split(path, dest=str(tmp_path / "d"), stripped_executable=str(tmp_path / "k0s.stripped"))
    assert read(tmp_path / "d" / "runc") == runc
    assert read(tmp_path / "k0s.stripped") == read(small["zip"]["bare_path"])


def test_output_symlinks_refused(small, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(str(target), str(tmp_path / "dest"))
    with pytest.raises(kp.PayloadError, match="symlink"):
        kp.split(small["zip"]["path"], dest=str(tmp_path / "dest"))
    (tmp_path / "real").mkdir()
    os.symlink("/etc/passwd", str(tmp_path / "real" / "runc"))
    with pytest.raises(kp.PayloadError, match="runc is a symlink"):
        kp.split(small["zip"]["path"], dest=str(tmp_path / "real"))
    os.symlink("/etc/hostname", str(tmp_path / "k0s"))
    with pytest.raises(kp.PayloadError, match="symlink"):
        kp.split(small["zip"]["path"], stripped_executable=str(tmp_path / "k0s"))
    assert os.listdir(target) == []


def test_world_writable_directory_of_someone_else(small, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the directory to another user")
    os.chown(shared, 65534, 65534)
    with pytest.raises(kp.PayloadError, match="world-writable and owned by uid 65534"):
        kp.split(small["zip"]["path"], dest=str(shared / "out"))
    with pytest.raises(kp.PayloadError, match="world-writable"):
        kp.split(small["zip"]["path"], stripped_executable=str(shared / "k0s"))
    assert os.listdir(shared) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_keeps_previous_contents(small, tiny_tmpfs, tmp_path):
    """24 MiB tmpfs: a first small split fits; the full fixture (128 MB) cannot, and must not damage it."""
    dest = tiny_tmpfs / "libexec"
    kp.split(small["zip"]["path"], dest=str(dest), stripped_executable=str(tiny_tmpfs / "k0s"))
    before = snapshot(str(dest))
    k0s_before = read(tiny_tmpfs / "k0s")
    full = kp.inspect(str(small["zip"]["path"]).replace("k0s-small-zip", "k0s-zip"))
    with pytest.raises(kp.PayloadError, match="no space left on device"):
        kp.split(full.path, dest=str(dest), stripped_executable=str(tiny_tmpfs / "k0s"))
    assert snapshot(str(dest)) == before
    assert read(tiny_tmpfs / "k0s") == k0s_before
    assert [n for n in os.listdir(tiny_tmpfs) if n.startswith(".")] == []


# --------------------------------------------------------------------------- host-side stream helper

def test_inflate_gzip_member_verifies(small, tmp_path):
    result = kp.split(small["zip"]["path"], streams_dest=str(tmp_path / "s"))
    runc = [f for f in result["files"] if f["name"] == "runc"][0]
    kp.inflate_gzip_member(runc["stream"], str(tmp_path / "runc"), runc["size"], runc["crc32"], runc["sha256"],
                           mtime_ns=123456789012345678)
    assert sha256(tmp_path / "runc") == runc["sha256"]
    assert os.stat(tmp_path / "runc").st_mtime_ns == 123456789012345678
    with pytest.raises(kp.PayloadError, match="cannot create"):
        kp.inflate_gzip_member(runc["stream"], str(tmp_path / "runc"), runc["size"], runc["crc32"], runc["sha256"])
    with pytest.raises(kp.CorruptPayloadError, match="sha256 mismatch"):
        kp.inflate_gzip_member(runc["stream"], str(tmp_path / "x"), runc["size"], runc["crc32"], "0" * 64)
    assert not (tmp_path / "x").exists()
    data = bytearray(read(runc["stream"]))
    data[len(data) // 2] ^= 0xFF
    write(tmp_path / "bad.gz", bytes(data))
    with pytest.raises(kp.CorruptPayloadError):
        kp.inflate_gzip_member(str(tmp_path / "bad.gz"), str(tmp_path / "y"), runc["size"], runc["crc32"], runc["sha256"])
    assert not (tmp_path / "y").exists()
    write(tmp_path / "short.gz", read(runc["stream"])[:-100])
    with pytest.raises(kp.CorruptPayloadError, match="truncated"):
        kp.inflate_gzip_member(str(tmp_path / "short.gz"), str(tmp_path / "z"), runc["size"], runc["crc32"], runc["sha256"])


def test_streams_are_payload_bytes_not_recompressed(small, tmp_path):
    """A zip stream's deflate bytes are exactly the payload's; a legacy stream is the member itself."""
    for fmt in FORMATS:
        fixture = small[fmt]
        payload = kp.inspect(fixture["path"])
        kp.split(fixture["path"], streams_dest=str(tmp_path / fmt))
        data = read(fixture["path"])
        for entry in payload.entries:
            stream = read(tmp_path / fmt / "libexec" / (entry.name + ".gz"))
            raw = data[entry.data_offset:entry.data_offset + entry.compressed_size]
            assert stream[10:-8] == raw
            assert zlib.crc32(gzip.decompress(stream)) == entry.crc32


# --------------------------------------------------------------------------- stream bundles

def _members(tmp_path, blobs):
    streams = []
    for name, data in blobs.items():
        p = tmp_path / (name + ".gz")
        p.write_bytes(gzip.compress(data, 6))
        streams.append((name, str(p)))
    return streams


def test_bundle_members_inflate_from_offsets(tmp_path):
    blobs = {"b": os.urandom(300000), "a": b"x" * 5000000, "k0s": os.urandom(1000)}
    b = kp.write_bundle(_members(tmp_path, blobs), str(tmp_path / "bundles"))
    assert [m["name"] for m in b["members"]] == ["a", "b", "k0s"]
    assert os.path.getsize(b["path"]) == b["size"] == sum(m["size"] for m in b["members"])
    assert kp.check_bundle_members(b["members"], b["size"])["b"] == (b["members"][1]["offset"], b["members"][1]["size"])
    for m in b["members"]:
        data = blobs[m["name"]]
        out = tmp_path / ("out-" + m["name"])
        kp.inflate_gzip_member(b["path"], str(out), len(data), zlib.crc32(data), hashlib.sha256(data).hexdigest(),
                               offset=m["offset"], length=m["size"])
        assert read(out) == data
    # A length that cuts the member short, or runs into the next one, is refused and leaves no file.
    m = b["members"][0]
    data = blobs["a"]
    for length, msg in ((m["size"] - 1, "truncated"), (m["size"] + 10, "data follows")):
        with pytest.raises(kp.CorruptPayloadError, match=msg):
            kp.inflate_gzip_member(b["path"], str(tmp_path / "bad"), len(data), zlib.crc32(data),
                                   hashlib.sha256(data).hexdigest(), offset=m["offset"], length=length)
        assert not (tmp_path / "bad").exists()


def test_bundle_is_content_addressed_and_cached(tmp_path):
    streams = _members(tmp_path, {"a": b"1" * 1000, "b": b"2" * 1000})
    one = kp.write_bundle(streams, str(tmp_path / "bundles"))
    ino = os.stat(one["path"]).st_ino
    again = kp.write_bundle(list(reversed(streams)), str(tmp_path / "bundles"))
    assert not again["changed"] and again["id"] == one["id"] and again["sha256"] == one["sha256"]
    assert os.stat(one["path"]).st_ino == ino
    # A truncated cached bundle is rebuilt, not reused.
    with open(one["path"], "r+b") as f:
        f.truncate(10)
    fixed = kp.write_bundle(streams, str(tmp_path / "bundles"))
    assert fixed["changed"] and sha256(fixed["path"]) == one["sha256"]
    # Other content in a stream: another id.
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"3" * 1000))
    assert kp.write_bundle(streams, str(tmp_path / "bundles"))["id"] != one["id"]
    assert not [e for e in os.listdir(tmp_path / "bundles") if e.startswith(".")], "no temporaries left"


def test_bundle_member_table_must_tile(tmp_path):
    good = [{"name": "a", "offset": 0, "size": 10}, {"name": "b", "offset": 10, "size": 5}]
    assert kp.check_bundle_members(good, 15) == {"a": (0, 10), "b": (10, 5)}
    with pytest.raises(kp.PayloadError, match="truncated"):
        kp.check_bundle_members(good, 14)
    with pytest.raises(kp.PayloadError, match="does not tile"):
        kp.check_bundle_members([good[0], dict(good[1], offset=11)])
    with pytest.raises(kp.PayloadError, match="twice"):
        kp.check_bundle_members([good[0], dict(good[1], name="a")])
    with pytest.raises(kp.PayloadError, match="path separator"):
        kp.check_bundle_members([dict(good[0], name="../x")])


def test_legacy_without_symbol_table(small, tmp_path):
    """A legacy k0s whose symbols were stripped: BinDataSize is then found as an aligned int64 in .noptrdata."""
    if not shutil.which("objcopy"):
        pytest.skip("objcopy (binutils) not installed")
    fixture = small["legacy"]
    subprocess.run(["objcopy", "--strip-all", fixture["bare_path"], str(tmp_path / "bare")], check=True)
    blob = read(fixture["path"])[fixture["payload_offset"]:]
    path = write(tmp_path / "k0s", read(tmp_path / "bare") + blob)
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        assert ELFFile(f).get_section_by_name(".symtab") is None
    payload = kp.inspect(path)
    assert payload.format == "legacy" and payload.bin_data_size == len(blob)
    assert payload.names() == sorted(fixture["binaries"])
    # One byte more and no aligned int64 in .noptrdata records the length any longer.
    path = write(tmp_path / "k0s-more", read(tmp_path / "bare") + blob + b"\x00")
    with pytest.raises(kp.CorruptPayloadError, match="BinDataSize"):
        kp.inspect(path)
