# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Read, verify and split the binaries a k0s executable carries after its ELF image.

Pure Python, no Ansible import: the modules, the command line tool and the unit tests share it. This file is the
facade (``inspect``, ``extract``, ``split``, the output writers, and the names callers import from here) over the
``payload`` package, one module per concern:

* ``payload.errors``: PayloadError and CorruptPayloadError.
* ``payload.model``: Entry and Payload, the format and method names.
* ``payload.fsio``: embedded-name checks, output directory and file checks, temporary files and their commit, sha256.
* ``payload.streams``: bounded-memory inflating and verifying, gzip members (``inflate_gzip_member`` runs on hosts).
* ``payload.engines``: the deflate engine of the controller (isal, zlib-ng or zlib; ``FLEETSPLIT_DEFLATE_ENGINE``).
* ``payload.bundles``: stream bundles (``write_bundle`` on the controller, ``check_bundle_members`` on hosts).
* ``payload.elf``: ELF end, machine, k0s version, Go build info, over ``payload.elfheaders`` (the tables, by ``struct``).
* ``payload.zipfmt``: the zip archive k0s >= v1.36.1 appends (directory read by the standard library's zipfile).
* ``payload.legacy``: the gzip members k0s <= v1.35 appends (names and BinDataSize from the ELF image).
* ``payload.k3s``: the zstd tar a k3s executable embeds (embed.FS), read as a stream; ``payload.k3s_tree`` writes
  it as k3s's data dir and as gzip streams per file content (format ``k3s``, docs/k3s.md).

``payload/__init__.py`` is empty and imports none of them: host-side modules import ``payload.streams``,
``payload.bundles``, ``payload.fsio`` and ``payload.errors`` directly (standard library, Python 3.6), never
the ELF code or this file. The inspection (``inspect(..., reference_elf=True)``, Go build info) reads the ELF headers
with pyelftools, payload_info's declared requirement (``HAS_PYELFTOOLS``, found without importing it); the split reads
them with ``payload.elfheaders``. The import of this file succeeds either way.

See docs/payload-formats.md for the two formats and what is checked.
"""

from __future__ import absolute_import, division, print_function

import json
import mmap
import os
import re
import shutil
import struct
import threading

from .k0s_hostfs import atomic_write
from .payload.bundles import BUNDLE_FORMAT, bundle_id, check_bundle_members, write_bundle
from .payload import engines
from .payload.elf import (HAS_PYELFTOOLS, PYELFTOOLS_IMPORT_ERROR, elf_end, elf_machine, go_build_info, k0s_version,
                          open_elf, open_executable)
from .payload.errors import CorruptPayloadError, PayloadError
from .payload.fsio import (CHUNK, Sink, check_name, check_output_dir, check_output_file, commit, ensure_output_dir,
                           ensure_private_dir, prepare_output, remove_quietly, sha256_file,
                           temp_path)
from .payload.legacy import read_legacy
from .payload.model import (FORMAT_BARE, FORMAT_K3S, FORMAT_LEGACY, FORMAT_ZIP, METHOD_DEFLATE, METHOD_STORE, Entry,
                            Payload)
from .payload.streams import (GZIP_HEADER, MAX_OUTPUT, copy_range, entry_stream, executable_stream, inflate_entry,
                              inflate_gzip_member, inflate_range, parallel_map, verify_sink)
from .payload.zipfmt import LOCAL_HEADER, read_zip

# The names callers import from here (modules, scripts/k0s-payload, benchmarks, tests).
__all__ = [
    "BUNDLE_FORMAT", "CHUNK", "FORMAT_BARE", "FORMAT_K3S", "FORMAT_LEGACY", "FORMAT_ZIP", "GZIP_HEADER", "HAS_PYELFTOOLS",
    "MAX_OUTPUT", "METHOD_DEFLATE", "METHOD_STORE", "PYELFTOOLS_IMPORT_ERROR", "CorruptPayloadError", "Entry",
    "Payload", "PayloadError", "bundle_id", "check_bundle_members", "check_name", "check_output_dir",
    "check_output_file", "describe", "elf_end", "engine_of", "engines", "ensure_output_dir", "ensure_private_dir",
    "extract", "go_build_info", "inflate_gzip_member",
    "inspect", "mark_used", "prune_cache", "require_payload", "sha256_file", "split", "stripped_digest", "write_bundle",
    "write_executable_stream", "write_streams", "write_stripped",
]


def inspect(path, sink_for=None, engine=None, workers=2, k3s_first=None, reference_elf=False):
    """Detect the payload format of ``path`` and list its entries. Raises PayloadError on anything odd.

    ``engine`` names the deflate engine (default: ``engines.select()``, the fastest installed or
    ``$FLEETSPLIT_DEFLATE_ENGINE``); the Payload keeps it for every later inflate and compression.
    ``workers``: legacy members are scanned that many at a time (``payload.legacy``).
    ``reference_elf``: read the ELF headers with pyelftools (the inspection) instead of ``payload.elfheaders``.

    Legacy payloads have no directory, so their members are inflated to find where each ends; their
    entries come back with ``sha256`` set, and ``sink_for(name)`` (a Sink on a new file, or None) lets
    that one pass write them too. Zip entries get ``sha256`` on extraction.
    """
    engine = engines.select(engine)
    f, st = open_executable(path)
    with f:
        elf = open_elf(f, path, reference=reference_elf)
        end = elf_end(elf)
        size = st.st_size
        machine = elf_machine(elf)
        if end > size:
            raise CorruptPayloadError("%s: the ELF headers describe %d bytes but the file has only %d: truncated executable"
                                      % (path, end, size))
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if end == size:
                # Nothing appended: a bare k0s, or k3s (its archive lives inside the Go image).
                from .payload import k3s   # here: zstandard and tarfile cost every k0s split ~10 ms of start-up
                archive = k3s.locate(elf, mm, path)
                if archive is None:
                    return Payload(path, size, FORMAT_BARE, end, [], machine, k0s_version(elf), st.st_mtime_ns,
                                   engine=engine)
                k3s.verify(elf, mm, archive, path)
                # The whole executable ships (k3s needs its own image): "stripped" is all of it.
                payload = Payload(path, size, FORMAT_K3S, size, [], machine, None, st.st_mtime_ns, engine=engine)
                # split's first pass (k3s_tree.FirstPass) may write while the one walk checks
                first = k3s_first(archive, engine) if k3s_first else None
                payload.k3s = k3s.walk(path, archive, first and first.writer)
                return payload
            head = bytes(mm[end:end + 4])
            version = k0s_version(elf)     # after the k3s check: a pass over .rodata, where k3s keeps its archive
            if head == LOCAL_HEADER:
                entries, images, zip64 = read_zip(f, mm, path, end, size)
                return Payload(path, size, FORMAT_ZIP, end, entries, machine, version, st.st_mtime_ns, zip64=zip64,
                               images=images, engine=engine)
            if head[:2] == b"\x1f\x8b":
                entries, recorded = read_legacy(elf, mm, path, end, size, sink_for, engine, workers)
                return Payload(path, size, FORMAT_LEGACY, end, entries, machine, version, st.st_mtime_ns,
                               bin_data_size=recorded, engine=engine)
        raise PayloadError("%s: %d bytes follow the ELF end at offset %d but they start with %r, neither a zip local "
                           "header nor a gzip member" % (path, size - end, end, head))


def engine_of(payload):
    """The deflate engine ``payload`` was inspected with (a Payload built by hand: the selected one)."""
    if payload.engine is None:
        payload.engine = engines.select()
    return payload.engine


def require_payload(payload):
    if payload.format == FORMAT_BARE:
        raise PayloadError("%s has no embedded payload (the ELF image ends at end of file): nothing to split"
                           % payload.path)
    return payload


# --------------------------------------------------------------------------- outputs

IMAGE_MODE = 0o644     # image bundles are data k0s imports, not executables


def _same_file(path, size, sha256):
    """True when the regular file ``path`` already holds ``size`` bytes with ``sha256`` (size first: no read when it differs)."""
    st = check_output_file(path)
    return st is not None and st.st_size == size and sha256_file(path) == sha256


def extract(payload, dest=None, mode=0o755, workers=2, write=True, mtime_ns=None, fsync=False, prewritten=None,
            entries=None):
    """Inflate every entry; verify size, CRC-32 (and sha256 when known); optionally write into ``dest``.

    Compare first: an entry whose sha256 is already known (legacy scan, an earlier pass of this run) and
    whose file in ``dest`` has that size and sha256 is neither inflated nor written. Every other entry is
    inflated to a temp name in ``dest`` and verified before any is renamed into place, so a failure leaves
    ``dest`` as it was. ``prewritten`` maps names to temp files a fused scan already wrote and verified.
    Returns a list of dicts: name, size, sha256, crc32, compressed_size, path, changed. With
    ``write=False`` nothing is written (check mode, info). ``fsync`` makes each file durable before the
    renames (hosts want it; a controller cache that is re-verified by sha256 on every run does not need it).
    ``entries`` defaults to the binaries (``payload.entries``); ``payload.images`` goes to its own ``dest``.
    """
    require_payload(payload)
    entries = payload.entries if entries is None else entries
    prewritten = dict(prewritten or {})
    if dest is not None and write:
        ensure_output_dir(dest)
        for entry in entries:
            check_output_file(os.path.join(dest, entry.name))
    temps = dict(prewritten)
    engine = engine_of(payload)
    fd = os.open(payload.path, os.O_RDONLY)
    try:
        def work(entry):
            """(sha256, changed) of one entry; the existing file is compared in the same worker."""
            final = os.path.join(dest, entry.name) if dest is not None else None
            if entry.name in prewritten:
                return entry.sha256, True
            if final is not None and entry.sha256 is not None and _same_file(final, entry.size, entry.sha256):
                return entry.sha256, False
            temp = temp_path(final) if final is not None and write else None
            if temp:
                temps[entry.name] = temp
            digest = inflate_entry(fd, entry, temp, mode, "%s: entry %s" % (payload.path, entry.name), fsync and write,
                                   engine)
            return digest, final is not None and (temp is not None or not _same_file(final, entry.size, digest))

        # Largest first: with two workers the longest inflate starts at once.
        order = sorted(entries, key=lambda e: -e.size)
        done = {}
        try:
            for entry, outcome in zip(order, parallel_map(work, order, workers)):
                done[entry.name] = outcome
        except BaseException:
            for temp in temps.values():
                remove_quietly(temp)
            raise
    finally:
        os.close(fd)
    results = []
    for entry in entries:
        entry.sha256, changed = done[entry.name]
        final = os.path.join(dest, entry.name) if dest is not None else None
        if final is not None and write and entry.name in temps:
            changed = commit(temps[entry.name], final, entry.sha256)
            if changed and mtime_ns is not None:
                os.utime(final, ns=(mtime_ns, mtime_ns))
        results.append({"name": entry.name, "size": entry.size, "sha256": entry.sha256, "crc32": entry.crc32,
                        "compressed_size": entry.compressed_size, "path": final, "changed": changed})
    return results


def _produce(payload, final, mode, write, fsync, produce, before_commit=None):
    """Run ``produce(fd, sink)`` on the executable into a temp file beside ``final``, then commit it by sha256.

    With ``write=False`` the bytes are only counted and hashed. ``before_commit()``, called once the temp
    file is complete, may wait or raise (the temp file is then removed). Returns (sink, sha256, changed).
    """
    temp = temp_path(final) if write else None
    fd = os.open(payload.path, os.O_RDONLY)
    try:
        sink = Sink(temp, mode, engine_of(payload).crc32)
        try:
            produce(fd, sink)
            sink.close(fsync=fsync and write)
            if before_commit is not None:
                before_commit()
        except BaseException:
            sink.discard()
            raise
    finally:
        os.close(fd)
    digest = sink.hash.hexdigest()
    changed = commit(temp, final, digest, write=write) if final else False
    return sink, digest, changed


def write_stripped(payload, out_path, mode=0o755, write=True, mtime_ns=None, fsync=False, before_commit=None):
    """The executable without its payload: byte for byte the bare build. Returns dict(size, sha256, crc32, path, changed).

    ``before_commit``: as for ``_produce`` (``_split`` runs this beside the inflating and commits after it).
    """
    write = write and out_path is not None
    if write:
        prepare_output(out_path, os.path.dirname(os.path.abspath(out_path)))
    sink, digest, changed = _produce(payload, out_path, mode, write, fsync,
                                     lambda fd, sink_: copy_range(fd, 0, payload.stripped_size, sink_), before_commit)
    if write and mtime_ns is not None:
        os.utime(out_path, ns=(mtime_ns, mtime_ns))
    return {"path": out_path, "size": sink.size, "sha256": digest, "crc32": sink.crc32, "changed": changed}


def stripped_digest(payload):
    """sha256, size and crc32 of the stripped executable, computed without writing."""
    return write_stripped(payload, None, write=False)


def _write_stream(payload, streams_dest, subdir, name, write, produce):
    directory = os.path.join(streams_dest, subdir)
    final = os.path.join(directory, name + ".gz")
    if write:
        prepare_output(final, streams_dest, directory)
    sink, digest, changed = _produce(payload, final, 0o644, write, False, produce)
    return {"stream": final, "stream_size": sink.size, "stream_sha256": digest, "changed": changed}


def write_streams(payload, streams_dest, write=True):
    """Write one gzip member per entry to ``streams_dest/libexec/<name>.gz`` (no recompression).

    Zip deflate data gets a gzip header and a CRC-32/ISIZE trailer around the very same bytes; legacy
    members are copied as they are. Hosts then inflate and verify with nothing but Python's zlib.
    Returns ``{name: {stream, stream_size, stream_sha256, changed}}``.
    """
    require_payload(payload)
    return dict((entry.name, _write_stream(payload, streams_dest, "libexec", entry.name, write,
                                           entry_stream(payload.format, entry, engine_of(payload))))
                for entry in payload.entries)


def executable_name(payload):
    """The executable's name in streams and bundles: ``k3s`` (shipped whole) or ``k0s`` (stripped)."""
    return "k3s" if payload.format == FORMAT_K3S else "k0s"


def write_executable_stream(payload, streams_dest, write=True, level=None):
    """``streams_dest/bin/<k0s|k3s>.gz``: the stripped executable as one deterministic gzip member. k3s is
    mostly its zstd archive, which deflate cannot shrink: level 1 there (6 for k0s)."""
    level = (1 if payload.format == FORMAT_K3S else 6) if level is None else level
    return _write_stream(payload, streams_dest, "bin", executable_name(payload), write,
                         executable_stream(payload.stripped_size, level, engine_of(payload)))


# --------------------------------------------------------------------------- one call for the modules

K3S_MEMBER_KEYS = ("path", "type", "mode", "size", "sha256", "target")


def describe(payload):
    """Facts common to payload_info and payload_split."""
    if payload.format == FORMAT_K3S:
        archive = payload.k3s
        return {"format": FORMAT_K3S, "k3s_version": archive.version, "data_hash": archive.data_hash,
                "archive": archive.as_dict(), "elf_machine": payload.elf_machine, "file_size": payload.file_size,
                "members": [dict((k, m[k]) for k in K3S_MEMBER_KEYS) for m in archive.members],
                "files": archive.files(), "deflate_engine": engine_of(payload).describe()}
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
        "deflate_engine": engine_of(payload).describe(),
    }


