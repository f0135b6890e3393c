# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Read, verify and split the binaries a k0s executable carries after its ELF image.

Pure Python, no Ansible import: the modules, the command line tool and the unit tests share it.
pyelftools is only needed where ELF structures are read (``inspect``, ``go_build_info``); without it
the import still succeeds (``HAS_PYELFTOOLS`` is false), so host-side modules can use the stream
helpers (``inflate_gzip_member``, ``sha256_file``) with nothing but the standard library.

Two payload formats exist (see docs/payload-formats.md):

* ``zip``: k0s >= v1.36.1 appends a zip archive; the end record is found from the end of the file
  only (zip signatures occur inside k0s's own ``.text``).
* ``legacy``: k0s <= v1.35 appends concatenated gzip members; names come from ``bin/<name>.gz``
  strings in ``.rodata``, the blob length from ``BinDataSize`` in ``.noptrdata``.
"""

from __future__ import absolute_import, division, print_function

import errno
import hashlib
import json
import mmap
import os
import re
import stat
import struct
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor

# Callers that read ELF check HAS_PYELFTOOLS and report PYELFTOOLS_IMPORT_ERROR (missing_required_lib).
try:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
except ImportError:
    ELFError = ELFFile = None
    PYELFTOOLS_IMPORT_ERROR = traceback.format_exc()
else:
    PYELFTOOLS_IMPORT_ERROR = None
HAS_PYELFTOOLS = PYELFTOOLS_IMPORT_ERROR is None

FORMAT_ZIP = "zip"
FORMAT_LEGACY = "legacy"
FORMAT_BARE = "bare"

METHOD_STORE = "store"
METHOD_DEFLATE = "deflate"

CHUNK = 1 << 17            # compressed bytes read per call: small enough that each piece stays in cache
MAX_OUTPUT = 1 << 19       # inflated bytes per zlib call: bounds memory, and crc32, sha256 and write read it from cache
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"   # what Go's gzip writer emits at best compression

_ZIP_METHODS = {0: METHOD_STORE, 8: METHOD_DEFLATE}
_ZIP_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd", 95: "xz", 98: "ppmd"}
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_CDH = b"PK\x01\x02"
_LFH = b"PK\x03\x04"
_EOCD_SIZE = 22
_ZIP64_TRAILER = 56 + 20   # zip64 end record + locator, when present
_LEGACY_NAME = re.compile(rb"bin/([A-Za-z0-9._+-]+?)\.gz")
_K0S_VERSION = re.compile(rb"v[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.]+)?\+k0s\.[0-9]+")
_GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"

# uname -m spelling, so results compare with Ansible's ansible_architecture.
_ELF_MACHINES = {
    "EM_X86_64": "x86_64",
    "EM_AARCH64": "aarch64",
    "EM_ARM": "armv7l",
    "EM_386": "i386",
    "EM_RISCV": "riscv64",
    "EM_S390": "s390x",
    "EM_PPC64": "ppc64le",
}


class PayloadError(Exception):
    """Any problem with a k0s executable or its outputs; the message names the problem."""


class CorruptPayloadError(PayloadError):
    """The payload is present but damaged (truncated, flipped bytes, bad checksums, junk)."""


class Entry(object):
    """One embedded binary and where its compressed bytes sit in the executable."""

    __slots__ = ("name", "size", "crc32", "method", "data_offset", "compressed_size",
                 "member_offset", "member_size", "sha256")

    def __init__(self, name, size, crc32, method, data_offset, compressed_size,
                 member_offset=None, member_size=None, sha256=None):
        self.name = name
        self.size = size                     # inflated size
        self.crc32 = crc32
        self.method = method                 # "deflate" or "store"
        self.data_offset = data_offset       # absolute offset of the raw compressed bytes
        self.compressed_size = compressed_size
        self.member_offset = member_offset   # legacy: whole gzip member (header..trailer)
        self.member_size = member_size
        self.sha256 = sha256                 # known once inflated (legacy scan or extraction)

    def as_dict(self):
        return dict((k, getattr(self, k)) for k in self.__slots__)


class Payload(object):
    """What ``inspect`` found in one executable."""

    def __init__(self, path, file_size, fmt, elf_end, entries, elf_machine, k0s_version,
                 mtime_ns, bin_data_size=None, zip64=False):
        self.path = path
        self.file_size = file_size
        self.format = fmt
        self.elf_end = elf_end
        self.payload_offset = elf_end
        self.payload_size = file_size - elf_end
        self.entries = entries
        self.elf_machine = elf_machine
        self.k0s_version = k0s_version
        self.mtime_ns = mtime_ns
        self.bin_data_size = bin_data_size
        self.zip64 = zip64

    @property
    def stripped_size(self):
        return self.payload_offset

    def names(self):
        return [e.name for e in self.entries]


# --------------------------------------------------------------------------- helpers

def sha256_file(path, start=0, length=None):
    """Hex sha256 of a file, or of ``length`` bytes from ``start``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            block = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                if remaining:
                    raise PayloadError("%s: expected %d more bytes at offset %d" % (path, remaining, f.tell()))
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()


def check_name(name):
    """Refuse names that could escape the target directory or mean something else on disk."""
    if not name:
        raise PayloadError("embedded name is empty")
    if "\x00" in name:
        raise PayloadError("embedded name %r contains a NUL byte" % name)
    if name in (".", ".."):
        raise PayloadError("embedded name %r is not a file name" % name)
    if "/" in name or "\\" in name:
        raise PayloadError("embedded name %r contains a path separator (absolute or nested paths are refused)" % name)
    if any(ord(c) < 0x20 for c in name):
        raise PayloadError("embedded name %r contains a control character" % name)
    return name


def _check_names(names):
    seen = set()
    for name in names:
        check_name(name)
        if name in seen:
            raise PayloadError("embedded name %r occurs twice (Go would use the first, Python the last): refusing" % name)
        seen.add(name)


def check_output_dir(path):
    """A directory we write into: not a symlink, and not world-writable unless we own it."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise PayloadError("cannot use output directory %s: %s" % (path, e.strerror))
    if stat.S_ISLNK(st.st_mode):
        raise PayloadError("output directory %s is a symlink: refusing to write through it" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise PayloadError("output path %s exists and is not a directory" % path)
    if st.st_mode & stat.S_IWOTH and st.st_uid != os.geteuid():
        raise PayloadError("output directory %s is world-writable and owned by uid %d, not by us: refusing to write there"
                           % (path, st.st_uid))


def ensure_output_dir(path, mode=0o755):
    """Create ``path`` (and parents) if missing, then apply ``check_output_dir``."""
    if not os.path.lexists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            ensure_output_dir(parent, mode)
        else:
            check_output_dir(parent)
        try:
            os.mkdir(path, mode)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise PayloadError("cannot create directory %s: %s" % (path, e.strerror))
    check_output_dir(path)


def check_output_file(path):
    """An output file may be replaced, but never through a symlink or over a non-file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise PayloadError("output %s is a symlink: refusing to write through it" % path)
    if not stat.S_ISREG(st.st_mode):
        raise PayloadError("output %s exists and is not a regular file" % path)
    return st


def _temp_path(final):
    directory, base = os.path.split(final)
    return os.path.join(directory, ".%s.fleetsplit-%d-%s.tmp" % (base, os.getpid(), os.urandom(4).hex()))


def _open_exclusive(path, mode):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        raise PayloadError("cannot create %s: %s" % (path, e.strerror))
    return os.fdopen(fd, "wb")


def _write_error(path, exc):
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return PayloadError("no space left on device while writing %s; nothing was replaced" % path)
    return PayloadError("cannot write %s: %s" % (path, getattr(exc, "strerror", None) or exc))


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class _Sink(object):
    """Counts, checksums and (optionally) writes the bytes of one output file."""

    def __init__(self, path=None, mode=0o755):
        self.path = path
        self.size = 0
        self.crc32 = 0
        self.hash = hashlib.sha256()
        self.file = _open_exclusive(path, mode) if path else None

    def write(self, data):
        self.size += len(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.hash.update(data)
        if self.file is not None:
            try:
                self.file.write(data)
            except (IOError, OSError) as e:
                raise _write_error(self.path, e)

    def close(self, fsync=True):
        if self.file is not None:
            try:
                self.file.flush()
                if fsync:
                    os.fsync(self.file.fileno())
                self.file.close()
            except (IOError, OSError) as e:
                self.file.close()
                raise _write_error(self.path, e)
            self.file = None

    def discard(self):
        if self.file is not None:
            try:
                self.file.close()
            except (IOError, OSError):
                pass
            self.file = None
        if self.path:
            _remove_quietly(self.path)


def _inflate_range(fd, offset, length, method, sink, what):
    """Stream ``length`` compressed bytes at ``offset`` of ``fd`` into ``sink``, bounded memory."""
    end = offset + length
    pos = offset
    inflater = zlib.decompressobj(-15) if method == METHOD_DEFLATE else None
    try:
        while pos < end:
            block = os.pread(fd, min(CHUNK, end - pos), pos)
            if not block:
                raise CorruptPayloadError("%s: file ends inside the compressed data at offset %d" % (what, pos))
            pos += len(block)
            if inflater is None:
                sink.write(block)
                continue
            _feed(inflater, block, sink)
        if inflater is not None:
            if not inflater.eof:
                raise CorruptPayloadError("%s: compressed data ends before the deflate stream does (truncated or damaged)" % what)
            if inflater.unused_data:
                raise CorruptPayloadError("%s: %d bytes follow the end of the deflate stream inside the entry"
                                          % (what, len(inflater.unused_data)))
    except zlib.error as e:
        raise CorruptPayloadError("%s: compressed data is corrupt (%s)" % (what, e))


def _feed(inflater, block, sink):
    """Inflate one input block into ``sink`` in pieces of at most MAX_OUTPUT bytes."""
    data = inflater.decompress(block, MAX_OUTPUT)
    while data:
        sink.write(data)
        if inflater.eof:
            break
        # Full output buffer: zlib may hold more, in unconsumed_tail or in its own state.
        data = inflater.decompress(inflater.unconsumed_tail, MAX_OUTPUT)


def _verify_sink(sink, entry, what):
    if sink.size != entry.size:
        raise CorruptPayloadError("%s: inflated to %d bytes, the payload records %d" % (what, sink.size, entry.size))
    if sink.crc32 != entry.crc32:
        raise CorruptPayloadError("%s: CRC-32 mismatch (payload records %08x, data gives %08x)" % (what, entry.crc32, sink.crc32))
    digest = sink.hash.hexdigest()
    if entry.sha256 is not None and digest != entry.sha256:
        raise CorruptPayloadError("%s: sha256 mismatch (expected %s, data gives %s)" % (what, entry.sha256, digest))
    return digest


# --------------------------------------------------------------------------- ELF

def _open_source(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise PayloadError("cannot read k0s executable %s: %s" % (path, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise PayloadError("k0s executable %s is not a regular file" % path)
    try:
        f = open(path, "rb")
    except (IOError, OSError) as e:
        raise PayloadError("cannot read k0s executable %s: %s" % (path, e.strerror))
    return f, st


def _elf(f, path):
    if not HAS_PYELFTOOLS:
        raise PayloadError("reading the ELF headers of %s needs pyelftools (pip install pyelftools): %s"
                           % (path, PYELFTOOLS_IMPORT_ERROR.strip().splitlines()[-1]))
    f.seek(0)
    magic = f.read(4)
    if magic != b"\x7fELF":
        raise PayloadError("%s is not an ELF executable (starts with %r)" % (path, magic))
    f.seek(0)
    try:
        return ELFFile(f)
    except (ELFError, struct.error) as e:
        raise PayloadError("%s: cannot parse ELF headers: %s" % (path, e))


def elf_end(elf):
    """Offset just past everything the ELF image describes.

    Segment ends alone are not enough (Go puts the section header table near the start), so take the
    maximum over sections with file contents, the section and program header tables and segments.
    """
    header = elf.header
    end = header["e_ehsize"]
    end = max(end, header["e_phoff"] + header["e_phnum"] * header["e_phentsize"])
    end = max(end, header["e_shoff"] + header["e_shnum"] * header["e_shentsize"])
    for segment in elf.iter_segments():
        end = max(end, segment["p_offset"] + segment["p_filesz"])
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS":
            end = max(end, section["sh_offset"] + section["sh_size"])
    return end


def _elf_machine(elf):
    machine = elf.header["e_machine"]
    name = _ELF_MACHINES.get(machine, str(machine).replace("EM_", "").lower())
    if name == "ppc64le" and not elf.little_endian:
        name = "ppc64"
    return name


def _section_bytes(elf, name):
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS":
        return None
    return section.data()


def _k0s_version(elf):
    """The k0s version compiled into the program (``v1.36.3+k0s.0``), or None.

    Go lays string literals out back to back, so a regex over .rodata can run into the next string's
    digits. A version held in a variable has a string header (pointer, length) in .data or .noptrdata:
    that header gives the exact length. Without one, fall back to the most frequent match.
    """
    rodata = elf.get_section_by_name(".rodata")
    if rodata is None or rodata["sh_type"] == "SHT_NOBITS":
        return None
    text = rodata.data()
    candidates = dict((rodata["sh_addr"] + m.start(), m.group()) for m in _K0S_VERSION.finditer(text))
    if not candidates:
        return None
    word = 8 if elf.elfclass == 64 else 4
    order = "<" if elf.little_endian else ">"
    pointer = order + ("Q" if word == 8 else "I")
    header = order + ("QQ" if word == 8 else "II")
    for name in (".data", ".noptrdata"):
        data = _section_bytes(elf, name) or b""
        for address, match in sorted(candidates.items()):
            needle = struct.pack(pointer, address)
            pos = data.find(needle)
            while pos != -1:
                if pos % word == 0 and pos + 2 * word <= len(data):
                    length = struct.unpack_from(header, data, pos)[1]
                    if 0 < length <= len(match) and _K0S_VERSION.fullmatch(match[:length]):
                        return match[:length].decode("ascii")
                pos = data.find(needle, pos + 1)
    counts = {}
    for match in candidates.values():
        counts[match] = counts.get(match, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0].decode("ascii")


def go_build_info(path):
    """Go version and main module of a Go executable (from ``.go.buildinfo``), or None."""
    with open(path, "rb") as f:
        try:
            elf = _elf(f, path)
        except PayloadError:
            return None
        data = _section_bytes(elf, ".go.buildinfo")
    if not data or not data.startswith(_GO_BUILDINFO_MAGIC) or len(data) < 32:
        return None
    flags = data[15]
    if not flags & 0x2:
        return {"go_version": None, "path": None, "main_module": None, "main_version": None,
                "note": "pre-Go-1.18 build info layout (pointer-based) is not decoded"}
    pos = 32
    strings = []
    for _field in range(2):
        length, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        strings.append(data[pos:pos + length].decode("utf-8", "replace"))
        pos += length
    go_version, modinfo = strings
    info = {"go_version": go_version or None, "path": None, "main_module": None, "main_version": None}
    # modinfo is framed by 16-byte sentinels; its lines are tab-separated "path", "mod", "dep", "build" records.
    body = modinfo[16:-16] if len(modinfo) >= 32 else modinfo
    for line in body.splitlines():
        fields = line.split("\t")
        if fields[0] == "path" and len(fields) > 1:
            info["path"] = fields[1]
        elif fields[0] == "mod" and len(fields) > 2:
            info["main_module"] = fields[1]
            info["main_version"] = fields[2]
    return info


# --------------------------------------------------------------------------- zip

def _find_eocd(mm, start, size):
    """Locate the end record searching backwards from EOF, never before ``start`` (the ELF end)."""
    window_start = max(start, size - (_EOCD_SIZE + 0xFFFF))
    pos = mm.rfind(_EOCD, window_start, size)
    while pos != -1:
        if pos + _EOCD_SIZE <= size:
            comment_len = struct.unpack_from("<H", mm, pos + 20)[0]
            if pos + _EOCD_SIZE + comment_len == size:
                return pos, 0
        pos = mm.rfind(_EOCD, window_start, pos)
    # None ends exactly at EOF: look through the whole payload for a record followed by junk.
    pos = mm.rfind(_EOCD, start, size)
    while pos != -1:
        if pos + _EOCD_SIZE <= size:
            comment_len = struct.unpack_from("<H", mm, pos + 20)[0]
            tail_end = pos + _EOCD_SIZE + comment_len
            if tail_end < size and _zip_start_from_eocd(mm, pos, size, quiet=True) == start:
                return pos, size - tail_end
        pos = mm.rfind(_EOCD, start, pos)
    return None, 0


def _zip_start_from_eocd(mm, eocd, size, quiet=False):
    (_sig, disk, cd_disk, count_disk, count, cd_size, cd_offset, _clen) = struct.unpack_from("<4sHHHHIIH", mm, eocd)
    zip64 = None
    loc = eocd - 20
    if loc >= 0 and mm[loc:loc + 4] == _EOCD64_LOCATOR:
        rec = eocd - _ZIP64_TRAILER
        if rec < 0 or mm[rec:rec + 4] != _EOCD64:
            if quiet:
                return None
            raise CorruptPayloadError("zip64 locator present but no zip64 end record 76 bytes before the end record")
        (_s, _rs, _vm, _vn, disk, cd_disk, count_disk, count, cd_size, cd_offset) = struct.unpack_from("<4sQHHIIQQQQ", mm, rec)
        zip64 = rec
    if disk != 0 or cd_disk != 0 or count_disk != count:
        if quiet:
            return None
        raise CorruptPayloadError("zip spans several disks: not a k0s payload")
    base = (zip64 if zip64 is not None else eocd) - cd_size - cd_offset
    if quiet:
        return base
    return base, count, cd_size, cd_offset, zip64


def _parse_zip(mm, path, elf_end_, size):
    eocd, junk = _find_eocd(mm, elf_end_, size)
    if eocd is None:
        raise CorruptPayloadError(
            "%s: a zip archive starts at the ELF end (offset %d) but no end-of-central-directory record was found: "
            "the payload is truncated or damaged" % (path, elf_end_))
    if junk:
        raise CorruptPayloadError("%s: %d bytes of trailing data follow the zip end-of-central-directory record" % (path, junk))
    base, count, cd_size, cd_offset, zip64 = _zip_start_from_eocd(mm, eocd, size)
    if base != elf_end_:
        raise CorruptPayloadError("%s: the zip directory puts the archive start at offset %d but the ELF image ends at %d"
                                  % (path, base, elf_end_))
    cd_start = base + cd_offset
    cd_end = cd_start + cd_size
    if cd_end != (zip64 if zip64 is not None else eocd):
        raise CorruptPayloadError("%s: central directory (%d bytes at %d) does not end at the end record" % (path, cd_size, cd_start))
    entries = []
    pos = cd_start
    for index in range(count):
        if pos + 46 > cd_end or mm[pos:pos + 4] != _CDH:
            raise CorruptPayloadError("%s: central directory entry %d of %d is missing or damaged at offset %d" % (path, index + 1, count, pos))
        (_sig, _vmade, _vneed, flags, method, _time, _date, crc, csize, usize, nlen, xlen, clen,
         _disk, _iattr, _eattr, lho) = struct.unpack_from("<4sHHHHHHIIIHHHHHII", mm, pos)
        raw_name = bytes(mm[pos + 46:pos + 46 + nlen])
        extra = bytes(mm[pos + 46 + nlen:pos + 46 + nlen + xlen])
        pos += 46 + nlen + xlen + clen
        if pos > cd_end:
            raise CorruptPayloadError("%s: central directory entry %d runs past the directory end" % (path, index + 1))
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("%s: embedded name %r is not valid UTF-8" % (path, raw_name))
        usize, csize, lho = _zip64_extra(extra, usize, csize, lho)
        if flags & 0x1:
            raise PayloadError("%s: entry %r is encrypted: k0s payloads never are" % (path, name))
        if method not in _ZIP_METHODS:
            raise PayloadError("%s: entry %r uses compression method %d (%s); only store (0) and deflate (8) are supported"
                               % (path, name, method, _ZIP_METHOD_NAMES.get(method, "unknown")))
        local = base + lho
        if local + 30 > cd_start or mm[local:local + 4] != _LFH:
            raise CorruptPayloadError("%s: local header of %r at offset %d is missing or damaged" % (path, name, local))
        lnlen, lxlen = struct.unpack_from("<HH", mm, local + 26)
        if bytes(mm[local + 30:local + 30 + lnlen]) != raw_name:
            raise CorruptPayloadError("%s: local header at offset %d names %r, the directory says %r"
                                      % (path, local, bytes(mm[local + 30:local + 30 + lnlen]), raw_name))
        data_offset = local + 30 + lnlen + lxlen
        if data_offset + csize > cd_start:
            raise CorruptPayloadError("%s: compressed data of %r runs into the central directory" % (path, name))
        if method == 0 and csize != usize:
            raise CorruptPayloadError("%s: stored entry %r has compressed size %d != size %d" % (path, name, csize, usize))
        entries.append(Entry(name, usize, crc, _ZIP_METHODS[method], data_offset, csize))
    if pos != cd_end:
        raise CorruptPayloadError("%s: central directory holds %d bytes more than its %d entries" % (path, cd_end - pos, count))
    _check_names([e.name for e in entries])
    return entries, zip64 is not None


def _zip64_extra(extra, usize, csize, lho):
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        pos += 4 + length
        if tag != 0x0001:
            continue
        values = list(struct.unpack_from("<%dQ" % (len(body) // 8), body))
        if usize == 0xFFFFFFFF and values:
            usize = values.pop(0)
        if csize == 0xFFFFFFFF and values:
            csize = values.pop(0)
        if lho == 0xFFFFFFFF and values:
            lho = values.pop(0)
    return usize, csize, lho


# --------------------------------------------------------------------------- legacy (gzip members)

def _legacy_names(elf):
    data = _section_bytes(elf, ".rodata") or b""
    names = sorted(set(m.decode("ascii") for m in _LEGACY_NAME.findall(data)))
    return names


def _bin_data_size(elf, blob_size):
    """BinDataSize as compiled in: from the symbol table when present, else an aligned int64 in .noptrdata."""
    fmt = "<q" if elf.little_endian else ">q"
    symtab = elf.get_section_by_name(".symtab")
    if symtab is not None:
        for symbol in symtab.iter_symbols():
            if symbol.name.endswith(".BinDataSize") and symbol["st_size"] == 8:
                section = elf.get_section(symbol["st_shndx"]) if isinstance(symbol["st_shndx"], int) else None
                if section is not None and section["sh_type"] != "SHT_NOBITS":
                    offset = symbol["st_value"] - section["sh_addr"]
                    return struct.unpack_from(fmt, section.data(), offset)[0]
    data = _section_bytes(elf, ".noptrdata") or b""
    wanted = struct.pack(fmt, blob_size)
    pos = data.find(wanted)
    while pos != -1:
        if pos % 8 == 0:
            return blob_size
        pos = data.find(wanted, pos + 1)
    return None


def _gzip_header_length(mm, pos, size, what):
    if pos + 10 > size or mm[pos:pos + 3] != b"\x1f\x8b\x08":
        raise CorruptPayloadError("%s: no gzip member header at offset %d" % (what, pos))
    flags = mm[pos + 3]
    cur = pos + 10
    if flags & 0x04:   # FEXTRA
        if cur + 2 > size:
            raise CorruptPayloadError("%s: gzip header truncated at offset %d" % (what, cur))
        cur += 2 + struct.unpack_from("<H", mm, cur)[0]
    for bit in (0x08, 0x10):   # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = mm.find(b"\x00", cur, size)
            if end == -1:
                raise CorruptPayloadError("%s: gzip header truncated at offset %d" % (what, cur))
            cur = end + 1
    if flags & 0x02:   # FHCRC
        cur += 2
    if cur > size:
        raise CorruptPayloadError("%s: gzip header truncated at offset %d" % (what, pos))
    return cur - pos


def _scan_legacy(fd, mm, path, start, size, names):
    """Walk the gzip members back to back; inflate each (no writes) to find its end and hash it."""
    entries = []
    pos = start
    index = 0
    while pos < size:
        name = names[index] if index < len(names) else None
        what = "%s: gzip member %d (%s)" % (path, index + 1, name or "no name left for it")
        if index >= len(names):
            raise PayloadError("%s: more gzip members than the %d bin/<name>.gz names in .rodata (next member at offset %d)"
                               % (path, len(names), pos))
        header = _gzip_header_length(mm, pos, size, what)
        data_offset = pos + header
        sink = _Sink()
        inflater = zlib.decompressobj(-15)
        cur = data_offset
        try:
            while not inflater.eof:
                if cur >= size:
                    raise CorruptPayloadError("%s: truncated (file ends at offset %d inside the member)" % (what, size))
                block = mm[cur:min(size, cur + CHUNK)]
                _feed(inflater, block, sink)
                cur += len(block) - len(inflater.unused_data)
        except zlib.error as e:
            raise CorruptPayloadError("%s: compressed data is corrupt (%s)" % (what, e))
        compressed_size = cur - data_offset
        if cur + 8 > size:
            raise CorruptPayloadError("%s: truncated (gzip trailer missing at offset %d)" % (what, cur))
        crc, isize = struct.unpack_from("<II", mm, cur)
        if crc != sink.crc32:
            raise CorruptPayloadError("%s: CRC-32 mismatch (trailer records %08x, data gives %08x)" % (what, crc, sink.crc32))
        if isize != sink.size & 0xFFFFFFFF:
            raise CorruptPayloadError("%s: size mismatch (trailer records %d, data gives %d)" % (what, isize, sink.size))
        end = cur + 8
        entries.append(Entry(name, sink.size, crc, METHOD_DEFLATE, data_offset, compressed_size,
                             member_offset=pos, member_size=end - pos, sha256=sink.hash.hexdigest()))
        pos = end
        index += 1
    if index != len(names):
        raise PayloadError("%s: .rodata names %d embedded binaries (bin/<name>.gz) but the payload holds %d gzip members"
                           % (path, len(names), index))
    return entries


# --------------------------------------------------------------------------- inspect

def inspect(path):
    """Detect the payload format of ``path`` and list its entries. Raises PayloadError on anything odd.

    Legacy payloads have no directory, so their members are inflated (not written) to find where
    each ends; their entries come back with ``sha256`` set. Zip entries get ``sha256`` on extraction.
    """
    f, st = _open_source(path)
    with f:
        elf = _elf(f, path)
        end = elf_end(elf)
        size = st.st_size
        machine = _elf_machine(elf)
        version = _k0s_version(elf)
        if end > size:
            raise CorruptPayloadError("%s: the ELF headers describe %d bytes but the file has only %d: truncated executable"
                                      % (path, end, size))
        if end == size:
            return Payload(path, size, FORMAT_BARE, end, [], machine, version, st.st_mtime_ns)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            head = bytes(mm[end:end + 4])
            if head == _LFH:
                entries, zip64 = _parse_zip(mm, path, end, size)
                return Payload(path, size, FORMAT_ZIP, end, entries, machine, version, st.st_mtime_ns, zip64=zip64)
            if head[:2] == b"\x1f\x8b":
                names = _legacy_names(elf)
                if not names:
                    raise PayloadError("%s: gzip data follows the ELF end but .rodata names no bin/<name>.gz entries" % path)
                _check_names(names)
                blob_size = size - end
                recorded = _bin_data_size(elf, blob_size)
                if recorded is None:
                    raise CorruptPayloadError("%s: %d payload bytes follow the ELF end, but BinDataSize in .noptrdata does not "
                                              "record that length (payload truncated or extended)" % (path, blob_size))
                if recorded != blob_size:
                    raise CorruptPayloadError("%s: BinDataSize records %d bytes but %d follow the ELF end"
                                              % (path, recorded, blob_size))
                entries = _scan_legacy(f.fileno(), mm, path, end, size, names)
                return Payload(path, size, FORMAT_LEGACY, end, entries, machine, version, st.st_mtime_ns,
                               bin_data_size=recorded)
        raise PayloadError("%s: %d bytes follow the ELF end at offset %d but they start with %r, neither a zip local "
                           "header nor a gzip member" % (path, size - end, end, head))


def require_payload(payload):
    if payload.format == FORMAT_BARE:
        raise PayloadError("%s has no embedded payload (the ELF image ends at end of file): nothing to split"
                           % payload.path)
    return payload


# --------------------------------------------------------------------------- outputs

def _file_sha256_if_regular(path):
    st = check_output_file(path)
    if st is None:
        return None
    return sha256_file(path)


def _commit(temp, final, new_sha256, write=True):
    """Rename ``temp`` over ``final`` unless ``final`` already holds the same bytes. Returns True if replaced."""
    old = _file_sha256_if_regular(final)
    if old == new_sha256:
        if temp:
            _remove_quietly(temp)
        return False
    if write:
        os.rename(temp, final)
    return True


def _inflate_entry(src_fd, entry, temp_path, mode, what, fsync):
    sink = _Sink(temp_path, mode)
    try:
        _inflate_range(src_fd, entry.data_offset, entry.compressed_size, entry.method, sink, what)
        digest = _verify_sink(sink, entry, what)
        sink.close(fsync=fsync)
    except BaseException:
        sink.discard()
        raise
    return digest


def extract(payload, dest=None, mode=0o755, workers=2, write=True, mtime_ns=None, fsync=False):
    """Inflate every entry; verify size, CRC-32 (and sha256 when known); optionally write into ``dest``.

    All entries are written to temp names in ``dest`` and verified before any is renamed into place,
    so a failure leaves ``dest`` as it was. Returns a list of dicts: name, size, sha256, crc32,
    compressed_size, path, changed. With ``write=False`` nothing is written (check mode, info).
    ``fsync`` makes each file durable before the renames (hosts want it; a controller cache that is
    re-verified by sha256 on every run does not need to pay for it).
    """
    require_payload(payload)
    if dest is not None and write:
        ensure_output_dir(dest)
        for entry in payload.entries:
            check_output_file(os.path.join(dest, entry.name))
    temps = {}
    if dest is not None and write:
        temps = dict((e.name, _temp_path(os.path.join(dest, e.name))) for e in payload.entries)
    fd = os.open(payload.path, os.O_RDONLY)
    try:
        def work(entry):
            return entry, _inflate_entry(fd, entry, temps.get(entry.name), mode,
                                         "%s: entry %s" % (payload.path, entry.name), fsync and write)

        # Largest first: with two workers the longest inflate starts at once.
        order = sorted(payload.entries, key=lambda e: -e.size)
        digests = {}
        try:
            if workers > 1 and len(order) > 1:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for entry, digest in pool.map(work, order):
                        digests[entry.name] = digest
            else:
                for entry in order:
                    digests[entry.name] = work(entry)[1]
        except BaseException:
            for temp in temps.values():
                _remove_quietly(temp)
            raise
    finally:
        os.close(fd)
    results = []
    for entry in payload.entries:
        entry.sha256 = digests[entry.name]
        final = os.path.join(dest, entry.name) if dest is not None else None
        changed = False
        if final is not None:
            if write:
                changed = _commit(temps[entry.name], final, entry.sha256)
                if mtime_ns is not None:
                    os.utime(final, ns=(mtime_ns, mtime_ns))
            else:
                changed = _file_sha256_if_regular(final) != entry.sha256
        results.append({"name": entry.name, "size": entry.size, "sha256": entry.sha256, "crc32": entry.crc32,
                        "compressed_size": entry.compressed_size, "path": final, "changed": changed})
    return results


def _copy_range(fd, offset, length, sink, transform=None):
    pos, end = offset, offset + length
    while pos < end:
        block = os.pread(fd, min(CHUNK, end - pos), pos)
        if not block:
            raise CorruptPayloadError("unexpected end of file at offset %d" % pos)
        pos += len(block)
        sink.write(transform(block) if transform else block)


def _produce(fd, final, mode, write, fsync, produce):
    """Run ``produce(fd, sink)`` into a temp file beside ``final``, then commit it by sha256.

    With ``write=False`` the bytes are only counted and hashed. Returns (sink, sha256, changed).
    """
    temp = _temp_path(final) if write else None
    sink = _Sink(temp, mode)
    try:
        produce(fd, sink)
        sink.close(fsync=fsync and write)
    except BaseException:
        sink.discard()
        raise
    digest = sink.hash.hexdigest()
    changed = _commit(temp, final, digest, write=write) if final else False
    return sink, digest, changed


def _prepare_output(final, *directories):
    for directory in directories:
        ensure_output_dir(directory)
    check_output_file(final)


def write_stripped(payload, out_path, mode=0o755, write=True, mtime_ns=None, fsync=False):
    """The executable without its payload: byte for byte the bare build. Returns dict(size, sha256, crc32, path, changed)."""
    write = write and out_path is not None
    if write:
        _prepare_output(out_path, os.path.dirname(os.path.abspath(out_path)))
    fd = os.open(payload.path, os.O_RDONLY)
    try:
        sink, digest, changed = _produce(fd, out_path, mode, write, fsync,
                                         lambda fd_, sink_: _copy_range(fd_, 0, payload.stripped_size, sink_))
    finally:
        os.close(fd)
    if write and mtime_ns is not None:
        os.utime(out_path, ns=(mtime_ns, mtime_ns))
    return {"path": out_path, "size": sink.size, "sha256": digest, "crc32": sink.crc32, "changed": changed}


def stripped_digest(payload):
    """sha256, size and crc32 of the stripped executable, computed without writing."""
    return write_stripped(payload, None, write=False)


class _GzipWriter(object):
    """Deterministic gzip member around a raw deflate stream (or compressing as it goes)."""

    def __init__(self, sink):
        self.sink = sink
        sink.write(GZIP_HEADER)

    def trailer(self, crc32, size):
        self.sink.write(struct.pack("<II", crc32 & 0xFFFFFFFF, size & 0xFFFFFFFF))


def _entry_stream(payload, entry):
    """produce() for one entry's gzip member: legacy members as they are, zip deflate data re-framed."""
    def produce(fd, sink):
        if payload.format == FORMAT_LEGACY:
            _copy_range(fd, entry.member_offset, entry.member_size, sink)
            return
        gz = _GzipWriter(sink)
        if entry.method == METHOD_DEFLATE:
            _copy_range(fd, entry.data_offset, entry.compressed_size, sink)
        else:   # stored entry: compress it once so hosts still receive a gzip member
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            _copy_range(fd, entry.data_offset, entry.compressed_size, sink, compressor.compress)
            sink.write(compressor.flush())
        gz.trailer(entry.crc32, entry.size)
    return produce


def write_streams(payload, streams_dest, write=True):
    """Write one gzip member per entry to ``streams_dest/libexec/<name>.gz`` (no recompression).

    Zip deflate data gets a gzip header and a CRC-32/ISIZE trailer around the very same bytes; legacy
    members are copied as they are. Hosts then inflate and verify with nothing but Python's zlib.
    Returns ``{name: {stream, stream_size, stream_sha256, changed}}``.
    """
    require_payload(payload)
    directory = os.path.join(streams_dest, "libexec")
    results = {}
    fd = os.open(payload.path, os.O_RDONLY)
    try:
        for entry in payload.entries:
            final = os.path.join(directory, entry.name + ".gz")
            if write:
                _prepare_output(final, streams_dest, directory)
            sink, digest, changed = _produce(fd, final, 0o644, write, False, _entry_stream(payload, entry))
            results[entry.name] = {"stream": final, "stream_size": sink.size, "stream_sha256": digest, "changed": changed}
    finally:
        os.close(fd)
    return results


def write_executable_stream(payload, streams_dest, write=True, level=6):
    """``streams_dest/bin/k0s.gz``: the stripped executable as one deterministic gzip member."""
    directory = os.path.join(streams_dest, "bin")
    final = os.path.join(directory, "k0s.gz")
    if write:
        _prepare_output(final, streams_dest, directory)

    def produce(fd, sink):
        gz = _GzipWriter(sink)
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        state = {"crc": 0}

        def compress(block):
            state["crc"] = zlib.crc32(block, state["crc"])
            return compressor.compress(block)

        _copy_range(fd, 0, payload.stripped_size, sink, compress)
        sink.write(compressor.flush())
        gz.trailer(state["crc"], payload.stripped_size)

    fd = os.open(payload.path, os.O_RDONLY)
    try:
        sink, digest, changed = _produce(fd, final, 0o644, write, False, produce)
    finally:
        os.close(fd)
    return {"stream": final, "stream_size": sink.size, "stream_sha256": digest, "changed": changed}


def inflate_gzip_member(src_path, dst_path, size, crc32, sha256, mode=0o755, mtime_ns=None, offset=0, length=None):
    """Inflate one gzip member into a new file ``dst_path``, verifying size, CRC-32 and sha256.

    Used on hosts (standard library only). ``dst_path`` must not exist; on any failure it is removed.
    With ``length`` the member is the ``length`` bytes at ``offset`` of ``src_path`` (a member of a
    stream bundle) and must end exactly there; without it, it runs from ``offset`` to the end of the file.
    """
    what = src_path if length is None and not offset else "%s (bytes %d+%s)" % (src_path, offset, length)
    try:
        src = open(src_path, "rb")
    except (IOError, OSError) as e:
        raise PayloadError("cannot read stream %s: %s" % (src_path, e.strerror))
    with src:
        src.seek(offset)
        head = src.read(10)
        src.seek(offset)
        if len(head) < 10 or head[:3] != b"\x1f\x8b\x08":
            raise CorruptPayloadError("%s is not a gzip member" % what)
        remaining = length
        sink = _Sink(dst_path, mode)
        try:
            inflater = zlib.decompressobj(31)   # gzip wrapper: zlib checks the trailer's CRC-32 and ISIZE too
            while not inflater.eof:
                block = src.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not block:
                    raise CorruptPayloadError("%s: truncated gzip member" % what)
                if remaining is not None:
                    remaining -= len(block)
                _feed(inflater, block, sink)
            if inflater.unused_data or (remaining != 0 if remaining is not None else src.read(1)):
                raise CorruptPayloadError("%s: data follows the gzip member" % what)
            expected = Entry(os.path.basename(dst_path), size, crc32, METHOD_DEFLATE, 0, 0, sha256=sha256)
            _verify_sink(sink, expected, what)
            sink.close()
            os.chmod(dst_path, mode)
            if mtime_ns is not None:
                os.utime(dst_path, ns=(mtime_ns, mtime_ns))
        except zlib.error as e:
            sink.discard()
            raise CorruptPayloadError("%s: compressed data is corrupt (%s)" % (what, e))
        except BaseException:
            sink.discard()
            raise


# --------------------------------------------------------------------------- stream bundles

BUNDLE_FORMAT = 1


def bundle_id(members):
    """Content address of a bundle: sha256 over the ordered (name, stream sha256, stream size) lines."""
    h = hashlib.sha256(b"fleetsplit-bundle %d\n" % BUNDLE_FORMAT)
    for m in members:
        h.update(("%s %s %d\n" % (m["name"], m["stream_sha256"], m["stream_size"])).encode())
    return h.hexdigest()


def write_bundle(streams, bundles_dir, write=True):
    """Concatenate gzip streams into ``<bundles_dir>/<id>.bundle`` (cached, temp + rename).

    ``streams`` is ``[(name, path)]``; the bundle holds them sorted by name. Returns
    ``{id, path, size, sha256, members: [{name, offset, size}], changed}``. The bundle's content is a
    function of its id, so an existing bundle of the right size is reused; a sidecar
    ``<id>.json`` records its sha256 and member table. Safe with concurrent writers (same content,
    each renames its own temporary file into place).
    """
    if not streams:
        raise PayloadError("a bundle needs at least one stream")
    seen = set()
    members = []
    for name, path in sorted(streams):
        check_name(name)
        if name in seen:
            raise PayloadError("stream %r is listed twice" % name)
        seen.add(name)
        st = check_output_file(path)
        if st is None:
            raise PayloadError("stream %s for %s does not exist (split again?)" % (path, name))
        members.append({"name": name, "path": path, "stream_size": st.st_size,
                        "stream_sha256": sha256_file(path)})
    bid = bundle_id(members)
    final = os.path.join(bundles_dir, bid + ".bundle")
    sidecar = os.path.join(bundles_dir, bid + ".json")
    table, offset = [], 0
    for m in members:
        table.append({"name": m["name"], "offset": offset, "size": m["stream_size"]})
        offset += m["stream_size"]
    result = {"id": bid, "path": final, "size": offset, "members": table, "changed": False}
    if write:
        ensure_output_dir(bundles_dir)
        st = check_output_file(final)
        try:
            with open(sidecar) as f:
                side = json.load(f)
        except (IOError, OSError, ValueError):
            side = None
        if st is not None and st.st_size == offset and isinstance(side, dict) \
                and side.get("members") == table and side.get("size") == offset:
            result["sha256"] = side["sha256"]
            return result
    sink = _Sink(_temp_path(final) if write else None, 0o644)
    try:
        for m in members:
            before = sink.size
            with open(m["path"], "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    sink.write(block)
            if sink.size - before != m["stream_size"]:
                raise PayloadError("stream %s changed while it was being bundled" % m["path"])
        sink.close(fsync=False)
    except BaseException:
        sink.discard()
        raise
    result["sha256"] = sink.hash.hexdigest()
    if write:
        os.rename(sink.path, final)
        body = json.dumps({"format": BUNDLE_FORMAT, "id": bid, "size": offset, "sha256": result["sha256"],
                           "members": table}, indent=2, sort_keys=True) + "\n"
        temp = _temp_path(sidecar)
        with _open_exclusive(temp, 0o644) as f:
            f.write(body.encode())
        os.rename(temp, sidecar)
    result["changed"] = True
    return result


def check_bundle_members(members, bundle_size=None):
    """A member table ``[{name, offset, size}]`` must tile the bundle exactly: contiguous, no gaps or overlaps.

    Returns ``{name: (offset, size)}``; raises PayloadError naming the first problem.
    """
    if not isinstance(members, list) or not members:
        raise PayloadError("bundle member table must be a non-empty list of {name, offset, size}")
    out, expect = {}, 0
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise PayloadError("bundle member %d is not a dict with name, offset and size" % i)
        name = m.get("name")
        try:
            offset, size = int(m.get("offset")), int(m.get("size"))
        except (TypeError, ValueError):
            raise PayloadError("bundle member %d (%s): offset and size must be integers" % (i, name))
        if not isinstance(name, str):
            raise PayloadError("bundle member %d has no name" % i)
        check_name(name)
        if name in out:
            raise PayloadError("bundle member %r is listed twice" % name)
        if offset != expect or size <= 0:
            raise PayloadError("bundle member table does not tile the bundle: %s at offset %d size %d, expected offset %d"
                               % (name, offset, size, expect))
        out[name] = (offset, size)
        expect = offset + size
    if bundle_size is not None and expect != bundle_size:
        raise PayloadError("bundle is %d bytes but its member table covers %d bytes%s"
                           % (bundle_size, expect, " (truncated or incomplete upload)" if bundle_size < expect else ""))
    return out


# --------------------------------------------------------------------------- one call for the modules

def describe(payload):
    """Facts common to payload_info and payload_split."""
    return {
        "format": payload.format,
        "payload_offset": payload.payload_offset,
        "payload_size": payload.payload_size,
        "file_size": payload.file_size,
        "k0s_version": payload.k0s_version,
        "elf_machine": payload.elf_machine,
        "pinned_mtime": payload.mtime_ns // 1000000000,
        "pinned_mtime_ns": payload.mtime_ns,
        "zip64": payload.zip64,
        "bin_data_size": payload.bin_data_size,
    }


def split(src, dest=None, stripped_executable=None, streams_dest=None, mode=0o755, workers=2, write=True,
          pin_mtime=False):
    """Everything payload_split does, minus Ansible: returns the module's result (without ``changed``).

    ``pin_mtime`` gives every written binary and the stripped executable the source's mtime: a
    stripped legacy k0s re-uses a staged file only when size and mtime (to the nanosecond) match.
    """
    payload = require_payload(inspect(src))
    result = describe(payload)
    mtime_ns = payload.mtime_ns if pin_mtime else None
    files = extract(payload, dest, mode=mode, workers=workers, write=write, mtime_ns=mtime_ns)
    stripped = write_stripped(payload, stripped_executable, mode=mode, write=write, mtime_ns=mtime_ns) \
        if stripped_executable else stripped_digest(payload)
    if not stripped_executable:
        stripped["path"] = None
    if streams_dest:
        streams = write_streams(payload, streams_dest, write=write)
        for item in files:
            item["changed"] = item["changed"] or streams[item["name"]]["changed"]
            item.update(streams[item["name"]])
            item.pop("stream_sha256", None)
        exe_stream = write_executable_stream(payload, streams_dest, write=write)
        stripped["changed"] = stripped["changed"] or exe_stream.pop("changed")
        exe_stream.pop("stream_sha256", None)
        stripped.update(exe_stream)
    result["files"] = files
    result["stripped_executable"] = stripped
    return result
