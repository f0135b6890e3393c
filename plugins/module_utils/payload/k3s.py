# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The data archive a k3s executable embeds: find it in the Go image, verify it, stream its members.

Controller side (pyelftools through ``payload.elf``, the ``zstandard`` package). k3s's build
(``scripts/package-cli``) packs ``bin/`` and ``etc/`` into a tar, compresses it with zstd and embeds it with
``//go:embed embed/*`` (``pkg/data/data.go``) as ``embed/<sha256 of the .tar.zst>.tar.zst``. At start
(``cmd/k3s/main.go`` extract) it unpacks it to ``<data-dir>/data/<hash>/`` with ``pkg/untar`` rules and
checks it with ``pkg/dataverify``. Here the same archive is found through the embed.FS file table, its name
checked against its sha256, and its tar read as a stream (bounded memory) with the rules k3s applies, plus
the refusals a split needs (no member or link leaving ``data/<hash>``). See docs/k3s.md.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import posixpath
import re
import struct
import tarfile
import traceback

from ..k3s_tree import ShortLine, non_dir_parent, plain_path, tar_member_path, target_escapes, valid_rel_path, verify_list
from .errors import CorruptPayloadError, PayloadError
from .fsio import CHUNK, Sink
from .elf import go_build_settings

try:
    import zstandard
except ImportError:
    zstandard = None
    ZSTANDARD_IMPORT_ERROR = traceback.format_exc()
else:
    ZSTANDARD_IMPORT_ERROR = None

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_WINDOW = 1 << 25        # pkg/untar MaxDecoderMemory: a frame needing a larger window is refused, as by k3s
FEED = 1 << 10              # compressed bytes per zstd call: at most 256 blocks (32 MiB) of output, bounded memory
_NAME = re.compile(rb"embed/([0-9a-f]{64})\.tar\.zst")
_VERSION = re.compile(rb"v[0-9]+\.[0-9]+\.[0-9]+(?:-rc[0-9]+)?\+k3s[0-9]+")
_VERSION_FLAG = re.compile(r"/pkg/version\.Version=(v[0-9]+\.[0-9]+\.[0-9]+(?:-rc[0-9]+)?\+k3s[0-9]+)")
_GO_MINOR = re.compile(r"^go1\.([0-9]+)")
LAST_KNOWN_GO = 27           # embed hash schemes below checked up to this Go release
MAX_LIST = 1 << 20           # .sha256sums / .links are read into memory: a few KiB in k3s
SUMS, LINKS = "bin/.sha256sums", "bin/.links"
LISTS = (SUMS, LINKS)


class Archive(object):
    """Where the embedded archive is and what it holds (``members`` after ``walk``)."""

    def __init__(self, name, offset, length, embed_hash, version):
        self.name = name
        self.data_hash = name[len("embed/"):].split(".", 1)[0]
        self.offset = offset
        self.length = length
        self.embed_hash = embed_hash
        self.version = version
        self.sha256 = None
        self.members = []

    def as_dict(self):
        return {"name": self.name, "offset": self.offset, "length": self.length, "sha256": self.sha256}

    def files(self):
        """One fact dict per distinct file content (size, sha256, crc32), sorted by sha256."""
        seen = {}
        for member in self.members:
            if member["type"] == "file":
                seen.setdefault(member["sha256"], {"name": member["sha256"], "size": member["size"],
                                                   "sha256": member["sha256"], "crc32": member["crc32"]})
        return [seen[k] for k in sorted(seen)]


def _sections(elf):
    """(name, address, file offset, size) of every allocated section with file contents."""
    found = []
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS" and section["sh_flags"] & 0x2 and section["sh_size"]:
            found.append((section.name, section["sh_addr"], section["sh_offset"], section["sh_size"]))
    return found


def _file_offset(elf, address, length):
    """File offset of ``length`` bytes at virtual ``address`` (a PT_LOAD segment's file part), or None."""
    for segment in elf.iter_segments():
        start = segment["p_vaddr"]
        if segment["p_type"] == "PT_LOAD" and start <= address and address + length <= start + segment["p_filesz"]:
            return segment["p_offset"] + address - start
    return None