def _executable_stream_holds(path, stripped, engine):
    """An existing ``bin/k0s.gz`` (or any stream: ``stripped`` gives size, crc32, sha256) that is one gzip member
    (our header) inflating to exactly those bytes, as its stream dict, else None: inflating it costs a fraction
    of compressing it again."""
    st = check_output_file(path)
    if st is None or st.st_size < 18:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        trailer = struct.pack("<II", stripped["crc32"] & 0xFFFFFFFF, stripped["size"] & 0xFFFFFFFF)
        if os.pread(fd, 10, 0) != GZIP_HEADER or os.pread(fd, 8, st.st_size - 8) != trailer:
            return None
        sink = Sink(crc32=engine.crc32)
        inflate_range(fd, 10, st.st_size - 18, METHOD_DEFLATE, sink, path, engine)
        verify_sink(sink, stripped["size"], stripped["crc32"], stripped["sha256"], path)
        whole = Sink(crc32=engine.crc32)      # the sha256 of the very bytes just verified (same descriptor)
        copy_range(fd, 0, st.st_size, whole)
    except PayloadError:
        return None
    finally:
        os.close(fd)
    return {"stream": path, "stream_size": whole.size, "stream_sha256": whole.hash.hexdigest(), "changed": False}


class _Beside(object):
    """``function()`` in a thread beside the caller's work, its commit held until that work has passed.

    ``function`` gets ``before_commit``, which waits for ``passed()`` or ``failed()``; after ``failed()`` it
    raises, so nothing is committed when another output of the same split failed its checks.
    """

    def __init__(self, function):
        self._decided = threading.Event()
        self._ok = False
        self._outcome = {}
        self._thread = threading.Thread(target=self._run, args=(function,))
        self._thread.daemon = True
        self._thread.start()

    def _run(self, function):
        try:
            self._outcome["result"] = function(self._before_commit)
        except BaseException as e:   # re-raised by result()
            self._outcome["error"] = e

    def _before_commit(self):
        self._decided.wait()
        if not self._ok:
            raise PayloadError("not committed: another output of this split failed")

    def passed(self):
        self._ok = True
        self._decided.set()

    def failed(self):
        self._decided.set()
        self._thread.join()

    def result(self):
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]


