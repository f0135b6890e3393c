# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Pull distribution, controller side: the content-addressed tree a mirror serves (docs/distribution.md).

    <dest>/blobs/sha256/<hex>        every gzip stream of a split, named by its sha256 (0644)
    <dest>/releases/<split-id>.json  the split's manifest (names, sizes, sha256, stream sha256 and size);
                                     <split-id> = the stripped executable's sha256
    <dest>/index.json                the releases the tree holds (id, k0s_version, goarch), sorted

Static files: any HTTP server or object store can serve them. Every blob is hashed while it is copied and
renamed into place only when it has the sha256 the split derived from the executable; an existing blob is kept
only when it hashes right (else replaced and reported). JSON is deterministic (sorted keys), so a re-publish
writes nothing. No Ansible import.
"""

import hashlib
import json
import os
import re
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_arch import goarch
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import CHUNK, check_name, sha256_file

TREE_FORMAT = 1
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
DIR_MODE = 0o755
FILE_MODE = 0o644
RELEASE_KEYS = ("name", "size", "sha256", "crc32", "stream_sha256", "stream_size")


class MirrorTreeError(PayloadError):
    """A split or a destination the tree refuses; the message says why. Nothing half-written stays."""


def _hex(value, what):
    v = str(value or "").lower()
    if not HEX64.match(v):
        raise MirrorTreeError("%s: %r is not a sha256 (64 hex digits)" % (what, value))
    return v


def _entry(d, name, what):
    if not isinstance(d, dict):
        raise MirrorTreeError("%s must be a dict (the payload_split result)" % what)
    missing = [k for k in ("size", "sha256", "crc32", "stream", "stream_sha256", "stream_size") if d.get(k) is None]
    if missing:
        raise MirrorTreeError("%s lacks %s: publish the result of the fleetsplit.k0s.split role (payload_split with "
                              "streams_dest)" % (what, ", ".join(missing)))
    out = dict((k, d[k]) for k in RELEASE_KEYS if k in d)
    out.update(name=name, sha256=_hex(d["sha256"], what + " sha256"),
               stream_sha256=_hex(d["stream_sha256"], what + " stream_sha256"))
    for k in ("size", "crc32", "stream_size"):
        if isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < 0:
            raise MirrorTreeError("%s: %s must be a non-negative integer, got %r" % (what, k, out[k]))
    return out, d["stream"]


def release_of(split):
    """(split id, the release index document, [(stream sha256, stream size, source path, name)]) of a split."""
    if not isinstance(split, dict):
        raise MirrorTreeError("split must be a dict (the k0s_split fact of the fleetsplit.k0s.split role)")
    if split.get("format") == "k3s":
        raise MirrorTreeError("split is a k3s split: pull distribution serves k0s releases (k0s_release) only")
    exe, exe_src = _entry(split.get("stripped_executable"), "k0s", "split stripped_executable")
    files, blobs = [], [(exe["stream_sha256"], exe["stream_size"], exe_src, "k0s")]
    for i, f in enumerate(split.get("files") or []):
        name = f.get("name") if isinstance(f, dict) else None
        try:
            check_name(name)
        except PayloadError as e:
            raise MirrorTreeError("split files[%d]: %s" % (i, e))
        entry, src = _entry(f, name, "split file %s" % name)
        files.append(entry)
        blobs.append((entry["stream_sha256"], entry["stream_size"], src, name))
    if not files:
        raise MirrorTreeError("split has no files: nothing to publish")
    machine = str(split.get("elf_machine") or "")
    doc = dict(format=TREE_FORMAT, k0s_version=split.get("k0s_version") or "", split_format=split.get("format") or "",
               elf_machine=machine, goarch=goarch(machine) or "", stripped_executable=exe,
               files=sorted(files, key=lambda e: e["name"]))
    if split.get("format") == "legacy" and split.get("pinned_mtime") is not None:
        doc["pinned_mtime"] = split["pinned_mtime"]
    return exe["sha256"], doc, blobs


def _json_bytes(doc):
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _real_dir(path, write):
    """``path`` must be a real directory (never a symlink, which could point the tree elsewhere); created when
    writing. Returns False when it does not exist (check mode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not write:
            return False
        os.makedirs(path, DIR_MODE)
        os.chmod(path, DIR_MODE)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise MirrorTreeError("refusing to publish into %s: it is %s, not a directory"
                              % (path, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"))
    return True


def _existing(path):
    """sha256 of the regular file at ``path``, None when absent; refuses other kinds."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise MirrorTreeError("refusing to replace %s: it is not a regular file" % path)
    return sha256_file(path)


def _tmp(final):
    return os.path.join(os.path.dirname(final), ".%s.tmp-%s" % (os.path.basename(final), os.urandom(6).hex()))


def _commit(tmp, final):
    os.chmod(tmp, FILE_MODE)
    os.rename(tmp, final)


def _copy_blob(src, final, sha, size, name):
    """Copy ``src`` to ``final`` (temp + rename), hashing while copying; refused unless size and sha256 match."""
    tmp = _tmp(final)
    h, n = hashlib.sha256(), 0
    try:
        with open(src, "rb") as inp, open(tmp, "xb") as out:
            for block in iter(lambda: inp.read(CHUNK), b""):
                h.update(block)
                n += len(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != sha or n != size:
            raise MirrorTreeError("controller cache stream %s (%s) has sha256 %s and %d bytes, but the split of the k0s "
                                  "executable in this run gives %s and %d: the cache was changed since; nothing was "
                                  "published for it. Run the fleetsplit.k0s.split role again" % (
                                      src, name, h.hexdigest(), n, sha, size))
        _commit(tmp, final)
        tmp = None
    except FileNotFoundError:
        raise MirrorTreeError("controller cache stream %s (%s) does not exist: run the fleetsplit.k0s.split role "
                              "again" % (src, name))
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def _write_file(final, data, write):
    """Write ``data`` to ``final`` when it differs; returns (changed, replaced an existing file)."""
    old = _existing(final)
    if old == hashlib.sha256(data).hexdigest():
        return False, False
    if write:
        tmp = _tmp(final)
        try:
            with open(tmp, "xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            _commit(tmp, final)
            tmp = None
        finally:
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
    return True, old is not None


def read_index(dest):
    """[{id, k0s_version, goarch}] of every readable ``releases/<id>.json`` in ``dest``, sorted; and the
    names of release files that are not (warnings)."""
    rel_dir = os.path.join(dest, "releases")
    out, bad = [], []
    if not os.path.isdir(rel_dir):
        return out, bad
    for e in sorted(os.listdir(rel_dir)):
        if e.startswith(".") or not e.endswith(".json"):
            continue
        rid = e[:-5]
        try:
            with open(os.path.join(rel_dir, e), "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
            if not HEX64.match(rid) or doc["stripped_executable"]["sha256"] != rid:
                raise ValueError("its name is not its stripped executable's sha256")
            out.append(dict(id=rid, k0s_version=str(doc.get("k0s_version") or ""), goarch=str(doc.get("goarch") or "")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            bad.append("%s: %s" % (os.path.join(rel_dir, e), err))
    out.sort(key=lambda r: (r["k0s_version"], r["goarch"], r["id"]))
    return out, bad


def publish(splits, dest, write=True):
    """Publish ``splits`` (payload_split results) into the tree at ``dest``.

    Returns {changed, blobs (written), replaced (blobs that had other bytes), kept, releases (written),
    index_changed, release_ids, warnings, before, after}; ``write=False`` (check mode) computes the same without
    writing (a source stream is still verified)."""
    if not isinstance(dest, str) or not os.path.isabs(dest) or any(ord(c) < 32 for c in dest):
        raise MirrorTreeError("dest must be an absolute path without control characters, got %r" % (dest,))
    dest = os.path.normpath(dest)
    res = dict(blobs=[], replaced=[], kept=[], releases=[], release_ids=[], index_changed=False, warnings=[])
    before, after = [], []
    plans = [release_of(s) for s in splits]
    dirs = [dest] + [os.path.join(dest, sub) for sub in ("blobs", os.path.join("blobs", "sha256"), "releases")]
    found = [_real_dir(d, False) for d in dirs]   # every one checked (each refuses a symlink), not just the first
    exists = all(found)
    blob_dir = os.path.join(dest, "blobs", "sha256")
    seen, copies = set(), []
    for rid, doc, blobs in plans:
        for sha, size, src, name in blobs:
            if sha in seen:
                continue
            seen.add(sha)
            final = os.path.join(blob_dir, sha)
            rel = "blobs/sha256/" + sha
            old = _existing(final) if exists else None
            if old is not None:
                before.append(rel if old == sha else "%s (other bytes, sha256 %s)" % (rel, old))
            after.append(rel)
            if old == sha:
                res["kept"].append(sha)
                continue
            # Every source is checked before the first blob is written (and again while it is copied).
            got = sha256_file(src) if os.path.isfile(src) else "(missing)"
            if got != sha:
                raise MirrorTreeError("controller cache stream %s (%s) has sha256 %s, but the split of the k0s executable "
                                      "in this run gives %s: the cache was changed since; nothing was published. Run "
                                      "the fleetsplit.k0s.split role again" % (src, name, got, sha))
            copies.append((src, final, sha, size, name))
            res["blobs"].append(sha)
            if old is not None:
                res["replaced"].append(sha)
                res["warnings"].append("replaced %s: it had other bytes (sha256 %s)" % (final, old))
    if write:   # the first change: every check above passed
        for d in dirs:
            _real_dir(d, True)
        exists = True
        for args in copies:
            _copy_blob(*args)
    for rid, doc, blobs in plans:
        final = os.path.join(dest, "releases", rid + ".json")
        if exists and _existing(final) is not None:
            before.append("releases/%s.json" % rid)
        after.append("releases/%s.json" % rid)
        changed, dummy = _write_file(final, _json_bytes(doc), write) if exists else (True, False)
        if changed:
            res["releases"].append(rid)
        res["release_ids"].append(rid)
    index, bad = read_index(dest) if exists else ([], [])
    res["warnings"] += ["left out of index.json: %s" % b for b in bad]
    known = set(r["id"] for r in index)
    for rid, doc, dummy in plans:
        if rid not in known:
            index.append(dict(id=rid, k0s_version=doc["k0s_version"], goarch=doc["goarch"]))
    index.sort(key=lambda r: (r["k0s_version"], r["goarch"], r["id"]))
    final = os.path.join(dest, "index.json")
    if exists and _existing(final) is not None:
        before.append("index.json")
    after.append("index.json")
    res["index_changed"] = _write_file(final, _json_bytes(dict(format=TREE_FORMAT, releases=index)), write)[0] \
        if exists else True
    res["changed"] = bool(res["blobs"] or res["releases"] or res["index_changed"])
    res["before"], res["after"] = sorted(set(before)), sorted(set(after))
    return res
