# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Compressed bytes in bounded memory: inflate and verify, re-frame as gzip members, inflate a gzip member.

Host side too (Python 3.6, standard library only): hosts call ``inflate_gzip_member`` on the streams the
controller wrote with ``entry_stream`` / ``executable_stream``. The controller passes its deflate engine
(``payload.engines``: isal, zlib-ng or zlib, each shaped like the ``zlib`` module) as ``engine``; the default
is the standard library's zlib, the only one hosts use.
"""

from __future__ import absolute_import, division, print_function

import os
import struct
import threading
import zlib

try:
    import queue
except ImportError:   # Python 2 never runs here, but sanity imports every file
    import Queue as queue  # noqa

from .errors import CorruptPayloadError, PayloadError
from .fsio import CHUNK, Sink
from .model import FORMAT_LEGACY, METHOD_DEFLATE

MAX_OUTPUT = 1 << 19       # inflated bytes per zlib call: bounds memory, and crc32, sha256 and write read it from cache
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"   # what Go's gzip writer emits at best compression


def feed(inflater, block, sink):
    """Inflate one input block into ``sink`` in pieces of at most MAX_OUTPUT bytes."""
    data = inflater.decompress(block, MAX_OUTPUT)
    while data:
        sink.write(data)
        if inflater.eof:
            break
        # Full output buffer: zlib may hold more, in unconsumed_tail or in its own state.
        data = inflater.decompress(inflater.unconsumed_tail, MAX_OUTPUT)


class PipedSink(object):
    """Hands the bytes written to it to ``sink`` in a second thread, through a queue of at most ``depth`` pieces.

    zlib's inflate and crc32, hashlib's sha256 and file writes all release the GIL on large buffers, so
    one thread inflates while the other checksums and writes. ``finish`` waits for the second thread and
    returns ``sink``; ``abort`` stops it. Memory stays bounded by ``depth`` x MAX_OUTPUT.
    """

    def __init__(self, sink, depth=8):
        self.sink = sink
        self.error = None
        self._queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run)
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self.error is None:
                try:
                    self.sink.write(data)
                except BaseException as e:   # re-raised in the inflating thread
                    self.error = e

    def write(self, data):
        if self.error is not None:
            raise self.error
        self._queue.put(data)

    def finish(self):
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.sink

    def abort(self):
        self.error = self.error or PayloadError("aborted")
        self._queue.put(None)
        self._thread.join()


def parallel_map(function, items, workers):
    """[function(item) for item in items], run by ``workers`` threads taking the items in order.

    What ``ThreadPoolExecutor.map`` does, without importing ``concurrent.futures`` (and ``logging``: ~7 ms
    of every controller process's start, which nothing else overlaps). After a failure no further item is
    started; the running ones finish, then the error of the first failed item (in ``items`` order) is raised.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    results, errors = [None] * len(items), {}
    lock = threading.Lock()
    state = {"next": 0}

    def run():
        while True:
            with lock:
                index = state["next"]
                if index >= len(items) or errors:
                    return
                state["next"] = index + 1
            try:
                results[index] = function(items[index])
            except BaseException as e:   # re-raised in the calling thread
                with lock:
                    errors[index] = e

    threads = [threading.Thread(target=run) for dummy in range(min(workers, len(items)))]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[min(errors)]
    return results


def inflate_range(fd, offset, length, method, sink, what, engine=zlib):
    """Stream ``length`` compressed bytes at ``offset`` of ``fd`` into ``sink``, bounded memory."""
    end = offset + length
    pos = offset
    inflater = engine.decompressobj(-15) if method == METHOD_DEFLATE else None
    try:
        while pos < end:
            block = os.pread(fd, min(CHUNK, end - pos), pos)
            if not block:
                raise CorruptPayloadError("%s: file ends inside the compressed data at offset %d" % (what, pos))
            pos += len(block)
            if inflater is None:
                sink.write(block)
                continue
            feed(inflater, block, sink)
        if inflater is not None:
            if not inflater.eof:
                raise CorruptPayloadError("%s: compressed data ends before the deflate stream does (truncated or damaged)" % what)
            if inflater.unused_data:
                raise CorruptPayloadError("%s: %d bytes follow the end of the deflate stream inside the entry"
                                          % (what, len(inflater.unused_data)))
    except engine.error as e:
        raise CorruptPayloadError("%s: compressed data is corrupt (%s)" % (what, e))


def verify_sink(sink, size, crc32, sha256, what):
    """The bytes that went through ``sink`` have the recorded size, CRC-32 and (when known) sha256; returns the sha256."""
    if sink.size != size:
        raise CorruptPayloadError("%s: inflated to %d bytes, the payload records %d" % (what, sink.size, size))
    if sink.crc32 != crc32:
        raise CorruptPayloadError("%s: CRC-32 mismatch (payload records %08x, data gives %08x)" % (what, crc32, sink.crc32))
    digest = sink.hash.hexdigest()
    if sha256 is not None and digest != sha256:
        raise CorruptPayloadError("%s: sha256 mismatch (expected %s, data gives %s)" % (what, sha256, digest))
    return digest


def inflate_entry(src_fd, entry, temp, mode, what, fsync, engine=zlib):
    """Inflate one payload entry into the new file ``temp`` (or only hash it: ``temp`` None); returns its sha256."""
    sink = Sink(temp, mode, engine.crc32)
    try:
        inflate_range(src_fd, entry.data_offset, entry.compressed_size, entry.method, sink, what, engine)
        digest = verify_sink(sink, entry.size, entry.crc32, entry.sha256, what)
        sink.close(fsync=fsync)
    except BaseException:
        sink.discard()
        raise
    return digest


def copy_range(fd, offset, length, sink, transform=None):
    """``length`` bytes at ``offset`` of ``fd`` into ``sink``, each block through ``transform`` if given."""
    pos, end = offset, offset + length
    while pos < end:
        block = os.pread(fd, min(CHUNK, end - pos), pos)
        if not block:
            raise CorruptPayloadError("unexpected end of file at offset %d" % pos)
        pos += len(block)
        sink.write(transform(block) if transform else block)


def _gzip_trailer(sink, crc32, size):
    sink.write(struct.pack("<II", crc32 & 0xFFFFFFFF, size & 0xFFFFFFFF))


def entry_stream(payload_format, entry, engine=zlib):
    """produce(fd, sink) for one entry's gzip member: legacy members as they are, zip deflate data re-framed."""
    def produce(fd, sink):
        if payload_format == FORMAT_LEGACY:
            copy_range(fd, entry.member_offset, entry.member_size, sink)
            return
        sink.write(GZIP_HEADER)
        if entry.method == METHOD_DEFLATE:
            copy_range(fd, entry.data_offset, entry.compressed_size, sink)
        else:   # stored entry: compress it once so hosts still receive a gzip member
            compressor = engine.compressobj(9, zlib.DEFLATED, -15)
            copy_range(fd, entry.data_offset, entry.compressed_size, sink, compressor.compress)
            sink.write(compressor.flush())
        _gzip_trailer(sink, entry.crc32, entry.size)
    return produce


def executable_stream(size, level=6, engine=zlib):
    """produce(fd, sink) for the first ``size`` bytes of the file as one deterministic gzip member."""
    def produce(fd, sink):
        sink.write(GZIP_HEADER)
        compressor = engine.compressobj(level, zlib.DEFLATED, -15)
        state = {"crc": 0}

        def compress(block):
            state["crc"] = engine.crc32(block, state["crc"])
            return compressor.compress(block)

        copy_range(fd, 0, size, sink, compress)
        sink.write(compressor.flush())
        _gzip_trailer(sink, state["crc"], size)
    return produce


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
        sink = Sink(dst_path, mode)
        try:
            inflater = zlib.decompressobj(31)   # gzip wrapper: zlib checks the trailer's CRC-32 and ISIZE too
            while not inflater.eof:
                block = src.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not block:
                    raise CorruptPayloadError("%s: truncated gzip member" % what)
                if remaining is not None:
                    remaining -= len(block)
                feed(inflater, block, sink)
            if inflater.unused_data or (remaining != 0 if remaining is not None else src.read(1)):
                raise CorruptPayloadError("%s: data follows the gzip member" % what)
            verify_sink(sink, size, crc32, sha256, what)
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