def _split(payload, dest, stripped_executable, streams_dest, mode, workers, prewritten, images_dest, write, mtime_ns):
    """One pass over every output; returns (result, [outputs whose bytes differ from what the source gives]).

    The stripped executable (12 MB to copy and hash) is produced beside the inflating, which leaves a core
    idle at its end (the entries differ in size); it is committed only after every entry passed.
    """
    stripped_job = _Beside(lambda before_commit: write_stripped(payload, stripped_executable, mode=mode, write=write,
                                                                mtime_ns=mtime_ns, before_commit=before_commit))
    try:
        files = extract(payload, dest, mode=mode, workers=workers, write=write, mtime_ns=mtime_ns, prewritten=prewritten)
        # Image bundles: their own directory (or only facts), never libexec, never a stream for the release store.
        images = extract(payload, images_dest, mode=IMAGE_MODE, workers=workers, write=write, entries=payload.images) \
            if payload.images else []
    except BaseException:
        stripped_job.failed()
        raise
    stripped_job.passed()
    stripped = stripped_job.result()
    differ = [f["path"] for f in files + images if f["changed"]]
    if stripped_executable and stripped["changed"]:
        differ.append(stripped_executable)
    if not stripped_executable:
        stripped["path"] = None
    if streams_dest:
        streams = write_streams(payload, streams_dest, write=write)
        for item in files:
            stream = streams[item["name"]]
            if stream["changed"]:
                differ.append(stream["stream"])
            item["changed"] = item["changed"] or stream.pop("changed")
            item.update(stream)
        exe_stream = None if write else _executable_stream_holds(os.path.join(streams_dest, "bin", "k0s.gz"), stripped,
                                                                 engine_of(payload))
        exe_stream = exe_stream or write_executable_stream(payload, streams_dest, write=write)
        if exe_stream["changed"]:
            differ.append(exe_stream["stream"])
        stripped["changed"] = stripped["changed"] or exe_stream.pop("changed")
        stripped.update(exe_stream)
    result = describe(payload)
    result["files"] = files
    result["images"] = images
    result["stripped_executable"] = stripped
    return result, differ