def locate(elf, mm, path):
    """The embedded k3s archive of the ELF image in ``mm``, or None when there is no ``embed/<sha256>.tar.zst``.

    Go's compiler writes an embed.FS as a table of {name string, data string, hash [16]byte}
    (cmd/compile/internal/staticdata/embed.go): a string is a pointer and a length, in the ELF's word size
    and byte order. The name's address with its length locates the table entry, whose data pointer is
    mapped to a file offset through the PT_LOAD segments.
    """
    sections = _sections(elf)
    names = []
    for dummy, address, offset, size in sections:
        for match in _NAME.finditer(mm, offset, offset + size):
            names.append((address + match.start() - offset, match.group().decode("ascii")))
    if not names:
        return None
    word = 8 if elf.elfclass == 64 else 4
    order = "<" if elf.little_endian else ">"
    header = struct.Struct(order + ("QQQQ" if word == 8 else "IIII"))
    entries = set()
    for address, name in names:
        needle = header.pack(address, len(name), 0, 0)[:2 * word]
        for dummy, dummy2, offset, size in sections:
            pos = mm.find(needle, offset, offset + size)
            while pos != -1:
                if (pos - offset) % word == 0 and pos + 2 * word + 16 <= offset + size:
                    data_ptr, data_len = header.unpack_from(mm, pos)[2:]
                    embed_hash = bytes(mm[pos + 4 * word:pos + 4 * word + 16])
                    entries.add((name, data_ptr, data_len, embed_hash))
                pos = mm.find(needle, pos + 1, offset + size)
    if not entries:
        raise PayloadError("%s holds the name %s but no Go embed.FS entry points at it: not a k3s executable this "
                           "tool can read" % (path, names[0][1]))
    if len(entries) > 1:
        raise PayloadError("%s embeds %d data archives (%s); k3s embeds exactly one: refusing"
                           % (path, len(entries), ", ".join(sorted(set(e[0] for e in entries)))))
    name, data_ptr, data_len, embed_hash = entries.pop()
    offset = _file_offset(elf, data_ptr, data_len)
    if not data_len or offset is None:
        raise CorruptPayloadError("%s: the embed.FS entry of %s points at %d bytes at address 0x%x, outside the file's "
                                  "loaded segments: damaged executable" % (path, name, data_len, data_ptr))
    return Archive(name, offset, data_len, embed_hash, version(elf, mm, sections))


def version(elf, mm, sections):
    """The k3s version: ``-X .../pkg/version.Version=`` in the recorded ``-ldflags``, else the most frequent
    ``v1.N.N(-rcN)+k3sN`` in the read-only data, else None."""
    dummy, settings = go_build_settings(elf)
    match = _VERSION_FLAG.search(settings.get("-ldflags", ""))
    if match:
        return match.group(1)
    counts = {}
    for name, dummy, offset, size in sections:
        if name == ".rodata":
            for found in _VERSION.finditer(mm, offset, offset + size):
                counts[found.group()] = counts.get(found.group(), 0) + 1
    if not counts:
        return None
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0].decode("ascii")


def verify(elf, mm, archive, path):
    """The archive's bytes are what its name and the compiler's hash say, and start a zstd frame.

    package-cli names the archive by its sha256. The embed table's 16-byte hash is the compiler's content
    hash, whose definition changed with Go releases: sha256 (Go 1.16-1.19), its bitwise NOT (1.20-1.23,
    cmd/internal/notsha256), then cmd/internal/hash (sha256 of 0x01 + data; for files up to 1 KiB sha256 with
    its first byte XORed with 1, later 0xff). Any of them matching is accepted; a Go newer than those checked
    skips that comparison (the name check above already ties the bytes to the archive's identity).
    """
    data = memoryview(mm)[archive.offset:archive.offset + archive.length]
    try:
        if bytes(data[:4]) != ZSTD_MAGIC:
            raise CorruptPayloadError("%s: embedded %s (offset %d) does not start with the zstd magic (starts with %r)"
                                      % (path, archive.name, archive.offset, bytes(data[:4])))
        plain, prefixed = hashlib.sha256(), hashlib.sha256(b"\x01")
        for pos in range(0, archive.length, 1 << 20):
            plain.update(data[pos:pos + (1 << 20)])
            prefixed.update(data[pos:pos + (1 << 20)])
    finally:
        data.release()
    digest = plain.digest()
    archive.sha256 = plain.hexdigest()
    if archive.sha256 != archive.data_hash:
        raise CorruptPayloadError("%s: embedded %s (offset %d, %d bytes) has sha256 %s: its name is not its hash, k3s's "
                                  "build names it by its sha256 (refused: damaged or rebuilt archive)"
                                  % (path, archive.name, archive.offset, archive.length, archive.sha256))
    flipped = [bytes([digest[0] ^ mask]) + digest[1:16] for mask in (0x01, 0xFF)]   # Sum32 of files up to 1 KiB
    schemes = [digest[:16], bytes(b ^ 0xFF for b in digest[:16]), prefixed.digest()[:16]] + flipped
    go_version = go_build_settings(elf)[0] or ""
    minor = _GO_MINOR.match(go_version)
    if archive.embed_hash not in schemes and minor and int(minor.group(1)) <= LAST_KNOWN_GO:
        raise CorruptPayloadError("%s: the Go embed table's content hash of %s (%s) does not match its bytes (built "
                                  "with %s): the archive was changed after linking"
                                  % (path, archive.name, archive.embed_hash.hex(), go_version))


