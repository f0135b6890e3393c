# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The zip payload (k0s >= v1.36.1): a zip archive appended to the ELF image.

The standard library's ``zipfile`` reads the central directory (it tolerates the prepended ELF image and
reads zip64 records and extra fields). On top of it, this module checks only what ``zipfile`` does not:

* the end record is searched from the end of the file only, never before the ELF end (zip signatures
  occur inside k0s's own ``.text``), and nothing may follow it (``zipfile`` gives up after 64 KiB of junk);
* the archive starts exactly at the ELF end and the directory ends at the end record;
* names (no paths, NUL, control characters or duplicates), methods (store and deflate only), no encryption;
* each entry's raw compressed bytes: offset from its local header (30 + name length + extra length), in
  bounds, not overlapping another entry or the directory.

Controller side only.
"""

from __future__ import absolute_import, division, print_function

import struct
import zipfile

from .errors import CorruptPayloadError, PayloadError
from .fsio import check_name, check_names
from .model import METHOD_DEFLATE, METHOD_STORE, Entry

LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30
_ZIP_METHODS = {0: METHOD_STORE, 8: METHOD_DEFLATE}
_ZIP_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd", 95: "xz", 98: "ppmd"}
_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD_SIZE = 22
_ZIP64_TRAILER = 56 + 20   # zip64 end record + locator, when present


def _end_records(mm, eocd):
    """(zip64 end record offset or None, entry count, cd_size, cd_offset) of the end record at ``eocd``."""
    (dummy, disk, cd_disk, count_disk, count, cd_size, cd_offset) = struct.unpack_from("<4sHHHHII", mm, eocd)
    zip64 = None
    loc = eocd - 20
    if loc >= 0 and mm[loc:loc + 4] == _EOCD64_LOCATOR:
        rec = eocd - _ZIP64_TRAILER
        if rec < 0 or mm[rec:rec + 4] != _EOCD64:
            raise CorruptPayloadError("zip64 locator present but no zip64 end record 76 bytes before the end record")
        (disk, cd_disk, count_disk, count, cd_size, cd_offset) = struct.unpack_from("<IIQQQQ", mm, rec + 16)
        zip64 = rec
    if disk != 0 or cd_disk != 0 or count_disk != count:
        raise CorruptPayloadError("zip spans several disks: not a k0s payload")
    return zip64, count, cd_size, cd_offset


def _zip_start(mm, eocd):
    """Offset where the archive of the end record at ``eocd`` starts (76 bytes earlier with zip64 records)."""
    zip64, dummy, cd_size, cd_offset = _end_records(mm, eocd)
    return (zip64 if zip64 is not None else eocd) - cd_size - cd_offset


def find_end_record(mm, start, size):
    """(offset, trailing junk) of the end record, searching backwards from EOF and never before ``start``."""
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
            try:
                found = tail_end < size and _zip_start(mm, pos) == start
            except CorruptPayloadError:
                found = False
            if found:
                return pos, size - tail_end
        pos = mm.rfind(_EOCD, start, pos)
    return None, 0


def _directory(f, path, cd_start, count):
    """The central directory as ``zipfile`` reads it: [ZipInfo], checked to be the one our end record names."""
    try:
        with zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
            start_dir = archive.start_dir
    except UnicodeDecodeError as e:
        raise PayloadError("%s: an embedded name is flagged UTF-8 but is not (%s)" % (path, e))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, struct.error, ValueError) as e:
        raise CorruptPayloadError("%s: the central directory is damaged: %s" % (path, e))
    if start_dir != cd_start or len(infos) != count:
        raise CorruptPayloadError("%s: the central directory holds %d entries at offset %d, the end record says %d at %d"
                                  % (path, len(infos), start_dir, count, cd_start))
    return infos


def _raw_name(info):
    """The name's bytes as stored (zipfile decodes them as UTF-8 or cp437 by the flag; both round-trip)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def _entry(mm, path, info, cd_start):
    """(Entry, local header offset) of one directory record, after the checks zipfile does not do; offsets are absolute."""
    raw_name = _raw_name(info)
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("%s: embedded name %r is not valid UTF-8" % (path, raw_name))
    if info.flag_bits & 0x1:
        raise PayloadError("%s: entry %r is encrypted: k0s payloads never are" % (path, name))
    method = info.compress_type
    if method not in _ZIP_METHODS:
        raise PayloadError("%s: entry %r uses compression method %d (%s); only store (0) and deflate (8) are supported"
                           % (path, name, method, _ZIP_METHOD_NAMES.get(method, "unknown")))
    local = info.header_offset   # zipfile adds the archive start: absolute in the file
    if local + _LOCAL_HEADER_SIZE > cd_start or mm[local:local + 4] != LOCAL_HEADER:
        raise CorruptPayloadError("%s: local header of %r at offset %d is missing or damaged" % (path, name, local))
    lnlen, lxlen = struct.unpack_from("<HH", mm, local + 26)
    local_name = bytes(mm[local + _LOCAL_HEADER_SIZE:local + _LOCAL_HEADER_SIZE + lnlen])
    if local_name != raw_name:
        raise CorruptPayloadError("%s: local header at offset %d names %r, the directory says %r"
                                  % (path, local, local_name, raw_name))
    data_offset = local + _LOCAL_HEADER_SIZE + lnlen + lxlen
    if data_offset + info.compress_size > cd_start:
        raise CorruptPayloadError("%s: compressed data of %r runs into the central directory" % (path, name))
    if method == 0 and info.compress_size != info.file_size:
        raise CorruptPayloadError("%s: stored entry %r has compressed size %d != size %d"
                                  % (path, name, info.compress_size, info.file_size))
    return Entry(name, info.file_size, info.CRC, _ZIP_METHODS[method], data_offset, info.compress_size), local


BIN_DIR = "bin"         # k0s >= 1.37 layout (feature/zip-embedded-images): assets.EmbeddedBinDir
IMAGES_DIR = "images"   # OCI image bundles k0s imports from the payload (worker ocibundle.go embeddedBundleDir)


def classify(path, entries):
    """(binaries, images, skipped directory entries) of zip entries by name.

    ``<name>`` and ``bin/<name>`` are binaries (by base name), ``images/<name>`` image bundles; the
    directory entries ``bin/`` and ``images/`` are skipped. Any other name with a ``/`` is refused, as
    is a binary named both ways or a name that is not a plain file name.
    """
    binaries, images, where = [], [], {}
    for entry in entries:
        raw = entry.name
        head, sep, tail = raw.partition("/")
        if sep and head in (BIN_DIR, IMAGES_DIR) and tail == "" and entry.size == 0:
            continue   # an explicit directory entry, as Info-ZIP's zip adds for a directory
        if sep and head in (BIN_DIR, IMAGES_DIR) and "/" not in tail:
            try:
                check_name(tail)
            except PayloadError as e:
                raise PayloadError("%s: zip entry %r: %s" % (path, raw, e))
            entry.name = tail
            (binaries if head == BIN_DIR else images).append(entry)
        elif sep:
            raise PayloadError("%s: zip entry %r is a path: only <name> and bin/<name> (embedded binaries) and "
                               "images/<name> (image bundles) are known; refusing an unknown payload layout (is this "
                               "a newer k0s than this collection supports?)" % (path, raw))
        else:
            binaries.append(entry)
        kind = "binary" if head == BIN_DIR or not sep else "image bundle"
        if (kind, entry.name) in where:
            raise PayloadError("%s: embedded %s %r occurs twice (as %r and %r): refusing"
                               % (path, kind, entry.name, where[(kind, entry.name)], raw))
        where[(kind, entry.name)] = raw
    check_names([e.name for e in binaries])
    check_names([e.name for e in images])
    return binaries, images


def _check_overlaps(path, spans):
    """Each entry's local header and data ([(Entry, local header offset)]) must end before the next entry starts."""
    ordered = sorted(spans, key=lambda span: span[1])
    for (one, one_start), (two, two_start) in zip(ordered, ordered[1:]):
        one_end = one.data_offset + one.compressed_size
        if one_end > two_start:
            raise CorruptPayloadError("%s: entries %r (bytes %d-%d) and %r (from offset %d) overlap"
                                      % (path, one.name, one_start, one_end, two.name, two_start))


def read_zip(f, mm, path, start, size):
    """Entries of the zip archive that must start at ``start`` (the ELF end) of the file ``f`` (mapped as ``mm``).

    Returns (binaries, image bundles, zip64) (``classify``). Raises PayloadError (CorruptPayloadError for
    damage) naming the problem. The directory's offsets may be relative to the archive (Go's archive/zip,
    k0s's packer) or to the file (Info-ZIP's ``zip -A``, as k0s documents for adding image bundles).
    """
    eocd, junk = find_end_record(mm, start, size)
    if eocd is None:
        raise CorruptPayloadError(
            "%s: a zip archive starts at the ELF end (offset %d) but no end-of-central-directory record was found: "
            "the payload is truncated or damaged" % (path, start))
    if junk:
        raise CorruptPayloadError("%s: %d bytes of trailing data follow the zip end-of-central-directory record" % (path, junk))
    zip64, count, cd_size, cd_offset = _end_records(mm, eocd)
    base = (zip64 if zip64 is not None else eocd) - cd_size - cd_offset
    if base == 0 and cd_offset >= start:
        pass   # offsets relative to the file (``zip -A``): the first local header must still be at the ELF end
    elif base != start:
        raise CorruptPayloadError("%s: the zip directory puts the archive start at offset %d but the ELF image ends at %d"
                                  % (path, base, start))
    cd_start = base + cd_offset   # so the directory ends at the (zip64) end record
    spans = [_entry(mm, path, info, cd_start) for info in _directory(f, path, cd_start, count)]
    if spans and min(local for dummy, local in spans) != start:
        raise CorruptPayloadError("%s: the first zip entry is at offset %d but the ELF image ends at %d"
                                  % (path, min(local for dummy, local in spans), start))
    _check_overlaps(path, spans)
    binaries, images = classify(path, [entry for entry, dummy in spans])
    return binaries, images, zip64 is not None