def _retime(result, mtime_ns, write, differ):
    """Outputs with the right content but not the source's mtime (legacy k0s needs it to the nanosecond):
    set it (``utime``, content untouched) unless ``write`` is false, mark the item changed; returns their paths."""
    items = list(result["files"]) + [result["stripped_executable"]]
    retimed = []
    for item in items:
        path = item["path"]
        if not path or path in differ or not os.path.lexists(path) or os.lstat(path).st_mtime_ns == mtime_ns:
            continue
        if write:
            check_output_file(path)
            os.utime(path, ns=(mtime_ns, mtime_ns))
        item["changed"] = True
        retimed.append(path)
    return retimed


def _write_differing(payload, result, differ, args, mtime_ns):
    """The write pass after a read-only one: only the outputs in ``differ`` are written (facts already known)."""
    dummy, dest, stripped_executable, streams_dest, mode, workers, prewritten, images_dest = args
    differ = set(differ)
    if images_dest and any(i["path"] in differ for i in result["images"]):
        written = extract(payload, images_dest, mode=IMAGE_MODE, workers=workers, write=True, entries=payload.images)
        written = dict((i["name"], i) for i in written)
        for item in result["images"]:
            item["changed"] = item["changed"] or written[item["name"]]["changed"]
    if dest and any(f["path"] in differ for f in result["files"]):
        written = extract(payload, dest, mode=mode, workers=workers, write=True, mtime_ns=mtime_ns, prewritten=prewritten)
        written = dict((f["name"], f) for f in written)
        for item in result["files"]:
            item["changed"] = item["changed"] or written[item["name"]]["changed"]
    if stripped_executable and stripped_executable in differ:
        write_stripped(payload, stripped_executable, mode=mode, write=True, mtime_ns=mtime_ns)
    if streams_dest:
        producers = dict((e.name, entry_stream(payload.format, e, engine_of(payload))) for e in payload.entries)
        for item in result["files"]:
            if item.get("stream") in differ:
                _write_stream(payload, streams_dest, "libexec", item["name"], True, producers[item["name"]])
        if result["stripped_executable"].get("stream") in differ:
            write_executable_stream(payload, streams_dest, write=True)


