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

from .errors import PayloadError
from .fsio import CHUNK, Sink, check_name, check_output_file, ensure_output_dir, open_exclusive, sha256_file, temp_path

BUNDLE_FORMAT = 1


def bundle_id(members):
    """Content address of a bundle: sha256 over the ordered (name, stream sha256, stream size) lines."""
    h = hashlib.sha256(b"fleetsplit-bundle %d\n" % BUNDLE_FORMAT)
    for m in members:
        h.update(("%s %s %d\n" % (m["name"], m["stream_sha256"], m["stream_size"])).encode())
    return h.hexdigest()


def _stream_members(streams):
    """[(name, path)] -> members sorted by name with their size and sha256; names checked, streams must exist."""
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
    return members


def _cached_sha256(final, sidecar, table, size):
    """The sha256 its sidecar records for an existing bundle of the right size and member table, else None."""
    st = check_output_file(final)
    try:
        with open(sidecar) as f:
            side = json.load(f)
    except (IOError, OSError, ValueError):
        side = None
    if st is not None and st.st_size == size and isinstance(side, dict) \
            and side.get("members") == table and side.get("size") == size:
        return side["sha256"]
    return None


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
    members = _stream_members(streams)
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
        cached = _cached_sha256(final, sidecar, table, offset)
        if cached is not None:
            result["sha256"] = cached
            return result
    sink = Sink(temp_path(final) if write else None, 0o644)
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
        temp = temp_path(sidecar)
        with open_exclusive(temp, 0o644) as f:
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
