# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""k3s's rules for its data tree ``<data-dir>/data/<hash>/``, in one place for both sides: the host library
k3s_data (building the tree from payload_split's members) and the controller split (payload/k3s.py reading the
embedded archive, payload/k3s_tree.py writing a data dir). The rules: member paths as k3s's untar takes them
(pkg/untar/untar.go validRelPath, plus our stricter plain-path rule and no link leading out of the tree), k3s's
own check of a tree (pkg/dataverify: ``bin/.sha256sums`` and ``bin/.links``), the tree matching the members, the
extraction lock ``data/.lock`` (pkg/flock), the ``<hash>-tmp`` build renamed into place, the CNI links and the
``current``/``previous`` rotation (cmd/k3s/main.go, extract).

Standard library only, no Ansible import, Python 3.6 syntax: it travels with every module run.
"""

import fcntl
import os
import posixpath
import re
import stat

# Relative imports, of files that import nothing absolute: the controller (payload/k3s.py, the k0s-payload CLI
# that loads module_utils as a plain package) shares this file.
from .k0s_hostfs import (HostFsError, atomic_symlink, exchange_paths, fsync_dir, lstat_or_none, make_dirs,
                         remove_tree_or_file)
from .k0s_settings import control_char
from .payload.errors import PayloadError
from .payload.fsio import sha256_file

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
TYPES = ("file", "dir", "symlink")
TREE_MODE = 0o755                  # pkg/untar: directories 0755 whatever the tar header says
LISTS = {".sha256sums": (1, 0), ".links": (0, 1)}   # pkg/dataverify: (field of the path, field of the value)


class K3sDataError(HostFsError):
    """A refusal or failure; the message names the path or value and what to do."""


def sha_value(value, what):
    sha = str(value or "").lower()
    if not SHA_RE.match(sha):
        raise K3sDataError("%s must be 64 hex digits (a sha256), got %r" % (what, value))
    return sha


def _int(value, what):
    if isinstance(value, bool) or value is None:
        raise K3sDataError("%s must be an integer" % what)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise K3sDataError("%s must be an integer, got %r" % (what, value))
    if value < 0:
        raise K3sDataError("%s must not be negative" % what)
    return value


# --------------------------------------------------------------------------- member paths

def valid_rel_path(name):
    """k3s's validRelPath (pkg/untar): no empty name, no backslash, no leading "/", no "../"."""
    return bool(name) and "\\" not in name and not name.startswith("/") and "../" not in name


def tar_member_path(name):
    """A tar member's name as a path below data/<hash> (``./`` and a trailing ``/`` dropped; "" for the root)."""
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    return "" if name == "." else name


def plain_path(path):
    """validRelPath and our stricter rule: no "", "." or ".." component and no control character (two spellings
    of one file, or a name a terminal would mangle)."""
    return (isinstance(path, str) and valid_rel_path(path) and not control_char(path)
            and not any(c in ("", ".", "..") for c in path.split("/")))


def target_escapes(path, target):
    """True when the symlink ``path`` -> ``target`` leads out of data/<hash> (absolute, climbing above it, empty,
    or with a control character)."""
    if not isinstance(target, str) or not target or target.startswith("/") or control_char(target):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


def non_dir_parent(path, members):
    """The first (top-down) parent of ``path`` that ``members`` ({path: {"type"}}) lists as other than a directory:
    (parent, type), or None. Nothing may lie below a file or a symlink (a write through a link could leave the tree)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        kind = members.get(parent, {}).get("type", "dir")
        if kind != "dir":
            return parent, kind
    return None


def check_member_path(path, what):
    """A member's path as payload_split lists it (normalised, no leading "./"): ``plain_path`` or K3sDataError."""
    if not isinstance(path, str) or not path:
        raise K3sDataError("%s: path must be a non-empty string" % what)
    if not plain_path(path):
        raise K3sDataError("%s: %r escapes or is not a plain path below data/<hash> (k3s refuses such a tar "
                           "member); split the executable again with payload_split" % (what, path))
    return path