def split(src, dest=None, stripped_executable=None, streams_dest=None, mode=0o755, workers=2, write=True,
          pin_mtime=False, images_dest=None, engine=None):
    """Everything payload_split does, minus Ansible: returns the module's result (without ``changed``).

    Every fact in the result (sha256, size, CRC-32 of each file, of each gzip stream and of the stripped
    executable) is derived in this call from ``src``, never read back from earlier outputs. Existing outputs
    are first only compared with those facts (read-only pass); then only the outputs that differ or are
    missing are written (a no-change run writes nothing). ``healed`` lists the outputs that existed with
    other bytes (a damaged or forged cache entry), ``changed`` per item whether it was (or in check mode
    would be) written or re-timed.

    ``pin_mtime`` gives every written binary and the stripped executable the source's mtime: a
    stripped legacy k0s re-uses a staged file only when size and mtime (to the nanosecond) match. A file
    with the right content and another mtime is re-timed (not rewritten) and listed in ``retimed``.

    Image bundles (zip ``images/<name>``) are listed in ``images`` and written to ``images_dest`` when
    given (mode 0644, same checks as binaries), never with the binaries. ``engine``: as for ``inspect``.
    """
    prewritten, firsts = {}, []
    engine = engines.select(engine)

    def k3s_first(archive, engine):
        """k3s: outputs that do not exist yet are written by the walk that checks the archive (one decompression)."""
        from .payload import k3s_tree
        firsts.append(k3s_tree.FirstPass(archive, dest, streams_dest, engine))
        return firsts[-1]

    def sink_for(name):
        """Legacy: a binary missing from ``dest`` is written by the one inflate pass that scans the payload."""
        final = os.path.join(dest, name)
        if os.path.lexists(final):
            return None
        ensure_output_dir(dest)
        prewritten[name] = temp_path(final)
        return Sink(prewritten[name], mode, engine.crc32)

    try:
        payload = require_payload(inspect(src, sink_for if write and dest else None, engine, workers,
                                          k3s_first if write and (dest or streams_dest) else None))
        if payload.format == FORMAT_K3S:
            return _split_k3s(payload, dest, stripped_executable, streams_dest, mode, write,
                              firsts[0] if firsts else None)
        return _split_with(payload, dest, stripped_executable, streams_dest, mode, workers, write, pin_mtime, prewritten,
                           images_dest)
    finally:
        for temp in prewritten.values():   # committed ones were renamed away: this only removes leftovers
            remove_quietly(temp)
        for first in firsts:               # the k3s lock, and what a refusal or error left uninstalled
            first.release()


