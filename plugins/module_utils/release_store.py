# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The release store of k0s_release on a managed host: its layout (releases/<id>/, current, previous),
the description of a release (Item, build_items) and its id. Standard library only, no Ansible import,
Python 3.6 syntax: it travels with every module run."""

import hashlib
import json
import os
import re
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import path_problem
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    HostFsError,
    check_dir_stat,
    lstat_or_none,
    make_dirs,
)

EXE = "k0s"             # display name of the executable in `missing`, `sources`, diffs
EXE_REL = "bin/k0s"
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ReleaseError(HostFsError):
    """A release the module refuses to plan, build or switch; the message says why."""


# --------------------------------------------------------------------------- directories the store owns

def ensure_real_dir(path, check_mode, changes, mode=0o755):
    """A directory the store owns: must be a real directory, never a symlink."""
    st = lstat_or_none(path)
    if st is None:
        if not check_mode:
            make_dirs(path, mode)
        changes.append("created directory %s" % path)
        return
    if stat.S_ISLNK(st.st_mode):
        raise ReleaseError("refusing to write through %s: it is a symlink fleetsplit did not create "
                           "(the store only holds real directories)" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise ReleaseError("%s is in the way: expected a directory" % path)
    check_dir_stat(path, st)


# --------------------------------------------------------------------------- path parameters

# The module's path parameters and the install role variables that feed them (messages name the latter).
ROLE_VARS = dict(store_dir="k0s_store_dir", bin_dir="k0s_bin_dir", libexec_dir="k0s_libexec_dir",
                 data_dir="k0s_data_dir", streams_dir="streams_dir", bundle="bundle")


def check_path_param(key, value):
    """A path parameter must be absolute and already normal (no '.', '..', '//' or trailing '/'), without
    control characters: the module writes as root where it points, so it guesses nothing."""
    problem = path_problem(ROLE_VARS.get(key, key), value, plain=False)
    if problem:
        raise ReleaseError(problem)
    return value


def _inside(a, b):
    """``a`` is ``b`` or below it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def _resolved(path, leaf_is_ours):
    """``path`` with symlinks in its existing part resolved; for paths that are our own symlinks
    (libexec_dir, bin_dir/k0s) only the parent is resolved."""
    if leaf_is_ours:
        return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    return os.path.realpath(path)


def check_layout(p):
    """Refuse path parameters that contain each other: e.g. libexec_dir = <data_dir>/bin makes every binary a
    symlink to itself, bin_dir inside the store or libexec_dir writes links into a release."""
    store, libexec, bin_dir, data_dir = p["store_dir"], p["libexec_dir"], p["bin_dir"], p["data_dir"]
    owned = [("store_dir", store, False, "the release store"),
             ("libexec_dir", libexec, True, "the libexec symlink"),
             ("bin_dir", os.path.join(bin_dir, EXE), True, "the k0s symlink <bin_dir>/k0s")]
    if p.get("link_data_dir", True):
        owned.append(("data_dir", os.path.join(data_dir, "bin"), False, "<data_dir>/bin (links k0s runs)"))
    streams = p.get("streams_dir")
    if streams:
        owned.append(("streams_dir", streams, False, "the upload directory"))
    for i, (ka, a, la, da) in enumerate(owned):
        for kb, b, lb, db in owned[i + 1:]:
            if ka == "streams_dir" or kb == "streams_dir":
                if "store_dir" in (ka, kb):
                    continue   # uploads live in the store by default
            for x, y in ((a, b), (_resolved(a, la), _resolved(b, lb))):
                if _inside(x, y) or _inside(y, x):
                    raise ReleaseError(
                        "%s=%s and %s=%s overlap: %s (%s) %s %s (%s), so the module would write its links "
                        "into its own files; choose paths that do not contain each other"
                        % (ROLE_VARS[ka], p[ka], ROLE_VARS[kb], p[kb], da, x,
                           "is" if x == y else "contains" if _inside(y, x) else "lies inside", db, y))
    # bin_dir itself must not be reached through the store or the libexec symlink.
    for k, other in (("store_dir", store), ("libexec_dir", libexec)):
        if _inside(bin_dir, other):
            raise ReleaseError("%s=%s lies inside %s=%s; choose a k0s_bin_dir outside it"
                               % (ROLE_VARS["bin_dir"], bin_dir, ROLE_VARS[k], other))


# --------------------------------------------------------------------------- the release description

class Item(object):
    """One file of a release: ``rel`` is ``bin/k0s`` or ``libexec/<name>``."""

    def __init__(self, name, rel, size, sha256, crc32):
        self.name, self.rel, self.size, self.sha256, self.crc32 = name, rel, size, sha256, crc32

    @property
    def stream(self):
        return "%s.gz" % self.name


