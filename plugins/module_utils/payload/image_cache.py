# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Controller cache of airgap image bundles: ``<cache>/images/<sha256 of the tar>/image.tar.gz``.

Each tar is hashed (size, CRC-32, sha256: what the host checks after inflating) and compressed once into a
gzip stream, so hosts receive it with the same one-bundle-per-host path as binaries
(``bundles.write_bundle``, ``streams.inflate_gzip_member``). Entries are private (0700) and bounded: the
``keep`` most recently used stay, like the split cache.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import re
import shutil
import zlib

from ..k0s_hostfs import atomic_write
from . import engines
from .errors import PayloadError
from .fsio import CHUNK, Sink, check_output_file, ensure_private_dir, temp_path

USED_MARKER = ".last-used"
INFO = "info.json"
ENTRY_NAME = re.compile(r"^[0-9a-f]{64}$")


def _describe(src):
    """size, CRC-32 and sha256 of a tar on the controller."""
    sink = Sink(None)
    try:
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                sink.write(block)
    except (IOError, OSError) as e:
        raise PayloadError("airgap bundle %s cannot be read: %s" % (src, e.strerror))
    return sink.size, sink.crc32, sink.hash.hexdigest()


def _compress(src, dest, level, engine):
    sink = Sink(temp_path(dest), 0o600)
    try:
        z = engine.compressobj(level, zlib.DEFLATED, 31)   # gzip framing: what inflate_gzip_member reads
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                sink.write(z.compress(block))
        sink.write(z.flush())
        sink.close(fsync=False)
    except BaseException:
        sink.discard()
        raise
    os.rename(sink.path, dest)
    return sink.size, sink.hash.hexdigest()


def image_stream(src, cache_dir, name=None, level=6, write=True, engine=None):
    """``{name, src, size, crc32, sha256, stream, stream_size, stream_sha256, changed}`` for one tar.

    The stream is reused when its entry holds one of the recorded size; otherwise it is (re)written,
    compressed by ``engine`` (``engines.select``: the fastest installed unless named).
    """
    size, crc32, sha256 = _describe(src)
    entry = os.path.join(cache_dir, sha256)
    stream = os.path.join(entry, "image.tar.gz")
    out = {"name": name or os.path.basename(src), "src": src, "size": size, "crc32": crc32, "sha256": sha256,
           "stream": stream, "changed": False}
    info = _read_info(entry)
    st = check_output_file(stream) if os.path.isdir(entry) else None
    if st is not None and info and info.get("stream_size") == st.st_size and info.get("sha256") == sha256:
        out.update(stream_size=st.st_size, stream_sha256=info.get("stream_sha256"))
        if write:
            atomic_write(os.path.join(entry, USED_MARKER), b"{}\n", 0o600)
        return out
    out["changed"] = True
    if not write:
        return out
    ensure_private_dir(entry)
    out["stream_size"], out["stream_sha256"] = _compress(src, stream, level, engines.select(engine))
    body = {"sha256": sha256, "size": size, "crc32": crc32, "stream_size": out["stream_size"],
            "stream_sha256": out["stream_sha256"]}
    atomic_write(os.path.join(entry, INFO), (json.dumps(body, sort_keys=True) + "\n").encode(), 0o600)
    atomic_write(os.path.join(entry, USED_MARKER), b"{}\n", 0o600)
    return out


def _read_info(entry):
    try:
        with open(os.path.join(entry, INFO)) as f:
            info = json.load(f)
        return info if isinstance(info, dict) else None
    except (IOError, OSError, ValueError):
        return None


def prune(cache_dir, in_use, keep):
    """Remove entries beyond the ``keep`` most recently used; the ``in_use`` sha256s always stay."""
    entries = []
    for name in os.listdir(cache_dir):
        path = os.path.join(cache_dir, name)
        if ENTRY_NAME.match(name) and name not in in_use and os.path.isdir(path) and not os.path.islink(path):
            marker = os.path.join(path, USED_MARKER)
            entries.append((os.lstat(marker if os.path.exists(marker) else path).st_mtime, path))
    entries.sort(reverse=True)
    removed = []
    for dummy, path in entries[max(keep - len(in_use), 0):]:
        shutil.rmtree(path)
        removed.append(path)
    return removed


BUNDLE_NAME = re.compile(r"^[0-9a-f]{64}\.(bundle|json)$")


def prune_bundles(bundles_dir, in_use_ids, keep):
    """Per-host bundles (``<id>.bundle`` and its ``<id>.json``): the ``in_use_ids`` of this run and the ``keep``
    newest others stay, so the directory stays bounded however many host sets a fleet produces."""
    if not os.path.isdir(bundles_dir):
        return []
    groups = {}
    for name in os.listdir(bundles_dir):
        path = os.path.join(bundles_dir, name)
        bid = name.rsplit(".", 1)[0]
        if BUNDLE_NAME.match(name) and bid not in in_use_ids and os.path.isfile(path) and not os.path.islink(path):
            groups.setdefault(bid, []).append((os.lstat(path).st_mtime, path))
    order = sorted(groups, key=lambda b: max(m for m, dummy in groups[b]), reverse=True)
    removed = []
    for bid in order[keep:]:
        for dummy, path in groups[bid]:
            os.unlink(path)
            removed.append(path)
    return sorted(removed)