def check_members(members):
    """payload_split's ``members`` -> {path: member}; every refusal before any change."""
    if not isinstance(members, list) or not members:
        raise K3sDataError("members must be the non-empty list payload_split returns for a k3s executable")
    out = {}
    for i, m in enumerate(members):
        what = "members[%d]" % i
        if not isinstance(m, dict):
            raise K3sDataError("%s must be a dict with path, type and mode" % what)
        path = check_member_path(m.get("path"), what)
        what = "members[%d] (%s)" % (i, path)
        kind = m.get("type")
        if kind not in TYPES:
            raise K3sDataError("%s: type must be one of %s, got %r (k3s refuses other tar entries)" % (what, ", ".join(TYPES), kind))
        if path in out:
            raise K3sDataError("%s is listed twice" % what)
        item = {"path": path, "type": kind, "mode": TREE_MODE if kind == "dir" else 0o777}
        if kind == "file":
            item["mode"] = _int(m.get("mode"), what + " mode") & 0o777   # pkg/untar: the header's permission bits
            item["size"] = _int(m.get("size"), what + " size")
            item["sha256"] = sha_value(m.get("sha256"), what + " sha256")
            if m.get("crc32") is not None:
                item["crc32"] = _int(m.get("crc32"), what + " crc32")
        elif kind == "symlink":
            target = m.get("target")
            if not isinstance(target, str) or not target or control_char(target):
                raise K3sDataError("%s: a symlink needs a plain target, got %r" % (what, target))
            if target_escapes(path, target):
                raise K3sDataError("%s: link target %r leads out of data/<hash>; refusing" % (what, target))
            item["target"] = target
        out[path] = item
    for path in out:
        bad = non_dir_parent(path, out)
        if bad:
            raise K3sDataError("members: %s lies below %s, which is a %s, not a directory" % ((path,) + bad))
    for need in ("bin/k3s", "bin/.sha256sums", "bin/.links"):
        if need not in out or out[need]["type"] == "dir":
            raise K3sDataError("members lack %s: k3s would not accept (or not find) the tree; is this the "
                               "payload_split result of a k3s executable?" % need)
    return out


def check_executable(executable):
    if not isinstance(executable, dict):
        raise K3sDataError("executable must be payload_split's stripped_executable (size, sha256, crc32)")
    out = {"size": _int(executable.get("size"), "executable size"),
           "sha256": sha_value(executable.get("sha256"), "executable sha256")}
    if executable.get("crc32") is not None:
        out["crc32"] = _int(executable.get("crc32"), "executable crc32")
    return out


# --------------------------------------------------------------------------- k3s's rules

class ShortLine(ValueError):
    """A line of .sha256sums or .links with fewer fields than k3s reads (``line``): k3s refuses the tree."""

    def __init__(self, line):
        ValueError.__init__(self, "line %r has too few fields" % line)
        self.line = line


def verify_list(name, body, actual):
    """pkg/dataverify for ``bin/<name>`` (``.sha256sums`` or ``.links``) whose bytes are ``body``: its entries
    (fileMapFields: whitespace-split lines, blank ones skipped, later lines win) and the mismatches
    [(path relative to bin/, listed value, ``actual(path)``)] sorted by path. Raises ShortLine."""
    key, val = LISTS[name]
    entries = {}
    for line in body.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) <= max(key, val):
            raise ShortLine(line)
        entries[fields[key]] = fields[val]
    bad = []
    for rel, expected in sorted(entries.items()):
        found = actual(rel)
        if found != expected:
            bad.append((rel, expected, found))
    return entries, bad


def _on_disk(bin_dir, name):
    """What k3s compares on disk: the sha256 of the file a path opens (following links), or a link's target."""
    def actual(rel):
        path = os.path.join(bin_dir, rel)
        try:
            return sha256_file(path) if name == ".sha256sums" else os.readlink(path)
        except (OSError, PayloadError):
            return ""
    return actual


def dataverify(bin_dir):
    """Problems k3s's dataverify.Verify finds in ``bin_dir`` ([] when it accepts it)."""
    problems = []
    for name in sorted(LISTS, reverse=True):     # .sha256sums, then .links
        try:
            with open(os.path.join(bin_dir, name), "rb") as f:
                entries, bad = verify_list(name, f.read(), _on_disk(bin_dir, name))
        except (OSError, ShortLine) as e:
            problems.append("%s: %s" % (name, getattr(e, "strerror", None) or e))
            continue
        if not entries:
            problems.append("%s: no entries" % name)
        problems += ["%s: %s not as %s lists it" % (rel, "hash" if name == ".sha256sums" else "link", name)
                     for rel, dummy, dummy2 in bad]
    return problems