def _split_with(payload, dest, stripped_executable, streams_dest, mode, workers, write, pin_mtime, prewritten,
                images_dest):
    mtime_ns = payload.mtime_ns if pin_mtime else None
    args = (payload, dest, stripped_executable, streams_dest, mode, workers, prewritten, images_dest)
    outputs = _outputs(payload, dest, stripped_executable, streams_dest, images_dest)
    if write and not any(os.path.lexists(p) for p in outputs):
        # A first split: nothing to compare with, so the read-only pass would only inflate everything twice.
        result = _split(*args, write=True, mtime_ns=mtime_ns)[0]
        result["healed"] = []
        result["retimed"] = []
        return result
    result, differ = _split(*args, write=False, mtime_ns=mtime_ns)
    healed = [p for p in differ if os.path.lexists(p)]
    if write and differ:
        _write_differing(payload, result, differ, args, mtime_ns)
    result["retimed"] = _retime(result, mtime_ns, write, set(differ)) if mtime_ns is not None else []
    result["healed"] = healed
    return result


def _split_k3s(payload, dest, stripped_executable, streams_dest, mode, write, first_pass=None):
    """k3s: ``dest`` is a k3s data dir (``data/<hash>/`` as k3s extracts it), ``streams_dest`` gets
    ``k3s/<sha256>.gz`` per distinct file content and ``bin/k3s.gz``; compared first, written only when they differ.
    ``first_pass``: the k3s_tree.FirstPass whose walk already wrote what did not exist (temporary until here)."""
    from .payload import k3s, k3s_tree
    archive, engine = payload.k3s, engine_of(payload)
    prewritten = first_pass.writer if first_pass else None
    result = describe(payload)
    healed, wanted, streams = [], {}, None
    if streams_dest:
        streams = os.path.join(streams_dest, "k3s")
        first = {}
        for member in archive.members:
            if member["type"] == "file":
                first.setdefault(member["sha256"], member["path"])
        for item in result["files"]:
            final = os.path.join(streams, item["name"] + ".gz")
            held = _executable_stream_holds(final, item, engine)
            item.update(held or {"changed": True})
            if not held:
                if prewritten is not None and prewritten.streams:
                    prewritten.commit_deferred(item["name"])
                else:
                    wanted[first[item["name"]]] = item["name"]
                if os.path.lexists(final):
                    healed.append(final)
    build = bool(dest and k3s_tree.tree_problems(dest, archive))
    if build and os.path.lexists(os.path.join(dest, "data", archive.data_hash)):
        healed.append(os.path.join(dest, "data", archive.data_hash))
    data_changed = bool(dest and (build or k3s_tree.links_problems(dest, archive)))
    writer = None
    if write and streams_dest:
        k3s_tree.ensure_streams_dir(streams_dest)
    if write and data_changed:
        writer = k3s_tree.write_data_dir(payload.path, archive, dest, build, streams, wanted, engine,
                                         first=first_pass)
    elif wanted:
        writer = k3s_tree.Writer(streams=streams, wanted=wanted, engine=engine, write=write)
        k3s.walk(payload.path, archive, writer)
    for item in result["files"]:
        item.update(prewritten.written.get(item["name"], {}) if prewritten else {})
        item.update(writer.written.get(item["name"], {}) if writer else {})
        item["path"] = None
    old = check_output_file(stripped_executable) if stripped_executable else None
    # Compared first, written only when it differs (a no-change run creates no temp file).
    stripped = write_stripped(payload, stripped_executable, write=False) if stripped_executable \
        else stripped_digest(payload)
    if write and stripped["changed"]:
        write_stripped(payload, stripped_executable, mode=mode, write=True)
    if old is not None and stripped["changed"]:
        healed.append(stripped_executable)
    if streams_dest:
        path = os.path.join(streams_dest, "bin", executable_name(payload) + ".gz")
        exe = _executable_stream_holds(path, stripped, engine)
        if exe is None:
            healed += [path] if os.path.lexists(path) else []
            exe = write_executable_stream(payload, streams_dest, write=write)
        stripped["changed"] = stripped["changed"] or exe.pop("changed")
        stripped.update(exe)
    stripped["name"] = executable_name(payload)
    result.update(stripped_executable=stripped, images=[], healed=healed, retimed=[])
    if dest:
        result["data_dir"] = {"path": os.path.join(os.path.abspath(dest), "data", archive.data_hash),
                              "changed": data_changed}
    return result


