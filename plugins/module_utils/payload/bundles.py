# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Stream bundles: the gzip streams of one release concatenated into one content-addressed file.

``write_bundle`` runs on the controller, ``check_bundle_members`` on hosts (Python 3.6, standard library only).
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os

from ..k0s_hostfs import atomic_write
from .errors import PayloadError
from .fsio import CHUNK, Sink, check_name, check_output_file, ensure_output_dir, sha256_file, temp_path

BUNDLE_FORMAT = 1


def bundle_id(members):
    """Content address of a bundle: sha256 over the ordered (name, stream sha256, stream size) lines."""
    h = hashlib.sha256(b"fleetsplit-bundle %d\n" % BUNDLE_FORMAT)
    for m in members:
        h.update(("%s %s %d\n" % (m["name"], m["stream_sha256"], m["stream_size"])).encode())
    return h.hexdigest()


def _stream_members(streams):
    """[(name, path[, expected sha256])] -> members sorted by name with their size and sha256, and the sha256
    of their concatenation (what the bundle must hash to). Names checked, streams must exist and, when an
    expected sha256 is given (the split facts derived from the executable), match it."""
    seen = set()
    members = []
    whole = hashlib.sha256()
    for item in sorted(streams):
        name, path, expected = (tuple(item) + (None,))[:3]
        check_name(name)
        if name in seen:
            raise PayloadError("stream %r is listed twice" % name)
        seen.add(name)
        st = check_output_file(path)
        if st is None:
            raise PayloadError("stream %s for %s does not exist (split again?)" % (path, name))
        one, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                one.update(block)
                whole.update(block)
                size += len(block)
        if expected is not None and one.hexdigest() != expected:
            raise PayloadError("controller cache stream %s (%s) has sha256 %s, but the split of the k0s executable in "
                               "this run gives %s: the cache was changed since; nothing was bundled. Run the "
                               "fleetsplit.k0s.split role again (it rewrites the stream from the executable)"
                               % (path, name, one.hexdigest(), expected))
        members.append({"name": name, "path": path, "stream_size": size, "stream_sha256": one.hexdigest()})
    return members, whole.hexdigest()


def write_bundle(streams, bundles_dir, write=True):
    """Concatenate gzip streams into ``<bundles_dir>/<id>.bundle`` (cached, temp + rename).

    ``streams`` is ``[(name, path)]`` or ``[(name, path, expected stream sha256)]``; the bundle holds them
    sorted by name. Returns ``{id, path, size, sha256, members: [{name, offset, size}], changed, healed}``.
    Each stream is hashed (and checked against its expected sha256); an existing bundle is reused only
    when it hashes to the concatenation of those streams, otherwise it is rewritten (``healed``). A sidecar
    ``<id>.json`` records its sha256 and member table for people; it is never trusted. Safe with
    concurrent writers (same content, each renames its own temporary file into place).
    """
    if not streams:
        raise PayloadError("a bundle needs at least one stream")
    members, expected = _stream_members(streams)
    bid = bundle_id(members)
    final = os.path.join(bundles_dir, bid + ".bundle")
    sidecar = os.path.join(bundles_dir, bid + ".json")
    table, offset = [], 0
    for m in members:
        table.append({"name": m["name"], "offset": offset, "size": m["stream_size"]})
        offset += m["stream_size"]
    result = {"id": bid, "path": final, "size": offset, "sha256": expected, "members": table, "changed": False,
              "healed": False}
    if write:
        ensure_output_dir(bundles_dir)
    st = check_output_file(final)
    if st is not None:
        if st.st_size == offset and sha256_file(final) == expected:
            return result
        result["healed"] = True
    if not write:
        result["changed"] = True
        return result
    sink = Sink(temp_path(final), 0o644)
    try:
        for m in members:
            with open(m["path"], "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    sink.write(block)
        sink.close(fsync=False)
        if sink.hash.hexdigest() != expected:
            raise PayloadError("streams changed while they were being bundled into %s; run again" % final)
    except BaseException:
        sink.discard()
        raise
    os.rename(sink.path, final)
    body = json.dumps({"format": BUNDLE_FORMAT, "id": bid, "size": offset, "sha256": expected,
                       "members": table}, indent=2, sort_keys=True) + "\n"
    atomic_write(sidecar, body.encode())
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