def tree_problems(root, members, hash_of=None):
    """{relative path: reason} where the tree at ``root`` is not exactly ``members`` ({path: member} as
    check_members makes them: type, mode, size, sha256, target), extra entries included; {} when it is;
    None when there is no tree. ``hash_of(path, lstat)`` may cache hashes (default: sha256 of the file)."""
    hash_of = hash_of or (lambda path, st: sha256_file(path))
    st = lstat_or_none(root)
    if st is None:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return {".": "not a directory"}
    out = {}
    for path, m in sorted(members.items()):
        full = os.path.join(root, path)
        est = lstat_or_none(full)
        if est is None:
            out[path] = "missing"
        elif m["type"] == "dir":
            if not stat.S_ISDIR(est.st_mode):
                out[path] = "not a directory"
        elif m["type"] == "symlink":
            if not stat.S_ISLNK(est.st_mode) or os.readlink(full) != m["target"]:
                out[path] = "not a link to %s" % m["target"]
        elif not stat.S_ISREG(est.st_mode):
            out[path] = "not a regular file"
        elif est.st_size != m["size"]:
            out[path] = "size %d, expected %d" % (est.st_size, m["size"])
        elif hash_of(full, est) != m["sha256"]:
            out[path] = "sha256 mismatch"
        elif stat.S_IMODE(est.st_mode) != m["mode"]:   # last: a "mode" reason means the content is right
            out[path] = "mode %04o, expected %04o" % (stat.S_IMODE(est.st_mode), m["mode"])
    implied = set()
    for path in members:
        parent = posixpath.dirname(path)
        while parent:
            implied.add(parent)
            parent = posixpath.dirname(parent)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel not in members and rel not in implied:
                out[rel] = "not in the archive"
    return out


# --------------------------------------------------------------------------- building data/<hash>

class Lock(object):
    """k3s's own extraction lock (pkg/flock: flock LOCK_EX on <data-dir>/data/.lock), never through a link."""

    def __init__(self, data):
        self.path = os.path.join(data, ".lock")

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def fresh_tmp(final):
    """k3s's temporary tree ``<hash>-tmp``, empty, 0755 (a leftover of any type is removed first, as k3s does;
    a planted link is removed, never written through)."""
    tmp = final + "-tmp"
    remove_tree_or_file(tmp)
    os.mkdir(tmp, TREE_MODE)
    os.chmod(tmp, TREE_MODE)
    return tmp


def install_tree(tmp, final, aside):
    """Rename ``tmp`` to ``final``; an existing ``final`` goes to ``aside`` first (swapped in one renameat2 where
    the kernel can). Returns ``aside`` when something was moved there, else None."""
    moved = None
    if lstat_or_none(final) is not None:
        if exchange_paths(tmp, final):
            os.rename(tmp, aside)
        else:
            os.rename(final, aside)
            os.rename(tmp, final)
        moved = aside
    else:
        os.rename(tmp, final)
    fsync_dir(os.path.dirname(final))
    return moved


# --------------------------------------------------------------------------- links

def cni_names(members):
    """Names k3s links in <data>/cni: every bin/<name> that is a symlink to exactly ``cni``."""
    return sorted(posixpath.basename(p) for p, m in members.items()
                  if m["type"] == "symlink" and posixpath.dirname(p) == "bin" and m["target"] == "cni")


def cni_links(data, tree, names):
    """{link path: target} k3s makes in <data>/cni for ``tree``: cni itself and ``names``."""
    target = os.path.join(tree, "bin", "cni")
    return dict((os.path.join(data, "cni", n), target) for n in ["cni"] + list(names))


def readlink_or_none(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def stale_links(wanted):
    """The paths of ``wanted`` ({link path: target}) that are not a symlink to their target, sorted."""
    return sorted(path for path, target in wanted.items() if readlink_or_none(path) != target)


def foreign_entries(paths):
    """The ``paths`` that exist and are not symlinks (k3s keeps only links there): never replaced silently."""
    return [p for p in sorted(paths) if lstat_or_none(p) is not None and not os.path.islink(p)]


def rotate(data, tree, links):
    """k3s's switch to ``tree``: ``current`` renamed to ``previous`` and a new ``current`` (each link replaced
    atomically, so there is no moment without one), then the CNI ``links`` ({path: target}) that differ."""
    current = os.path.join(data, "current")
    old = readlink_or_none(current)
    if old != tree:
        if old is not None:
            atomic_symlink(old, os.path.join(data, "previous"))
        atomic_symlink(tree, current)
    make_dirs(os.path.join(data, "cni"), TREE_MODE)
    for link in stale_links(links):
        atomic_symlink(links[link], link)
