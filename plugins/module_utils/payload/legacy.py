# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The legacy payload (k0s <= v1.35): gzip members appended back to back after the ELF image.

There is no directory: names come from ``bin/<name>.gz`` strings in ``.rodata`` (in that sorted order),
the blob length from ``BinDataSize`` in ``.noptrdata``, and each member is inflated once to find where it
ends (hashing and, when asked, writing it in the same pass). Controller side only; ``engine`` is the deflate
engine (``payload.engines``), zlib by default.

With ``workers`` > 1 the members are inflated in parallel from guessed starts: every member k0s appends
comes from the same gzip writer, so it begins with the first member's 10-byte header. The guesses are only
used when there is one per name and every member, fully inflated and checked (CRC-32, size), ends exactly
where the next guess starts and the last at the end of the file; otherwise all of it is dropped and the
members are scanned one after the other, as if nothing had been guessed.
"""

from __future__ import absolute_import, division, print_function

import re
import struct
import zlib

from .elf import section_bytes
from .errors import CorruptPayloadError, PayloadError
from .fsio import CHUNK, Sink, check_names
from .model import METHOD_DEFLATE, Entry
from .streams import PipedSink, feed, parallel_map

_LEGACY_NAME = re.compile(rb"bin/([A-Za-z0-9._+-]+?)\.gz")


def legacy_names(elf):
    """The embedded names ``bin/<name>.gz`` in .rodata, sorted (the order k0s appends the members in)."""
    data = section_bytes(elf, ".rodata") or b""
    return sorted(set(m.decode("ascii") for m in _LEGACY_NAME.findall(data)))


def _symbols_named(elf, suffix, size):
    """(st_shndx, st_value) of the .symtab symbols whose name ends with ``suffix`` and whose size is ``size``.

    The table is unpacked with ``struct`` in one go: pyelftools parses ~9000 Go symbols one by one, which
    cost more than inflating a member.
    """
    symtab = elf.get_section_by_name(".symtab")
    strtab = elf.get_section(symtab["sh_link"]) if symtab is not None else None
    if symtab is None or strtab is None:
        return []
    names = strtab.data()
    wanted = set()
    pos = names.find(suffix + b"\x00")
    while pos != -1:
        wanted.add(names.rfind(b"\x00", 0, pos) + 1)
        pos = names.find(suffix + b"\x00", pos + 1)
    if not wanted:
        return []
    end = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:   # st_name, st_info, st_other, st_shndx, st_value, st_size
        layout, fields = end + "IBBHQQ", (0, 3, 4, 5)
    else:                    # st_name, st_value, st_size, st_info, st_other, st_shndx
        layout, fields = end + "IIIBBH", (0, 5, 1, 2)
    data = symtab.data()
    found = []
    for raw in struct.iter_unpack(layout, data[:len(data) - len(data) % struct.calcsize(layout)]):
        name, shndx, value, sym_size = [raw[i] for i in fields]
        if name in wanted and sym_size == size:
            found.append((shndx, value))
    return found


def bin_data_size(elf, blob_size):
    """BinDataSize as compiled in: from the symbol table when present, else an aligned int64 in .noptrdata."""
    fmt = "<q" if elf.little_endian else ">q"
    for shndx, value in _symbols_named(elf, b".BinDataSize", 8):
        section = elf.get_section(shndx) if 0 < shndx < elf.num_sections() else None
        if section is not None and section["sh_type"] != "SHT_NOBITS":
            return struct.unpack_from(fmt, section.data(), value - section["sh_addr"])[0]
    data = section_bytes(elf, ".noptrdata") or b""
    wanted = struct.pack(fmt, blob_size)
    pos = data.find(wanted)
    while pos != -1:
        if pos % 8 == 0:
            return blob_size
        pos = data.find(wanted, pos + 1)
    return None


def gzip_header_length(mm, pos, size, what):
    """Length of the gzip member header at ``pos`` (optional fields included)."""
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


def _scan_member(mm, pos, size, name, what, out=None, engine=zlib):
    """Inflate the member at ``pos`` once, check its trailer; returns its Entry.

    The same pass hashes the bytes and (``out``: a Sink on a new file) writes them, in a second thread
    (``PipedSink``); the member's end comes from the inflater (``unused_data``), not from a second pass.
    """
    data_offset = pos + gzip_header_length(mm, pos, size, what)
    piped = PipedSink(out if out is not None else Sink(crc32=engine.crc32))
    inflater = engine.decompressobj(-15)
    cur = data_offset
    try:
        while not inflater.eof:
            if cur >= size:
                raise CorruptPayloadError("%s: truncated (file ends at offset %d inside the member)" % (what, size))
            block = mm[cur:min(size, cur + CHUNK)]
            feed(inflater, block, piped)
            cur += len(block) - len(inflater.unused_data)
    except engine.error as e:
        piped.abort()
        raise CorruptPayloadError("%s: compressed data is corrupt (%s)" % (what, e))
    except BaseException:
        piped.abort()
        raise
    sink = piped.finish()
    if cur + 8 > size:
        raise CorruptPayloadError("%s: truncated (gzip trailer missing at offset %d)" % (what, cur))
    crc, isize = struct.unpack_from("<II", mm, cur)
    if crc != sink.crc32:
        raise CorruptPayloadError("%s: CRC-32 mismatch (trailer records %08x, data gives %08x)" % (what, crc, sink.crc32))
    if isize != sink.size & 0xFFFFFFFF:
        raise CorruptPayloadError("%s: size mismatch (trailer records %d, data gives %d)" % (what, isize, sink.size))
    end = cur + 8
    return Entry(name, sink.size, crc, METHOD_DEFLATE, data_offset, cur - data_offset,
                 member_offset=pos, member_size=end - pos, sha256=sink.hash.hexdigest())


def _guessed_starts(mm, start, size, count):
    """Offsets that begin with the first member's header (FLG 0: a fixed 10 bytes), at most ``count`` + 1."""
    header = bytes(mm[start:start + 10])
    if len(header) < 10 or header[:3] != b"\x1f\x8b\x08" or header[3] != 0:
        return []
    found = [start]
    pos = mm.find(header, start + 10, size)
    while pos != -1 and len(found) <= count:
        found.append(pos)
        pos = mm.find(header, pos + 10, size)
    return found


