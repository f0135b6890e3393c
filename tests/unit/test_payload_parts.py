"""Each part of the payload package on its own, against the genuine-format fixtures and damaged copies of them.

The parts are imported directly (no Ansible, no facade): errors, model, fsio, streams, bundles (host side),
elf, zipfmt, legacy (controller side)."""
import ast
import contextlib
import glob
import gzip
import hashlib
import io
import mmap
import os
import struct
import subprocess
import sys
import threading
import zipfile
import zlib

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import (bundles, elf, elfheaders, errors, fsio, legacy, model,
                                                                             streams, zipfmt)

PACKAGE = os.path.dirname(os.path.abspath(fsio.__file__))
PLUGINS = os.path.dirname(os.path.dirname(PACKAGE))


def read(path):
    with open(str(path), "rb") as f:
        return f.read()


def write(path, data):
    with open(str(path), "wb") as f:
        f.write(data)
    return str(path)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def mapped(path):
    """(open file, its mmap, ELF end, size) of an executable."""
    with open(str(path), "rb") as f:
        end = elf.elf_end(elf.open_elf(f, str(path)))
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield f, mm, end, len(mm)


def zip_entries(path):
    with mapped(path) as (f, mm, end, size):
        binaries, images, zip64 = zipfmt.read_zip(f, mm, str(path), end, size)
        return binaries, zip64