class ZstdStream(object):
    """A read-only file object over the zstd frames at ``offset`` of ``fd``: exactly ``length`` bytes of
    frames, refusing a truncated or damaged frame (zstandard's stream reader would end quietly)."""

    def __init__(self, fd, offset, length, what):
        if zstandard is None:
            raise PayloadError("reading a k3s data archive needs the python zstandard package (pip install "
                               "zstandard): %s" % ZSTANDARD_IMPORT_ERROR.strip().splitlines()[-1])
        self.fd, self.pos, self.end, self.what = fd, offset, offset + length, what
        self.offset = offset
        self.decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self.obj = self.decoder.decompressobj()
        self.pending, self.taken = b"", 0      # decompressed bytes not yet read (indices: no copies)
        self.input, self.used = b"", 0         # compressed bytes read from the file, not yet fed

    def _fill(self):
        """Decompress at least one more piece into ``pending``; False at the end of the last frame."""
        while self.taken >= len(self.pending):
            if self.used >= len(self.input):
                if self.pos >= self.end:
                    if not self.obj.eof:
                        raise CorruptPayloadError("%s: the zstd frame is truncated (the archive's %d bytes end inside "
                                                  "it)" % (self.what, self.end - self.offset))
                    return False
                self.input, self.used = os.pread(self.fd, min(CHUNK, self.end - self.pos), self.pos), 0
                if not self.input:
                    raise CorruptPayloadError("%s: file ends at offset %d inside the archive" % (self.what, self.pos))
                self.pos += len(self.input)
            if self.obj.eof:     # the next frame (k3s's decoder reads concatenated frames too)
                self.obj = self.decoder.decompressobj()
            at = self.pos - len(self.input) + self.used
            block = self.input[self.used:self.used + FEED]
            self.used += len(block)
            try:
                self.pending, self.taken = self.obj.decompress(block), 0
            except zstandard.ZstdError as e:
                raise CorruptPayloadError("%s: zstd data is corrupt near archive offset %d (%s)"
                                          % (self.what, at - self.offset, e))
            if self.obj.eof and self.obj.unused_data:
                self.input, self.used = self.obj.unused_data + self.input[self.used:], 0
        return True

    def read(self, size=-1):
        out = []
        while size != 0:
            if self.taken >= len(self.pending) and not self._fill():
                break
            stop = len(self.pending) if size < 0 else min(len(self.pending), self.taken + size)
            out.append(self.pending[self.taken:stop])
            if size > 0:
                size -= stop - self.taken
            self.taken = stop
        return b"".join(out)

    def drain(self):
        """Read to the end of the frames (tar's zero padding): the archive must end exactly where its frames do."""
        while self._fill():
            self.taken = len(self.pending)


# --------------------------------------------------------------------------- members

def _member_path(name, what):
    """The path of a tar member below ``data/<hash>/`` (``./`` stripped), refused as k3s's validRelPath does,
    plus any ``..`` component or a path that is not in normal form (two members could name one file)."""
    if not valid_rel_path(name):
        raise PayloadError("%s: member %r escapes the data directory (k3s refuses empty names, backslashes, absolute "
                           "paths and ../)" % (what, name))
    path = tar_member_path(name)
    if path and not plain_path(path):
        raise PayloadError("%s: member %r is not a plain relative path (.., ., empty components or control characters): "
                           "refused" % (what, name))
    return path


def _check_target(path, target, what):
    """A symlink target stays inside ``data/<hash>`` (relative, and not climbing above it)."""
    if target_escapes(path, target):
        raise PayloadError("%s: symlink %s -> %r points outside data/<hash>/ (absolute or climbing out): refused"
                           % (what, path, target))


def walk(path, archive, visitor=None, what=None):
    """Stream the archive's tar once: every member checked and hashed; ``visitor`` (``payload.k3s_tree.Writer``) may
    write them. Fills ``archive.members`` (sorted by path); then ``check_lists``. Raises PayloadError."""
    what = what or "%s: embedded %s" % (path, archive.name)
    fd = os.open(path, os.O_RDONLY)
    members, lists, parents = {}, {}, set()
    try:
        stream = ZstdStream(fd, archive.offset, archive.length, what)
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK)
            for info in tar:
                _member(tar, info, members, lists, parents, visitor, what)
            stream.drain()
        except tarfile.TarError as e:
            raise CorruptPayloadError("%s: not a valid tar stream (%s)" % (what, e))
        except EOFError as e:
            raise CorruptPayloadError("%s: the tar stream ends early (%s)" % (what, e))
        archive.members = [members[k] for k in sorted(members)]
        check_lists(archive, lists, what)
    except BaseException:
        if visitor is not None:
            visitor.abort()
        raise
    finally:
        os.close(fd)
    return archive


