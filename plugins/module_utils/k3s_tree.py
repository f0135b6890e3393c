# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""k3s's rules for its data tree ``<data-dir>/data/<hash>/``, as the host library k3s_data applies them: the
members payload_split lists (checked like k3s's untar would take them, pkg/untar/untar.go validRelPath, plus no
``.``/``..`` components and no link leading out of the tree), k3s's own check of a tree (pkg/dataverify) and the
CNI links it makes (cmd/k3s/main.go, extract).

Standard library only, no Ansible import, Python 3.6 syntax: it travels with every module run.
"""

import os
import posixpath
import re

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import control_char
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
TYPES = ("file", "dir", "symlink")


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


def check_member_path(path, what):
    """k3s's validRelPath (no "", no backslash, no leading "/", no "../") and also no "." or ".." components:
    the relative path of a member below data/<hash>, as payload_split normalises it (no leading "./")."""
    if not isinstance(path, str) or not path:
        raise K3sDataError("%s: path must be a non-empty string" % what)
    bad = control_char(path)
    if bad or "\\" in path or path.startswith("/") or any(c in ("", ".", "..") for c in path.split("/")):
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
        item = {"path": path, "type": kind, "mode": 0o755 if kind == "dir" else 0o777}   # k3s: dirs 0755
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
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise K3sDataError("%s: link target %r leads out of data/<hash>; refusing" % (what, target))
            item["target"] = target
        out[path] = item
    for path in out:
        parent = posixpath.dirname(path)
        while parent:
            if parent in out and out[parent]["type"] != "dir":
                raise K3sDataError("members: %s lies below %s, which is a %s, not a directory"
                                   % (path, parent, out[parent]["type"]))
            parent = posixpath.dirname(parent)
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

def _field_map(path, key, val):
    """pkg/dataverify fileMapFields: whitespace-split lines, {fields[key]: fields[val]}, later lines win."""
    out = {}
    with open(path, "rb") as f:
        for raw in f.read().decode("utf-8", "replace").splitlines():
            fields = raw.split()
            if not fields:
                continue
            if len(fields) <= max(key, val):
                raise K3sDataError("%s: line %r has too few fields" % (path, raw))
            out[fields[key]] = fields[val]
    return out


def dataverify(bin_dir):
    """Problems k3s's dataverify.Verify finds in ``bin_dir`` ([] when it accepts it)."""
    problems = []
    for name, key, val in ((".sha256sums", 1, 0), (".links", 0, 1)):
        try:
            entries = _field_map(os.path.join(bin_dir, name), key, val)
        except (OSError, K3sDataError) as e:
            problems.append("%s: %s" % (name, getattr(e, "strerror", None) or e))
            continue
        if not entries:
            problems.append("%s: no entries" % name)
        for rel, expected in sorted(entries.items()):
            path = os.path.join(bin_dir, rel)
            try:
                actual = sha256_file(path) if key == 1 else os.readlink(path)
            except (OSError, PayloadError):
                actual = ""
            if actual != expected:
                problems.append("%s: %s not as %s lists it" % (rel, "hash" if key == 1 else "link", name))
    return problems


def cni_names(members):
    """Names k3s links in <data>/cni: every bin/<name> that is a symlink to exactly ``cni``."""
    return sorted(posixpath.basename(p) for p, m in members.items()
                  if m["type"] == "symlink" and posixpath.dirname(p) == "bin" and m["target"] == "cni")


def cni_links(data, tree, names):
    """{link path: target} k3s makes in <data>/cni for ``tree``: cni itself and ``names``."""
    target = os.path.join(tree, "bin", "cni")
    return dict((os.path.join(data, "cni", n), target) for n in ["cni"] + list(names))