def _outputs(payload, dest, stripped_executable, streams_dest, images_dest=None):
    """Every path a split with these destinations writes."""
    names = [e.name for e in payload.entries]
    paths = [os.path.join(dest, n) for n in names] if dest else []
    if images_dest:
        paths += [os.path.join(images_dest, e.name) for e in payload.images]
    if stripped_executable:
        paths.append(stripped_executable)
    if streams_dest:
        paths += [os.path.join(streams_dest, "libexec", n + ".gz") for n in names]
        paths.append(os.path.join(streams_dest, "bin", "k0s.gz"))
    return paths


# --------------------------------------------------------------------------- controller cache retention

USED_MARKER = ".last-used"
ENTRY_NAME = re.compile(r"^[0-9a-f]{64}$")     # split/<sha256 of the executable>


def mark_used(entry, src):
    """Record that cache ``entry`` (split/<sha256>) served ``src`` now; its mtime orders retention.

    A marker that already names ``src`` only gets a new mtime: a no-change run creates no file.
    """
    marker = os.path.join(entry, USED_MARKER)
    body = (json.dumps({"source": os.path.realpath(src)}) + "\n").encode()
    try:
        if check_output_file(marker) is not None:
            with open(marker, "rb") as f:
                if f.read(len(body) + 1) == body:
                    os.utime(marker, None)
                    return
    except (IOError, OSError):
        pass
    atomic_write(marker, body)