def _member(tar, info, members, lists, parents, visitor, what):
    path = _member_path(info.name, what)
    if not path:
        return
    if path in members:
        raise PayloadError("%s: member %s occurs twice in the archive: refused" % (what, path))
    # Nothing below a symlink or a file: writing through a link could leave the tree (chained links defeat any
    # check of the target's spelling), and a link over a directory already filled would fail half-way.
    bad = non_dir_parent(path, members)
    if bad:
        raise PayloadError("%s: member %s lies below %s, which is a %s, not a directory: refused" % ((what, path) + bad))
    parents.update(path[:i] for i, c in enumerate(path) if c == "/")
    if path in parents and not info.isdir():
        raise PayloadError("%s: member %s is not a directory but other members lie below it: refused" % (what, path))
    item = {"path": path, "type": None, "mode": None, "size": None, "sha256": None, "target": None}
    if info.isreg():
        item.update(type="file", mode=info.mode & 0o777)
        kept = [] if path in LISTS else None
        if kept is not None and info.size > MAX_LIST:
            raise PayloadError("%s: %s has %d bytes, more than %d: refused" % (what, path, info.size, MAX_LIST))
        sink = Sink()
        writers = visitor.open_file(item) if visitor is not None else []
        source = tar.extractfile(info)
        while True:
            block = source.read(CHUNK)
            if not block:
                break
            sink.write(block)
            for writer in writers:
                writer.write(block)
            if kept is not None:
                kept.append(block)
        if sink.size != info.size:
            raise CorruptPayloadError("%s: member %s holds %d bytes, its header says %d" % (what, path, sink.size, info.size))
        item.update(size=sink.size, sha256=sink.hash.hexdigest(), crc32=sink.crc32)
        if kept is not None:
            lists[path] = b"".join(kept)
    elif info.isdir():
        item.update(type="dir", mode=0o755)          # pkg/untar: MkdirAll(abs, 0755), the header's mode unused
    elif info.issym():
        _check_target(path, info.linkname, what)
        item.update(type="symlink", mode=0o777, target=info.linkname)
    else:
        raise PayloadError("%s: member %s is a %s; k3s's archive holds only files, directories and symlinks (a hard "
                           "link would become a symlink at extraction): refused"
                           % (what, path, "hard link" if info.islnk() else "special file"))
    members[path] = item
    if visitor is not None:
        visitor.close(item)


def _entries(lists, path, members, what):
    """pkg/dataverify on the list ``path`` (``bin/.sha256sums`` or ``bin/.links``) against ``members``: the
    mismatches [(name, listed, found)]; a short line, a missing or an empty list refused (k3s refuses them)."""
    sums = path == SUMS

    def found(name):
        rel = posixpath.normpath(posixpath.join("bin", name))
        item = _resolve(members, rel) if sums else members.get(rel)    # os.Open follows links, Readlink does not
        if item is None or item["type"] != ("file" if sums else "symlink"):
            return None
        return item["sha256"] if sums else item["target"]
    try:
        entries, bad = verify_list(posixpath.basename(path), lists.get(path, b""), found)
    except ShortLine as e:
        raise PayloadError("%s: %s line %r has fewer fields than k3s needs: k3s would refuse this archive"
                           % (what, path, e.line))
    if not entries:
        raise PayloadError("%s: %s is missing or empty: k3s refuses an archive without entries in it" % (what, path))
    return bad


def _resolve(members, path):
    """The member ``path`` names after following symlinks inside the tree (as os.Open would), or None."""
    for dummy in range(40):
        item = members.get(path)
        if item is None or item["type"] != "symlink":
            return item
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), item["target"]))
    return None


def check_lists(archive, lists, what):
    """What k3s checks before using the tree: ``bin/k3s`` exists, and pkg/dataverify's ``.sha256sums`` (sha256 of
    each listed file, relative to ``bin/``) and ``.links`` (exact symlink targets) both non-empty and true."""
    members = dict((m["path"], m) for m in archive.members)
    k3s = _resolve(members, "bin/k3s")
    if k3s is None or k3s["type"] != "file":
        raise PayloadError("%s: the archive has no bin/k3s file: k3s would extract it again on every start" % what)
    bad = ["%s (sha256 %s listed, %s in the archive)" % entry for entry in _entries(lists, SUMS, members, what)]
    bad += ["%s (link to %s listed, %s in the archive)" % entry for entry in _entries(lists, LINKS, members, what)]
    if bad:
        raise PayloadError("%s: bin/.sha256sums or bin/.links do not match the members, k3s would refuse to extract "
                           "it: %s" % (what, "; ".join(bad)))