def _int_field(d, key, what):
    v = d.get(key)
    if isinstance(v, bool) or v is None:
        raise ReleaseError("%s: %s must be an integer" % (what, key))
    try:
        v = int(v)
    except (TypeError, ValueError):
        raise ReleaseError("%s: %s must be an integer, got %r" % (what, key, v))
    if v < 0:
        raise ReleaseError("%s: %s must not be negative" % (what, key))
    return v


def _item_from(d, name, rel, what):
    if not isinstance(d, dict):
        raise ReleaseError("%s must be a dict with size, sha256 and crc32" % what)
    sha = str(d.get("sha256") or "").lower()
    if not SHA_RE.match(sha):
        raise ReleaseError("%s: sha256 must be 64 hex digits" % what)
    return Item(name, rel, _int_field(d, "size", what), sha, _int_field(d, "crc32", what))


def check_name(name):
    if not isinstance(name, str) or not name:
        raise ReleaseError("file name must be a non-empty string, got %r" % (name,))
    if "\x00" in name or "/" in name or name in (".", "..") or ".." in name.split("/"):
        raise ReleaseError("refusing file name %r: names must be plain base names (no '/', '..' or NUL)" % name)
    if not NAME_RE.match(name):
        raise ReleaseError("refusing file name %r: only letters, digits and ._+- are allowed, "
                           "and it must not start with a dot" % name)
    if name == EXE:
        raise ReleaseError("refusing embedded file name 'k0s': it would collide with the executable")
    return name


def build_items(files, executable):
    items = {}
    items[EXE_REL] = _item_from(executable, EXE, EXE_REL, "executable")
    for i, f in enumerate(files or []):
        if not isinstance(f, dict):
            raise ReleaseError("files[%d] must be a dict with name, size, sha256 and crc32" % i)
        name = check_name(f.get("name"))
        rel = "libexec/" + name
        if rel in items:
            raise ReleaseError("file name %r is listed twice" % name)
        items[rel] = _item_from(f, name, rel, "files[%d] (%s)" % (i, name))
    return items


def compute_release_id(items, k0s_version, pinned_mtime):
    h = hashlib.sha256()
    for rel in sorted(items):
        h.update(("%s %s\n" % (rel, items[rel].sha256)).encode())
    if pinned_mtime is not None:
        h.update(("mtime %d\n" % pinned_mtime).encode())
    version = k0s_version or "unknown"
    version = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    return "%s-%s" % (version, h.hexdigest()[:12])


def check_release_id(rid):
    if not rid or not NAME_RE.match(rid) or rid in (".", ".."):
        raise ReleaseError("invalid release_id %r: letters, digits and ._+- only, not starting with a dot" % (rid,))
    return rid


# --------------------------------------------------------------------------- the store

class Store(object):
    """Paths of the store and the links it manages, from the module parameters (a dict)."""

    def __init__(self, p):
        self.root = p["store_dir"]
        self.releases = os.path.join(self.root, "releases")
        self.backup = os.path.join(self.root, "backup")
        self.current_link = os.path.join(self.root, "current")
        self.previous_link = os.path.join(self.root, "previous")
        self.rollback_record = os.path.join(self.root, "rolled-back.json")
        self.bin_dir = p["bin_dir"]
        self.libexec_dir = p["libexec_dir"]
        self.data_bin = os.path.join(p["data_dir"], "bin")
        self.streams_dir = p["streams_dir"] or os.path.join(self.root, "incoming")
        self.exe_link = os.path.join(self.bin_dir, EXE)
        self.exe_link_target = os.path.join(self.current_link, EXE_REL)
        self.libexec_link_target = os.path.join(self.current_link, "libexec")

    def release_dir(self, rid):
        return os.path.join(self.releases, rid)

    def pointer(self, link):
        """Release id a store pointer (current/previous) names, or None."""
        st = lstat_or_none(link)
        if st is None:
            return None
        if not stat.S_ISLNK(st.st_mode):
            raise ReleaseError("%s should be a symlink made by fleetsplit, found something else; "
                               "move it away" % link)
        target = os.readlink(link)
        parts = target.split("/")
        if len(parts) != 2 or parts[0] != "releases" or not NAME_RE.match(parts[1]):
            raise ReleaseError("%s points to %r, which fleetsplit did not write; move it away" % (link, target))
        return parts[1]

    def list_releases(self):
        if lstat_or_none(self.releases) is None:
            return []
        out = []
        for e in sorted(os.listdir(self.releases)):
            if e.startswith("."):
                continue
            st = lstat_or_none(os.path.join(self.releases, e))
            if st is not None and stat.S_ISDIR(st.st_mode):
                out.append(e)
        return out

    def manifest(self, rid):
        path = os.path.join(self.release_dir(rid), MANIFEST)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                return data
        except (OSError, ValueError):
            pass
        return None