def exe_with_zip(tmp_path, bare_path, entries, compression=zipfile.ZIP_DEFLATED, patch=None, name="k0s"):
    """A real bare Go program with a zip built by Python's zipfile appended (optionally patched)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for entry_name, data in entries:
            zf.writestr(zipfile.ZipInfo(entry_name, (1980, 1, 1, 0, 0, 0)), data, compress_type=compression)
    blob = bytearray(buf.getvalue())
    if patch:
        blob = patch(blob)
    return write(tmp_path / name, read(bare_path) + bytes(blob))


@pytest.fixture
def small(fixtures):
    return {"zip": fixtures["k0s-small-zip"], "legacy": fixtures["k0s-small-legacy"]}


# --------------------------------------------------------------------------- the package itself

def test_host_parts_import_neither_elf_code_nor_ansible():
    """payload/__init__.py is empty: the host-side parts come without pyelftools, the ELF code, zipfile or Ansible."""
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\n"
            "from module_utils.payload import bundles, errors, fsio, model, streams\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('elftools', 'ansible', 'zipfile', 'isal', 'zlib_ng')\n"
            "             or m in ('module_utils.payload.elf', 'module_utils.payload.zipfmt', 'module_utils.payload.legacy',\n"
            "                      'module_utils.payload.engines', 'module_utils.k0s_payload'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code, PLUGINS], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_package_files_are_small_and_ansible_free():
    files = sorted(glob.glob(os.path.join(PACKAGE, "*.py")))
    parts = {"__init__.py", "errors.py", "model.py", "fsio.py", "elf.py", "zipfmt.py", "legacy.py", "streams.py", "bundles.py"}
    assert {os.path.basename(p) for p in files} >= parts
    for path in files + [os.path.join(PLUGINS, "module_utils", "k0s_payload.py")]:
        text = read(path).decode()
        assert len(text.splitlines()) <= 700, path
        assert "import ansible" not in text and "from ansible" not in text, path
    init = ast.parse(read(os.path.join(PACKAGE, "__init__.py")))
    # Empty (ansible-test's empty-init rule for module_utils packages); above all, it imports none of the parts.
    assert all(isinstance(node, ast.Expr) for node in init.body), "payload/__init__.py must not import anything"


def test_corrupt_is_a_payload_error():
    assert issubclass(errors.CorruptPayloadError, errors.PayloadError)
    entry = model.Entry("runc", 3, 7, model.METHOD_DEFLATE, 100, 2)
    assert entry.as_dict()["data_offset"] == 100 and entry.as_dict()["sha256"] is None
    payload = model.Payload("k0s", 150, model.FORMAT_ZIP, 100, [entry], "x86_64", None, 0)
    assert payload.stripped_size == 100 and payload.payload_size == 50 and payload.names() == ["runc"]


# --------------------------------------------------------------------------- fsio

@pytest.mark.parametrize("name,message", [
    ("", "empty"), ("a\x00b", "NUL"), ("..", "not a file name"), ("bin/runc", "path separator"),
    ("..\\runc", "path separator"), ("ru\x1bnc", "control character"),
])
def test_check_name_refuses(name, message):
    with pytest.raises(errors.PayloadError, match=message):
        fsio.check_name(name)


def test_check_names_refuses_duplicates():
    fsio.check_names(["runc", "kubelet"])
    with pytest.raises(errors.PayloadError, match="occurs twice"):
        fsio.check_names(["runc", "kubelet", "runc"])


def test_sha256_file_whole_and_range(small):
    path = small["zip"]["path"]
    data = read(path)
    assert fsio.sha256_file(path) == sha256(data)
    assert fsio.sha256_file(path, 1000, 300000) == sha256(data[1000:301000])
    with pytest.raises(errors.PayloadError, match="expected 10 more bytes"):
        fsio.sha256_file(path, len(data) - 5, 15)


def test_sink_commit_and_discard(tmp_path):
    final = str(tmp_path / "out")
    temp = fsio.temp_path(final)
    assert os.path.dirname(temp) == str(tmp_path) and os.path.basename(temp).startswith(".out.")
    sink = fsio.Sink(temp, 0o640)
    sink.write(b"hello ")
    sink.write(b"world")
    sink.close()
    assert (sink.size, sink.crc32, sink.hash.hexdigest()) == (11, zlib.crc32(b"hello world"), sha256(b"hello world"))
    assert fsio.commit(temp, final, sha256(b"hello world")) is True and read(final) == b"hello world"
    ino = os.stat(final).st_ino
    again = fsio.temp_path(final)
    write(again, b"hello world")
    assert fsio.commit(again, final, sha256(b"hello world")) is False   # same bytes: kept, temp removed
    assert os.stat(final).st_ino == ino and not os.path.exists(again)
    dropped = fsio.Sink(fsio.temp_path(final))
    dropped.write(b"x")
    dropped.discard()
    assert os.listdir(str(tmp_path)) == ["out"]
    with pytest.raises(errors.PayloadError, match="cannot create"):
        fsio.open_exclusive(final, 0o644)


def test_sink_takes_the_engines_crc32(deflate_engine):
    """The controller's Sinks compute CRC-32 with the engine's function (isal/zlib-ng: carry-less multiply): same value."""
    data = os.urandom(3 << 20) + b"tail"
    sink = fsio.Sink(crc32=deflate_engine.crc32)
    for piece in (data[:1], data[1:1 << 20], data[1 << 20:]):
        sink.write(piece)
    assert (sink.size, sink.crc32) == (len(data), zlib.crc32(data))


def test_parallel_map_keeps_order_and_raises_the_first_failure():
    running, peak, lock = [0], [0], threading.Lock()

    def square(n):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return n * n
        finally:
            with lock:
                running[0] -= 1

    assert streams.parallel_map(square, range(40), 3) == [n * n for n in range(40)]
    assert 1 <= peak[0] <= 3
    assert streams.parallel_map(square, [5], 2) == [25] and streams.parallel_map(square, [], 2) == []
    started, gate = [], threading.Event()

    def fail_on_odd(n):
        started.append(n)
        if n == 1:
            gate.wait(5)          # item 3 fails first in time, item 1 first in order
            raise ValueError("item 1")
        if n == 3:
            gate.set()
            raise KeyError("item 3")
        return n

    with pytest.raises(ValueError, match="item 1"):
        streams.parallel_map(fail_on_odd, range(100), 2)
    assert len(started) < 100     # no item is started after a failure


def test_output_checks(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), str(tmp_path / "link"))
    with pytest.raises(errors.PayloadError, match="symlink"):
        fsio.check_output_dir(str(tmp_path / "link"))
    with pytest.raises(errors.PayloadError, match="symlink"):
        fsio.ensure_output_dir(str(tmp_path / "link" / "sub"))
    fsio.ensure_output_dir(str(tmp_path / "a" / "b" / "c"))
    assert os.path.isdir(str(tmp_path / "a" / "b" / "c"))
    os.symlink("/etc/hostname", str(tmp_path / "a" / "k0s"))
    with pytest.raises(errors.PayloadError, match="k0s is a symlink"):
        fsio.check_output_file(str(tmp_path / "a" / "k0s"))
    with pytest.raises(errors.PayloadError, match="not a regular file"):
        fsio.check_output_file(str(tmp_path / "a" / "b"))
    assert fsio.check_output_file(str(tmp_path / "nothing")) is None
    assert fsio.file_sha256_if_regular(str(tmp_path / "nothing")) is None


# --------------------------------------------------------------------------- elf

@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_elf_facts_of_genuine_executables(small, fmt):
    fixture = small[fmt]
    f, st = elf.open_executable(fixture["path"])
    with f:
        image = elf.open_elf(f, fixture["path"])
        assert elf.elf_end(image) == fixture["payload_offset"] == os.path.getsize(fixture["bare_path"])
        assert elf.elf_machine(image) == "x86_64"
        assert elf.k0s_version(image) == fixture["version"]
        assert elf.section_bytes(image, ".no-such-section") is None
        assert elf.section_bytes(image, ".bss") is None   # SHT_NOBITS: no file contents
    assert st.st_size == fixture["size"]
    assert elf.HAS_PYELFTOOLS and elf.PYELFTOOLS_IMPORT_ERROR is None


def test_elf_refusals(tmp_path, small):
    with pytest.raises(errors.PayloadError, match="cannot read k0s executable .*No such file"):
        elf.open_executable(str(tmp_path / "nope"))
    with pytest.raises(errors.PayloadError, match="not a regular file"):
        elf.open_executable(str(tmp_path))
    path = write(tmp_path / "script", b"#!/bin/sh\n")
    with open(path, "rb") as f, pytest.raises(errors.PayloadError, match="not an ELF executable"):
        elf.open_elf(f, path)
    path = write(tmp_path / "cut", read(small["zip"]["bare_path"])[:30])
    with open(path, "rb") as f, pytest.raises(errors.PayloadError, match="cannot parse ELF headers"):
        elf.open_elf(f, path)
    assert elf.go_build_info(str(tmp_path / "script")) is None


def _elf_files(fixtures):
    """Every ELF file among the fixtures: k0s executables (zip, legacy; amd64, arm, arm64), bare builds, their binaries."""
    root = os.path.dirname(fixtures["k0s-zip"]["path"])
    found = []
    for directory, dummy, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def test_elf_headers_read_as_pyelftools_reads_them(fixtures):
    """payload.elfheaders (struct) against pyelftools on every fixture ELF: header, every section and segment, the
    sections the library reads. Type names agree where elfheaders names them (it names the ones the library uses)."""
    from elftools.elf.elffile import ELFFile
    paths = _elf_files(fixtures)
    assert len(paths) >= 20 and any("arm64" in p for p in paths) and any(p.endswith("-arm") for p in paths)
    for path in paths:
        with open(path, "rb") as f:
            theirs, ours = ELFFile(f), elfheaders.ElfImage(f)
            for key, value in ours.header.items():
                assert value == theirs.header[key] or key in ("e_type", "e_version"), (path, key)
            assert (ours.elfclass, ours.little_endian, ours.num_sections()) == \
                (theirs.elfclass, theirs.little_endian, theirs.num_sections()), path
            for mine, pyelf in zip(ours.iter_sections(), theirs.iter_sections()):
                assert mine.name == pyelf.name, path
                for key in elfheaders._SECTION_FIELDS:
                    known = key != "sh_type" or mine[key] in elfheaders.SECTION_TYPES.values()
                    assert mine[key] == pyelf[key] or not known, (path, mine.name, key)
            assert len(list(ours.iter_segments())) == theirs.num_segments(), path
            for mine, pyelf in zip(ours.iter_segments(), theirs.iter_segments()):
                for key in elfheaders._SEGMENT_FIELDS[64]:
                    known = key != "p_type" or mine[key] in elfheaders.SEGMENT_TYPES.values()
                    assert mine[key] == pyelf[key] or not known, (path, key)
            for name in (".rodata", ".noptrdata", ".data", ".symtab", ".strtab", ".go.buildinfo", ".bss", ".nope"):
                mine, pyelf = ours.get_section_by_name(name), theirs.get_section_by_name(name)
                assert (mine is None) == (pyelf is None), (path, name)
                if mine is not None and mine["sh_type"] != "SHT_NOBITS":   # (pyelftools gives sh_size zeros for those)
                    assert mine.data() == pyelf.data(), (path, name)
            assert elf.elf_end(ours) == elf.elf_end(theirs) and elf.elf_machine(ours) == elf.elf_machine(theirs), path


def test_elf_headers_refuse_what_lies_outside_the_file(tmp_path, small):
    bare = read(small["zip"]["bare_path"])
    header = elfheaders.ElfImage(io.BytesIO(bare)).header
    cases = {
        "class": (bare[:4] + b"\x03" + bare[5:], "invalid EI_CLASS 3"),
        "sections": (bare[:header["e_shoff"] + 100], "section header table .* lies outside the file"),
        "entsize": (bare[:0x3a] + struct.pack("<H", 10) + bare[0x3c:], "section header table entry size 10 is smaller"),
        "segments": (bare[:0x20] + struct.pack("<Q", len(bare) - 8) + bare[0x28:], "program header table .* outside"),
    }
    for name, (data, message) in cases.items():
        path = write(tmp_path / name, data)
        with open(path, "rb") as f, pytest.raises(errors.PayloadError, match="cannot parse ELF headers: " + message):
            elf.open_elf(f, path)
    shifted = bytearray(bare)   # a section that claims bytes past the end: its data is refused, not cut short
    image = elfheaders.ElfImage(io.BytesIO(bytes(shifted)))
    rodata = image.get_section_by_name(".rodata")
    rodata._fields["sh_size"] = len(bare)
    with pytest.raises(elfheaders.ElfFormatError, match="section '.rodata' .* lies outside the file"):
        rodata.data()


def test_go_build_info_of_bare_build(small):
    info = elf.go_build_info(small["zip"]["bare_path"])
    assert info["go_version"].startswith("go1.") and info["path"] == "fleetsplit.test/fakek0s"
    assert elf.go_build_info(small["zip"]["binaries"]["xtables-nft-multi"]["source"]) is None   # a C program


# --------------------------------------------------------------------------- zipfmt

def test_zip_entries_point_at_the_raw_streams(small):
    fixture = small["zip"]
    entries, zip64 = zip_entries(fixture["path"])
    assert not zip64 and [e.name for e in entries] == sorted(fixture["binaries"])
    data = read(fixture["path"])
    for entry in entries:
        # Raw stream offset = local header + 30 + name length + extra length, read from the local header itself.
        local = data.rindex(b"PK\x03\x04" + data[entry.data_offset - 30 - len(entry.name) + 4:entry.data_offset - len(entry.name)],
                            0, entry.data_offset)
        nlen, xlen = struct.unpack_from("<HH", data, local + 26)
        assert entry.data_offset == local + 30 + nlen + xlen and data[local + 30:local + 30 + nlen] == entry.name.encode()
        inflated = zlib.decompress(data[entry.data_offset:entry.data_offset + entry.compressed_size], -15)
        assert sha256(inflated) == fixture["binaries"][entry.name]["sha256"] and zlib.crc32(inflated) == entry.crc32
        assert entry.method == model.METHOD_DEFLATE and entry.size == len(inflated)


def test_zip_with_a_local_extra_field(small, tmp_path):
    """The data offset comes from the local header's own extra length, not from the directory's."""
    def patch(blob):
        # Grow the local extra field by 8 bytes (the directory's stays empty) and shift every offset after it.
        nlen = struct.unpack_from("<H", blob, 26)[0]
        blob[28:30] = struct.pack("<H", 8)
        blob[30 + nlen:30 + nlen] = b"\xfe\xca\x04\x00abcd"
        cd = bytes(blob).index(b"PK\x01\x02")
        eocd = bytes(blob).index(b"PK\x05\x06")
        struct.pack_into("<I", blob, eocd + 16, cd)
        return blob
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"r" * 5000)], patch=patch)
    (entry,), dummy = zip_entries(path)
    base = os.path.getsize(small["zip"]["bare_path"])
    assert entry.data_offset == base + 30 + 4 + 8
    assert zlib.decompress(read(path)[entry.data_offset:entry.data_offset + entry.compressed_size], -15) == b"r" * 5000


@pytest.mark.parametrize("compression,method", [(zipfile.ZIP_BZIP2, r"method 12 \(bzip2\)"),
                                                (zipfile.ZIP_LZMA, r"method 14 \(lzma\)")])
def test_zip_with_a_foreign_method_is_refused(small, tmp_path, compression, method):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"x" * 100)], compression=compression)
    with pytest.raises(errors.PayloadError, match=method + ".*only store \\(0\\) and deflate \\(8\\)"):
        zip_entries(path)


def test_zip_stored_entries(small, tmp_path):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("a", b"alpha" * 10), ("b", b"")], compression=zipfile.ZIP_STORED)
    entries, dummy = zip_entries(path)
    assert [(e.name, e.method, e.size, e.compressed_size) for e in entries] == [("a", "store", 50, 50), ("b", "store", 0, 0)]


def test_zip_must_start_at_the_elf_end(small, tmp_path):
    # A zip whose recorded offsets put its start 16 bytes after the ELF end (16 foreign bytes in between).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("runc", b"x" * 100)
    path = write(tmp_path / "k0s", read(small["zip"]["bare_path"]) + b"PK\x03\x04" + b"\x00" * 12 + buf.getvalue())
    with pytest.raises(errors.CorruptPayloadError, match="puts the archive start at offset %d but the ELF image ends at %d"
                       % (os.path.getsize(small["zip"]["bare_path"]) + 16, os.path.getsize(small["zip"]["bare_path"]))):
        zip_entries(path)


@pytest.mark.parametrize("junk", [1, 100, 70 * 1024])
def test_zip_end_record_found_from_the_end_only(small, junk):
    data = read(small["zip"]["path"])
    start = small["zip"]["payload_offset"]
    eocd, trailing = zipfmt.find_end_record(data, start, len(data))
    assert eocd == data.rindex(b"PK\x05\x06") and trailing == 0
    assert zipfmt.find_end_record(data + b"\x00" * junk, start, len(data) + junk) == (eocd, junk)
    assert zipfmt.find_end_record(data[:eocd + 10], start, eocd + 10) == (None, 0)
    # Never before the ELF end: the bare image alone has no end record (whatever its .text holds).
    assert zipfmt.find_end_record(data[:start], start, start) == (None, 0)


def test_zip_overlapping_entries_are_refused(small, tmp_path):
    def patch(blob):
        cd = bytes(blob).index(b"PK\x01\x02")
        csize = struct.unpack_from("<I", blob, cd + 20)[0]
        struct.pack_into("<I", blob, cd + 20, csize + 10)   # first entry's data now runs into the second's header
        return blob
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("a", os.urandom(1000)), ("b", b"bb")], patch=patch)
    with pytest.raises(errors.CorruptPayloadError, match="entries 'a' .* and 'b' .* overlap"):
        zip_entries(path)


def test_zip_damaged_directory_and_local_header(small, tmp_path):
    def bad_directory(blob):
        blob[bytes(blob).index(b"PK\x01\x02") + 3] = 0x09
        return blob
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("a", b"1"), ("b", b"2")], patch=bad_directory, name="k0s-1")
    with pytest.raises(errors.CorruptPayloadError, match="central directory is damaged"):
        zip_entries(path)

    def renamed_local(blob):
        blob[30] = ord("z")   # the first local header names "z", the directory "a"
        return blob
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("a", b"1")], patch=renamed_local, name="k0s-2")
    with pytest.raises(errors.CorruptPayloadError, match="local header at offset .* names b'z', the directory says b'a'"):
        zip_entries(path)


def test_zip_names_checked(small, tmp_path):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("runc", b"1"), ("../x", b"2")])
    with pytest.raises(errors.PayloadError, match="is a path"):
        zip_entries(path)

    def non_utf8(blob):
        return bytes(blob).replace(b"ruXnc", b"ru\xffnc")
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("ruXnc", b"1")], patch=non_utf8, name="k0s-2")
    with pytest.raises(errors.PayloadError, match="not valid UTF-8"):
        zip_entries(path)


# --------------------------------------------------------------------------- legacy

def test_legacy_member_scan(small):
    fixture = small["legacy"]
    with mapped(fixture["path"]) as (f, mm, end, size):
        image = elf.open_elf(f, fixture["path"])
        assert legacy.legacy_names(image) == sorted(fixture["binaries"])
        assert legacy.bin_data_size(image, size - end) == size - end == fixture["payload_size"]
        entries, recorded = legacy.read_legacy(image, mm, fixture["path"], end, size)
    assert recorded == fixture["payload_size"]
    data = read(fixture["path"])
    pos = fixture["payload_offset"]
    for entry in entries:
        # Back to back, each a whole gzip member, its sha256 known from the scan.
        assert entry.member_offset == pos and entry.sha256 == fixture["binaries"][entry.name]["sha256"]
        member = data[entry.member_offset:entry.member_offset + entry.member_size]
        assert sha256(gzip.decompress(member)) == entry.sha256
        assert entry.data_offset - entry.member_offset == 10 and entry.member_size == entry.compressed_size + 18
        pos += entry.member_size
    assert pos == len(data)


def test_legacy_scan_damage(small, deflate_engine):
    fixture = small["legacy"]
    data = read(fixture["path"])
    start = fixture["payload_offset"]
    names = sorted(fixture["binaries"])
    entries = legacy.scan_legacy(data, "k0s", start, len(data), names, engine=deflate_engine)
    with pytest.raises(errors.PayloadError, match="more gzip members than the 2"):
        legacy.scan_legacy(data, "k0s", start, len(data), names[:2])
    with pytest.raises(errors.PayloadError, match="names 4 embedded binaries .* holds 3 gzip members"):
        legacy.scan_legacy(data, "k0s", start, len(data), names + ["zzz"])
    cut = entries[1].member_offset + 5000
    with pytest.raises(errors.CorruptPayloadError, match=r"gzip member 2 \(%s\): truncated" % names[1]):
        legacy.scan_legacy(data[:cut], "k0s", start, cut, names)
    flipped = bytearray(data)
    flipped[entries[0].data_offset + entries[0].compressed_size // 2] ^= 0x40
    with pytest.raises(errors.CorruptPayloadError, match="gzip member 1 .*(corrupt|CRC-32 mismatch|size mismatch)"):
        legacy.scan_legacy(bytes(flipped), "k0s", start, len(data), names, engine=deflate_engine)
    garbage = bytearray(data)   # not deflate at all: the engine's own error class becomes a CorruptPayloadError
    garbage[entries[0].data_offset:entries[0].data_offset + 64] = b"\xff" * 64
    with pytest.raises(errors.CorruptPayloadError, match=r"gzip member 1 .*compressed data is corrupt"):
        legacy.scan_legacy(bytes(garbage), "k0s", start, len(data), names, engine=deflate_engine)
    with pytest.raises(errors.CorruptPayloadError, match="no gzip member header at offset %d" % (start + 1)):
        legacy.scan_legacy(data, "k0s", start + 1, len(data), names)


def _inflating_threads(fn):
    """(threads that created an inflater, how many were created) while ``fn`` runs, every thread (profiler hook)."""
    threads, calls = set(), []
    targets = (zlib.decompressobj,) + tuple(m.decompressobj for m in _fast_modules())

    def hook(frame, event, arg):
        if event == "c_call" and arg in targets:
            threads.add(threading.get_ident())
            calls.append(1)
    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return threads, len(calls)


def _fast_modules():
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import engines
    return [e.module for e in (engines.get(n, strict=False) for n in engines.ORDER) if isinstance(e, engines.Engine)]


def test_legacy_members_scanned_in_parallel_from_guessed_starts(small, tmp_path, deflate_engine):
    """workers=2: the members are inflated by two threads at once, each exactly once, with the very entries and
    files of the one-by-one scan."""
    fixture = small["legacy"]
    data = read(fixture["path"])
    start, names = fixture["payload_offset"], sorted(fixture["binaries"])
    one_by_one = legacy.scan_legacy(data, "k0s", start, len(data), names, engine=deflate_engine, workers=1)

    def sink_for(name):
        return fsio.Sink(str(tmp_path / name), 0o755)
    result = []
    threads, calls = _inflating_threads(lambda: result.extend(
        legacy.scan_legacy(data, "k0s", start, len(data), names, sink_for, deflate_engine, workers=2)))
    assert len(threads) == 2 and calls == len(names)
    assert [e.as_dict() for e in result] == [e.as_dict() for e in one_by_one]
    for name in names:
        assert sha256(read(tmp_path / name)) == fixture["binaries"][name]["sha256"]


def test_legacy_wrong_guesses_fall_back_to_the_one_by_one_scan(tmp_path, deflate_engine):
    """A member whose bytes contain the first member's header (a stored member: its data is verbatim) makes a wrong
    guess; the guesses are dropped (their files too) and the one-by-one scan gives the right entries."""
    first = gzip.compress(b"first member " * 1000, 9, mtime=0)
    decoy = b"x" * 5000 + first[:10] + b"y" * 5000
    second = gzip.compress(decoy, 0, mtime=0)          # level 0: stored blocks, another XFL byte in its header
    blob = b"ELF" + first + second
    assert blob.count(first[:10]) == 2
    written = []

    def sink_for(name):
        written.append(str(tmp_path / ("%s-%d" % (name, len(written)))))
        return fsio.Sink(written[-1], 0o755)
    threads, dummy = _inflating_threads(lambda: written.append(
        legacy.scan_legacy(blob, "k0s", 3, len(blob), ["a", "b"], sink_for, deflate_engine, workers=2)))
    entries = written.pop()
    assert [(e.name, e.member_offset, e.member_size, e.sha256) for e in entries] == [
        ("a", 3, len(first), sha256(b"first member " * 1000)), ("b", 3 + len(first), len(second), sha256(decoy))]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(p) for p in written[2:]]   # the guesses' files are gone
    assert read(written[-1]) == decoy


def test_gzip_header_length_with_optional_fields():
    buf = io.BytesIO()
    with gzip.GzipFile(filename="runc", mode="wb", fileobj=buf, mtime=0) as g:
        g.write(b"data")
    member = buf.getvalue()
    assert legacy.gzip_header_length(member, 0, len(member), "m") == 10 + len("runc") + 1
    assert legacy.gzip_header_length(gzip.compress(b"data"), 0, len(member), "m") == 10
    with pytest.raises(errors.CorruptPayloadError, match="gzip header truncated"):
        legacy.gzip_header_length(member[:12], 0, 12, "m")


# --------------------------------------------------------------------------- streams

def test_inflate_range_and_verify(small, deflate_engine):
    fixture = small["zip"]
    entries, dummy = zip_entries(fixture["path"])
    entry = [e for e in entries if e.name == "runc"][0]
    fd = os.open(fixture["path"], os.O_RDONLY)
    try:
        sink = fsio.Sink()
        streams.inflate_range(fd, entry.data_offset, entry.compressed_size, entry.method, sink, "runc", deflate_engine)
        assert streams.verify_sink(sink, entry.size, entry.crc32, None, "runc") == fixture["binaries"]["runc"]["sha256"]
        with pytest.raises(errors.CorruptPayloadError, match="runc: CRC-32 mismatch"):
            streams.verify_sink(sink, entry.size, entry.crc32 ^ 1, None, "runc")
        with pytest.raises(errors.CorruptPayloadError, match="runc: inflated to %d bytes, the payload records 1" % entry.size):
            streams.verify_sink(sink, 1, entry.crc32, None, "runc")
        with pytest.raises(errors.CorruptPayloadError, match="ends before the deflate stream does"):
            streams.inflate_range(fd, entry.data_offset, entry.compressed_size - 100, entry.method, fsio.Sink(), "runc",
                                  deflate_engine)
        with pytest.raises(errors.CorruptPayloadError, match="runc: compressed data is corrupt"):
            streams.inflate_range(fd, 0, 4096, entry.method, fsio.Sink(), "runc", deflate_engine)   # ELF header: not deflate
        with pytest.raises(errors.CorruptPayloadError, match="file ends inside the compressed data"):
            streams.inflate_range(fd, fixture["size"] - 10, 100, model.METHOD_STORE, fsio.Sink(), "tail")
        with pytest.raises(errors.CorruptPayloadError, match="unexpected end of file"):
            streams.copy_range(fd, fixture["size"] - 10, 100, fsio.Sink())
    finally:
        os.close(fd)


def test_flipped_byte_is_detected_by_inflate_entry(small, tmp_path, deflate_engine):
    fixture = small["zip"]
    entries, dummy = zip_entries(fixture["path"])
    entry = [e for e in entries if e.name == "runc"][0]
    data = bytearray(read(fixture["path"]))
    data[entry.data_offset + entry.compressed_size // 2] ^= 0x40
    path = write(tmp_path / "k0s", bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(errors.CorruptPayloadError, match="runc: (compressed data is corrupt|CRC-32 mismatch)"):
            streams.inflate_entry(fd, entry, str(tmp_path / "runc.tmp"), 0o755, "runc", False, deflate_engine)
    finally:
        os.close(fd)
    assert not (tmp_path / "runc.tmp").exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_entry_and_executable_streams(small, fmt, tmp_path, deflate_engine):
    fixture = small[fmt]
    with mapped(fixture["path"]) as (f, mm, end, size):
        if fmt == "zip":
            entries = zipfmt.read_zip(f, mm, fixture["path"], end, size)[0]
        else:
            entries = legacy.read_legacy(elf.open_elf(f, fixture["path"]), mm, fixture["path"], end, size,
                                         engine=deflate_engine)[0]
    data = read(fixture["path"])
    fd = os.open(fixture["path"], os.O_RDONLY)
    try:
        for entry in entries:
            sink = fsio.Sink(str(tmp_path / (entry.name + ".gz")), 0o644)
            streams.entry_stream(fmt, entry, deflate_engine)(fd, sink)
            sink.close()
            stream = read(tmp_path / (entry.name + ".gz"))
            assert stream[10:-8] == data[entry.data_offset:entry.data_offset + entry.compressed_size]   # not recompressed
            assert sha256(gzip.decompress(stream)) == fixture["binaries"][entry.name]["sha256"]
        sink = fsio.Sink(str(tmp_path / "k0s.gz"), 0o644)
        streams.executable_stream(fixture["payload_offset"], engine=deflate_engine)(fd, sink)
        sink.close()
    finally:
        os.close(fd)
    assert gzip.decompress(read(tmp_path / "k0s.gz")) == read(fixture["bare_path"])


def test_stored_entry_stream_is_compressed_once(small, tmp_path, deflate_engine):
    path = exe_with_zip(tmp_path, small["zip"]["bare_path"], [("a", b"alpha" * 1000)], compression=zipfile.ZIP_STORED)
    (entry,), dummy = zip_entries(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        sink = fsio.Sink()
        streams.entry_stream(model.FORMAT_ZIP, entry, deflate_engine)(fd, sink)
    finally:
        os.close(fd)
    assert sink.size < 200


def test_inflate_gzip_member_detects_a_corrupt_stream(small, tmp_path):
    runc = small["zip"]["binaries"]["runc"]
    data = read(runc["source"])
    good = write(tmp_path / "runc.gz", gzip.compress(data, 6))
    streams.inflate_gzip_member(good, str(tmp_path / "runc"), len(data), zlib.crc32(data), runc["sha256"], mode=0o700)
    assert sha256(read(tmp_path / "runc")) == runc["sha256"] and os.stat(str(tmp_path / "runc")).st_mode & 0o777 == 0o700
    half = write(tmp_path / "half.gz", read(good)[:len(read(good)) // 2])   # what test_corrupt_stream_is_rejected uploads
    with pytest.raises(errors.CorruptPayloadError, match="half.gz: truncated gzip member"):
        streams.inflate_gzip_member(half, str(tmp_path / "x"), len(data), zlib.crc32(data), runc["sha256"])
    flipped = bytearray(read(good))
    flipped[len(flipped) // 3] ^= 0xFF
    bad = write(tmp_path / "bad.gz", bytes(flipped))
    with pytest.raises(errors.CorruptPayloadError, match="bad.gz"):
        streams.inflate_gzip_member(bad, str(tmp_path / "x"), len(data), zlib.crc32(data), runc["sha256"])
    with pytest.raises(errors.CorruptPayloadError, match="is not a gzip member"):
        streams.inflate_gzip_member(runc["source"], str(tmp_path / "x"), len(data), zlib.crc32(data), runc["sha256"])
    with pytest.raises(errors.CorruptPayloadError, match="data follows the gzip member"):
        streams.inflate_gzip_member(write(tmp_path / "more.gz", read(good) + b"\x00"), str(tmp_path / "x"),
                                    len(data), zlib.crc32(data), runc["sha256"])
    with pytest.raises(errors.PayloadError, match="cannot read stream"):
        streams.inflate_gzip_member(str(tmp_path / "none.gz"), str(tmp_path / "x"), 1, 0, None)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- bundles

def _streams(tmp_path, fixture):
    out = []
    for name in sorted(fixture["binaries"], reverse=True):
        out.append((name, write(tmp_path / (name + ".gz"), gzip.compress(read(fixture["binaries"][name]["source"]), 1))))
    return out


def test_bundle_of_real_streams(small, tmp_path):
    fixture = small["zip"]
    listed = _streams(tmp_path, fixture)
    b = bundles.write_bundle(listed, str(tmp_path / "bundles"))
    assert b["changed"] and [m["name"] for m in b["members"]] == sorted(fixture["binaries"])
    assert bundles.check_bundle_members(b["members"], os.path.getsize(b["path"]))
    members = [{"name": n, "stream_sha256": fsio.sha256_file(p), "stream_size": os.path.getsize(p)} for n, p in sorted(listed)]
    assert b["id"] == bundles.bundle_id(members) and b["sha256"] == fsio.sha256_file(b["path"])
    for m in b["members"]:
        info = fixture["binaries"][m["name"]]
        size = info["size"]
        crc = zlib.crc32(read(info["source"]))
        streams.inflate_gzip_member(b["path"], str(tmp_path / m["name"]), size, crc, info["sha256"],
                                    offset=m["offset"], length=m["size"])
    again = bundles.write_bundle(listed, str(tmp_path / "bundles"))
    assert not again["changed"] and again["sha256"] == b["sha256"]
    with pytest.raises(errors.PayloadError, match="listed twice"):
        bundles.write_bundle(listed + listed[:1], str(tmp_path / "bundles"))
    with pytest.raises(errors.PayloadError, match="does not exist"):
        bundles.write_bundle([("runc", str(tmp_path / "gone.gz"))], str(tmp_path / "bundles"))
    with pytest.raises(errors.PayloadError, match="at least one stream"):
        bundles.write_bundle([], str(tmp_path / "bundles"))


@pytest.mark.parametrize("members,size,message", [
    ([], None, "non-empty list"),
    ("a", None, "non-empty list"),
    (["a"], None, "member 0 is not a dict"),
    ([{"name": "a", "offset": "x", "size": 1}], None, "must be integers"),
    ([{"offset": 0, "size": 1}], None, "has no name"),
    ([{"name": "a/b", "offset": 0, "size": 1}], None, "path separator"),
    ([{"name": "a", "offset": 0, "size": 1}, {"name": "a", "offset": 1, "size": 1}], None, "listed twice"),
    ([{"name": "a", "offset": 0, "size": 2}, {"name": "b", "offset": 1, "size": 1}], None, "does not tile"),   # overlap
    ([{"name": "a", "offset": 0, "size": 1}, {"name": "b", "offset": 2, "size": 1}], None, "does not tile"),   # gap
    ([{"name": "a", "offset": 0, "size": 0}], None, "does not tile"),
    ([{"name": "a", "offset": 0, "size": 10}], 9, "truncated or incomplete upload"),
    ([{"name": "a", "offset": 0, "size": 10}], 11, "bundle is 11 bytes but its member table covers 10 bytes$"),
])
def test_bundle_member_checks(members, size, message):
    with pytest.raises(errors.PayloadError, match=message):
        bundles.check_bundle_members(members, size)