def _last_used(entry):
    """(mtime of the marker, recorded source); entries split before markers existed go by their own mtime."""
    marker = os.path.join(entry, USED_MARKER)
    try:
        with open(marker) as f:
            source = json.load(f).get("source")
        return os.lstat(marker).st_mtime, source if isinstance(source, str) else None
    except (IOError, OSError, ValueError, AttributeError):
        return os.lstat(entry).st_mtime, None


def prune_cache(entry, keep):
    """Keep the ``keep`` most recently used entries beside ``entry`` (always ``entry`` itself), remove the rest.

    Only sha256-named directories of ``<cache>/split/`` are touched, and a release downloaded into
    ``<cache>/downloads/<version>/`` goes with the entry that split it. Returns the removed paths.
    """
    entry = os.path.abspath(entry)
    split_dir = os.path.dirname(entry)
    downloads = os.path.join(os.path.dirname(split_dir), "downloads")
    entries = []
    for name in os.listdir(split_dir):
        path = os.path.join(split_dir, name)
        if path != entry and ENTRY_NAME.match(name) and os.path.isdir(path) and not os.path.islink(path):
            entries.append((_last_used(path), path))
    entries.sort(reverse=True)
    kept = [_last_used(entry)[1]] + [used[1] for used, dummy in entries[:max(keep - 1, 0)]]
    kept_releases = set(os.path.dirname(source) for source in kept if source)   # one per version, all arches
    removed = []
    for (dummy, source), path in entries[max(keep - 1, 0):]:
        shutil.rmtree(path)
        removed.append(path)
        release = os.path.dirname(source) if source else None
        if release and release not in kept_releases and os.path.dirname(release) == downloads \
                and os.path.isdir(release) and not os.path.islink(release):
            shutil.rmtree(release)
            removed.append(release)
    return removed