def _scan_guessed(mm, path, start, size, names, sink_for, engine, workers):
    """The members inflated in parallel from ``_guessed_starts``; None when the guesses do not hold."""
    starts = _guessed_starts(mm, start, size, len(names))
    if len(starts) != len(names):
        return None
    bounds = starts[1:] + [size]
    outs = {}

    def one(index):
        out = outs[index] = sink_for(names[index]) if sink_for else None
        what = "%s: gzip member %d (%s)" % (path, index + 1, names[index])
        return _scan_member(mm, starts[index], bounds[index], names[index], what, out, engine)

    # Longest first (the distance to the next guess), so the longest inflate starts at once.
    order = sorted(range(len(names)), key=lambda i: starts[i] - bounds[i])
    found = {}
    try:
        for index, entry in zip(order, parallel_map(one, order, workers)):
            found[index] = entry
        entries = [found[i] for i in range(len(names))]
        if any(e.member_offset + e.member_size != bounds[i] for i, e in enumerate(entries)):
            raise CorruptPayloadError("a guessed member start is not where the previous member ends")
    except (PayloadError, engine.error):
        for out in outs.values():
            if out is not None:
                out.discard()
        return None
    for out in outs.values():
        if out is not None:
            out.close(fsync=False)
    return entries


def scan_legacy(mm, path, start, size, names, sink_for=None, engine=zlib, workers=1):
    """Walk the gzip members back to back from ``start``; inflate each once to find its end and hash it.

    ``sink_for(name)`` may return a Sink on a new file: that member is written in the same pass (the
    caller closes or discards it; on an error here every sink handed out so far is discarded).
    ``workers`` > 1: in parallel from guessed starts when they hold (see the module's docstring).
    """
    if workers > 1 and len(names) > 1:
        entries = _scan_guessed(mm, path, start, size, names, sink_for, engine, workers)
        if entries is not None:
            return entries
    entries = []
    pos = start
    while pos < size:
        index = len(entries)
        if index >= len(names):
            raise PayloadError("%s: more gzip members than the %d bin/<name>.gz names in .rodata (next member at offset %d)"
                               % (path, len(names), pos))
        what = "%s: gzip member %d (%s)" % (path, index + 1, names[index])
        out = sink_for(names[index]) if sink_for else None
        try:
            entries.append(_scan_member(mm, pos, size, names[index], what, out, engine))
            if out is not None:
                out.close(fsync=False)
        except BaseException:
            if out is not None:
                out.discard()
            raise
        pos = entries[-1].member_offset + entries[-1].member_size
    if len(entries) != len(names):
        raise PayloadError("%s: .rodata names %d embedded binaries (bin/<name>.gz) but the payload holds %d gzip members"
                           % (path, len(names), len(entries)))
    return entries


def read_legacy(elf, mm, path, start, size, sink_for=None, engine=zlib, workers=1):
    """Names, BinDataSize and entries of a legacy payload at ``start``: (entries, recorded BinDataSize)."""
    names = legacy_names(elf)
    if not names:
        raise PayloadError("%s: gzip data follows the ELF end but .rodata names no bin/<name>.gz entries" % path)
    check_names(names)
    blob_size = size - start
    recorded = bin_data_size(elf, blob_size)
    if recorded is None:
        raise CorruptPayloadError("%s: %d payload bytes follow the ELF end, but BinDataSize in .noptrdata does not "
                                  "record that length (payload truncated or extended)" % (path, blob_size))
    if recorded != blob_size:
        raise CorruptPayloadError("%s: BinDataSize records %d bytes but %d follow the ELF end"
                                  % (path, recorded, blob_size))
    return scan_legacy(mm, path, start, size, names, sink_for, engine, workers), recorded
