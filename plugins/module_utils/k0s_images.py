# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Airgap image bundles on a worker host: ``<k0s data dir>/images/<name>.tar``.

k0s's worker (pkg/component/worker/ocibundle.go, OCIBundleReconciler) imports every file in
``<data-dir>/images`` (pkg/config/cfgvars.go: OCIBundleDir), remembers each one by path and mtime (it
re-imports a file whose mtime changed) and unpins the images whose bundle files are gone. So this file:

- writes each wanted bundle with a stable mtime derived from its content (``stable_mtime_ns``): the same
  content keeps the same mtime on every run and host (no re-import), new content under the same name gets
  another one (re-imported);
- removes only bundles it placed earlier and no longer wants (k0s then unpins their images); the names it
  placed are kept in ``<data-dir>/.fleetsplit-images.json``. Files it did not place are never touched.

Nothing of ours but the finished bundles is ever in images/: k0s tries to import every file there (no
filter on names) and re-reads the directory 10 s after any change in it (an fsnotify watcher with a
debouncer), so a record or a half-written temporary file there would be imported or fail to. Temporary
files and the record live in the parent directory (the data dir, the same file system) instead.

Standard library only, no Ansible import, Python 3.6 syntax.
"""

import json
import os
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    HostFsError, atomic_write, check_dir_chain, fsync_dir, lstat_or_none, make_dirs, set_owner_mode, tmp_name,
    unlink_quietly)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import check_bundle_members
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import check_name
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.streams import inflate_gzip_member
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_plan import file_state

RECORD = ".fleetsplit-images.json"   # in the parent of images/, see above
RECORD_FORMAT = 1
MTIME_BASE = 1000000000   # 2001-09-09: clearly not a real write time, still a positive 32-bit time_t


class ImageError(Exception):
    """A refusal or failure, with a message that names the file and what to do."""


def check_image_name(name, what="k0s_airgap_bundles"):
    """A plain base name ending in ``.tar`` (k0s imports every file in images/; we only place tar bundles)."""
    try:
        check_name(name)
    except PayloadError as e:
        raise ImageError("%s: %s; use a plain file name ending in .tar" % (what, e))
    if not name.endswith(".tar") or name == ".tar" or name.startswith("."):
        raise ImageError("%s: %r is not a plain file name ending in .tar (k0s imports every file in images/, "
                         "so only tar bundles with visible names are placed there); rename the file" % (what, name))
    return name


def stable_mtime_ns(sha256):
    """The mtime a bundle with this content gets: the same on every run and host, different for other content."""
    return (MTIME_BASE + int(sha256[:7], 16)) * 1000000000


def check_wanted(wanted):
    """``[{name, size, sha256, crc32?}]`` -> {name: item}; refuses bad names, duplicates, malformed items."""
    out = {}
    for i, w in enumerate(wanted):
        if not isinstance(w, dict) or not isinstance(w.get("name"), str):
            raise ImageError("images[%d] must be a dict with name, size and sha256" % i)
        name = check_image_name(w["name"])
        if name in out:
            raise ImageError("images: %s is listed twice (two bundles with the same base name would overwrite "
                             "each other in images/); rename one" % name)
        sha = str(w.get("sha256") or "").lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ImageError("images: %s has no valid sha256" % name)
        try:
            size = int(w.get("size"))
        except (TypeError, ValueError):
            raise ImageError("images: %s has no integer size" % name)
        out[name] = dict(w, name=name, sha256=sha, size=size)
    return out


def record_path(images_dir):
    return os.path.join(os.path.dirname(os.path.normpath(images_dir)), RECORD)


def read_record(images_dir):
    """{name: {size, sha256, mtime_ns}} of the bundles fleetsplit placed; {} when there is no record.
    A record that is not ours (not a regular file, unreadable JSON) is an error: we would not know what we placed."""
    path = record_path(images_dir)
    st = lstat_or_none(path)
    if st is None:
        return {}
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("%s is not a regular file; remove it (fleetsplit keeps the names of the bundles it "
                         "placed there)" % path)
    try:
        with open(path) as f:
            data = json.load(f)
        placed = data["placed"]
        if not isinstance(placed, dict):
            raise ValueError("placed is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise ImageError("%s is not a fleetsplit record (%s); remove it, then run again (files in images/ are "
                         "then treated as not placed by fleetsplit and kept)" % (path, e))
    for name in placed:
        check_image_name(name, what=path)
    return placed


def query(images_dir, wanted, verify=False):
    """What the host lacks (read only).

    Returns ``{missing, present, stale, foreign, record_changed}``: ``missing`` wanted names whose file is
    absent or differs (size, sha256, or mtime != the stable mtime), ``stale`` names fleetsplit placed that
    are no longer wanted and still exist (to remove), ``foreign`` other files in images/ (kept).
    """
    want = check_wanted(wanted)
    st = lstat_or_none(images_dir)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise ImageError("%s is not a directory (k0s imports image bundles from it); move it away" % images_dir)
    try:
        check_dir_chain(images_dir)
    except HostFsError as e:
        raise ImageError(str(e))
    record = read_record(images_dir)
    names = sorted(os.listdir(images_dir)) if st is not None else []
    missing, present, reasons = [], [], {}
    for name, w in sorted(want.items()):
        reason = file_state(os.path.join(images_dir, name), w["size"], w["sha256"], record.get(name), verify,
                            stable_mtime_ns(w["sha256"]))
        if reason is None:
            present.append(name)
        else:
            missing.append(name)
            reasons[name] = reason
    stale, replaced = [], []
    for n in sorted(record):
        if n in want or lstat_or_none(os.path.join(images_dir, n)) is None:
            continue
        r = record[n] if isinstance(record[n], dict) else {}
        try:
            ours = file_state(os.path.join(images_dir, n), int(r.get("size", -1)), r.get("sha256"), r, verify,
                              r.get("mtime_ns")) is None
        except (TypeError, ValueError):
            ours = False
        # Someone replaced a bundle we placed: no longer ours, kept like any foreign file.
        (stale if ours else replaced).append(n)
    foreign = [n for n in names if n not in want and (n not in record or n in replaced)]
    new_record = _record_for(want)
    return {"missing": missing, "present": present, "stale": stale, "foreign": foreign, "reasons": reasons,
            "record_changed": record != new_record, "up_to_date": not missing and not stale and record == new_record}


def _record_for(want):
    return dict((n, {"size": w["size"], "sha256": w["sha256"], "mtime_ns": stable_mtime_ns(w["sha256"])})
                for n, w in want.items())


def _write_record(images_dir, placed):
    body = json.dumps({"format": RECORD_FORMAT, "placed": placed}, indent=2, sort_keys=True) + "\n"
    atomic_write(record_path(images_dir), body.encode(), 0o644)


def apply(images_dir, wanted, bundle=None, members=None, verify=False, check_mode=False, keep_stale=False):
    """Make images/ hold exactly the wanted bundles fleetsplit places (foreign files kept).

    ``keep_stale`` places what is missing but keeps the bundles no longer wanted (and their record), so a
    release staged before an upgrade, or rolled back to, still finds its images pinned; a later run
    without it removes them.

    ``bundle`` is one file on the host with a gzip stream per missing name, ``members`` its table
    ``[{name, offset, size}]``. Every check (names, directory chain, record, bundle table covers the missing
    names, each item has a crc32) runs before the first change. Returns the query plus ``changed``.
    """
    q = query(images_dir, wanted, verify)
    want = check_wanted(wanted)
    old = read_record(images_dir)
    if keep_stale:
        kept = dict((n, old[n]) for n in q["stale"])
        kept.update(_record_for(want))
        q["stale"], q["kept_stale"] = [], q["stale"]
        q["changed"] = bool(q["missing"]) or kept != old
    else:
        kept = _record_for(want)
        q["changed"] = not q["up_to_date"]
    if q["missing"]:
        if check_mode and bundle is None:
            return q
        if bundle is None or members is None:
            raise ImageError("%s lacks %s but no bundle was given (the install role sends one)"
                             % (images_dir, ", ".join(q["missing"])))
        if not check_mode:
            try:
                table = check_bundle_members(members, os.path.getsize(bundle))
            except PayloadError as e:
                raise ImageError("bundle %s: %s" % (bundle, e))
            except OSError as e:
                raise ImageError("bundle %s: %s" % (bundle, e.strerror))
            lacking = [n for n in q["missing"] if n not in table]
            if lacking:
                raise ImageError("bundle %s does not hold %s, which %s lacks" % (bundle, ", ".join(lacking), images_dir))
            for n in q["missing"]:
                if not isinstance(want[n].get("crc32"), int):
                    raise ImageError("images: %s has no crc32 (take the images list from the image_bundles module)" % n)
    for name in q["missing"] + q["stale"]:
        st = lstat_or_none(os.path.join(images_dir, name))
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise ImageError("%s is not a regular file (a symlink or directory where a bundle fleetsplit manages "
                             "belongs); move it away, then run again" % os.path.join(images_dir, name))
    if check_mode or not q["changed"]:
        return q
    make_dirs(images_dir, 0o755)
    staging = os.path.dirname(os.path.normpath(images_dir))
    new = kept
    # Recorded first (old and new names): a run killed half-way still knows every file it may have placed.
    merged = dict(old)
    merged.update(new)
    if merged != old:
        _write_record(images_dir, merged)
    for name in q["missing"]:
        w = want[name]
        offset, size = table[name]
        final = os.path.join(images_dir, name)
        tmp = tmp_name(staging, name)   # outside images/: k0s would try to import a half-written file
        try:
            inflate_gzip_member(bundle, tmp, w["size"], w["crc32"], w["sha256"], 0o644,
                                stable_mtime_ns(w["sha256"]), offset, size)
            set_owner_mode(tmp, 0o644)
            os.utime(tmp, ns=(stable_mtime_ns(w["sha256"]),) * 2)   # chown/chmod leave it, but be explicit
            os.rename(tmp, final)
        except PayloadError as e:
            unlink_quietly(tmp)
            raise ImageError("%s: the bundle's stream for it is unusable (%s); nothing else was removed" % (final, e))
        except BaseException:
            unlink_quietly(tmp)
            raise
    for name in q["stale"]:
        unlink_quietly(os.path.join(images_dir, name))   # k0s unpins the images of a bundle that disappeared
    _write_record(images_dir, new)
    fsync_dir(images_dir)
    fsync_dir(staging)
    return q
