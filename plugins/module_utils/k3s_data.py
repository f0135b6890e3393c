# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""k3s's data tree on a managed host, pre-staged so k3s never extracts its embedded archive itself.

k3s (cmd/k3s/main.go, extract) uses ``<data-dir>/data/<hash>/`` as it is whenever ``<that>/bin/k3s`` exists;
otherwise it takes the flock on ``<data-dir>/data/.lock``, untars into ``<hash>-tmp`` (pkg/untar/untar.go:
regular files with the tar mode's permission bits, directories 0755, symlinks as they are), checks
``bin/.sha256sums`` and ``bin/.links`` (pkg/dataverify/dataverify.go), renames the tree into place, links
``data/cni/cni`` and ``data/cni/<name>`` (every ``bin/<name>`` linking to ``cni``) to ``<tree>/bin/cni``, then
renames ``current`` to ``previous`` and points ``current`` at the tree. This file builds that same result from
the members listed by payload_split: contents the host already has in a verified tree are copied (never hard
linked), the others come inflated from one uploaded bundle (size, CRC-32 and sha256 checked). The executable
ships whole (it carries its own archive) and is kept by content in ``<store_dir>/executables/`` for rollback.

Standard library only, no Ansible import, Python 3.6 syntax: it travels with every module run.
"""

import json
import os
import re
import stat
import struct
import time

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    atomic_symlink, atomic_write, check_dir_chain, fsync_dir, lstat_or_none, make_dirs, remove_tree_or_file,
    set_owner_mode, tmp_name, unlink_quietly)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import path_problem
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k3s_tree import (
    SHA_RE, TREE_MODE, K3sDataError, Lock, check_executable, check_members, cni_links, cni_names, dataverify,
    foreign_entries, fresh_tmp, install_tree, rotate, sha_value, stale_links, tree_problems)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import check_bundle_members
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.streams import inflate_gzip_member
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_build import copy_verified as copy_checked

EXE = "k3s"                       # the executable's name in `missing` and in the bundle
LINK_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")
BACKUP = ".fleetsplit-backup"     # tampered trees are moved here, below <data_dir>/data
RECORD = "k3s-data.json"          # <store_dir>: which executable extracted which data hash (for rollback)
RECORD_FORMAT = 1
ROLE_VARS = dict(data_dir="k3s_data_dir", bin_dir="k3s_bin_dir", store_dir="k3s_store_dir")


def _inside(a, b):
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_params(p):
    """Path options absolute and normal, and not inside each other's managed parts."""
    for key, var in sorted(ROLE_VARS.items()):
        problem = path_problem(var, p.get(key), plain=False)
        if problem:
            raise K3sDataError(problem)
    data = os.path.join(p["data_dir"], "data")
    for a, b in (("store_dir", "bin_dir"), ("store_dir", "data_dir"), ("bin_dir", "data_dir")):
        pa = p[a] if a != "data_dir" else data
        pb = p[b] if b != "data_dir" else data
        if _inside(pa, pb) or _inside(pb, pa):
            raise K3sDataError("%s=%s and %s=%s overlap (%s, %s): choose paths that do not contain each other"
                               % (ROLE_VARS[a], p[a], ROLE_VARS[b], p[b], pa, pb))
    for name in p.get("cli_links") or []:
        if not isinstance(name, str) or not LINK_NAME_RE.match(name) or name == EXE:
            raise K3sDataError("cli_links: %r is not a plain command name (letters, digits, ._+-; not k3s)" % (name,))


# --------------------------------------------------------------------------- reading the host

class Host(object):
    """What one host has, for one wanted tree and executable. Reads only."""

    def __init__(self, p):
        check_params(p)
        self.p = p
        self.data = os.path.join(p["data_dir"], "data")
        self.exe_path = os.path.join(p["bin_dir"], EXE)
        self.exe_store = os.path.join(p["store_dir"], "executables")
        self.record_path = os.path.join(p["store_dir"], RECORD)
        self._hashes = {}
        for key in ("data_dir", "bin_dir", "store_dir"):
            check_dir_chain(p[key])

    def tree(self, data_hash):
        return os.path.join(self.data, data_hash)

    def hash_of(self, path, st=None):
        st = st or os.lstat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    def pointer(self, name):
        """The hash ``data/<name>`` (current, previous) points at, None when absent; refuses what k3s did not write."""
        link = os.path.join(self.data, name)
        st = lstat_or_none(link)
        if st is None:
            return None
        if not stat.S_ISLNK(st.st_mode):
            raise K3sDataError("%s is not a symlink (k3s keeps a link to a data tree there); move it away" % link)
        target = os.readlink(link)
        if os.path.dirname(target) != self.data or not SHA_RE.match(os.path.basename(target)):
            raise K3sDataError("%s points to %r, not to a data tree %s/<hash>; move it away" % (link, target, self.data))
        return os.path.basename(target)

    def tree_problems(self, data_hash, members):
        """{relative path: reason} for an existing tree; None when there is no tree."""
        return tree_problems(self.tree(data_hash), members, self.hash_of)

    def local_sources(self, wanted, skip=None):
        """{sha256: path} of verified files in k3s's trees (data/<hash>/) holding wanted contents ({sha256: size})."""
        found = {}
        sizes = set(wanted.values())
        if lstat_or_none(self.data) is None or not wanted:
            return found
        for entry in sorted(os.listdir(self.data)):
            root = os.path.join(self.data, entry)
            st = lstat_or_none(root)
            if entry == skip or not SHA_RE.match(entry) or st is None or not stat.S_ISDIR(st.st_mode):
                continue   # current/previous/cni, the backup, temporary trees are never sources
            for dirpath, dirnames, filenames in os.walk(root):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    fst = os.lstat(path)
                    if not stat.S_ISREG(fst.st_mode) or fst.st_size not in sizes:
                        continue
                    sha = self.hash_of(path, fst)
                    if wanted.get(sha) == fst.st_size and sha not in found:
                        found[sha] = path
        return found

    def exe_state(self, exe):
        """None when <bin_dir>/k3s is the wanted executable, else a reason."""
        st = lstat_or_none(self.exe_path)
        if st is None:
            return "missing"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size != exe["size"] or self.hash_of(self.exe_path, st) != exe["sha256"]:
            return "differs"
        return None

    def stored_exe(self, sha, size=None):
        path = os.path.join(self.exe_store, sha)
        st = lstat_or_none(path)
        if st is None or not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return None
        return path if self.hash_of(path, st) == sha else None

    def record(self):
        st = lstat_or_none(self.record_path)
        if st is None:
            return {}
        try:
            with open(self.record_path) as f:
                data = json.load(f)
            exes = data["executables"]
            if not isinstance(exes, dict):
                raise ValueError("executables is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise K3sDataError("%s is not a fleetsplit record (%s); remove it (it only maps data hashes to the "
                               "executables kept for rollback)" % (self.record_path, e))
        return dict((k, v) for k, v in exes.items() if SHA_RE.match(k) and SHA_RE.match(str(v)))

    def link_plan(self, names):
        """([(path, target)] to create, [names skipped]) for the CLI links install.sh makes (never over a foreign file)."""
        todo, skipped = [], []
        for name in names or []:
            path = os.path.join(self.p["bin_dir"], name)
            st = lstat_or_none(path)
            if st is None:
                todo.append((path, EXE))
            elif not (stat.S_ISLNK(st.st_mode) and os.readlink(path) in (EXE, self.exe_path)):
                skipped.append(name)
        return todo, skipped


# --------------------------------------------------------------------------- query

def query(p, members, executable, data_hash):
    """Read only: what the host lacks (``missing``), what is wrong in the tree (``tampered``) and what
    ``present`` would change (``changes``)."""
    members = check_members(members)
    exe = check_executable(executable)
    data_hash = sha_value(data_hash, "data_hash")
    h = Host(p)
    plan = {"host": h, "members": members, "exe": exe, "hash": data_hash, "changes": []}
    changes = plan["changes"]
    tree = h.tree(data_hash)
    problems = h.tree_problems(data_hash, members)
    plan["tampered"] = dict(problems or {})
    plan["build"] = problems is None or bool(problems)
    missing = []
    plan["sources"] = {}
    if plan["build"]:
        wanted = dict((m["sha256"], m["size"]) for m in members.values() if m["type"] == "file")
        good = {}
        if problems:
            changes.append("move tampered %s aside to %s (%s)" % (tree, os.path.join(h.data, BACKUP),
                                                                  ", ".join(sorted(problems))))
            for path, m in members.items():   # intact files of the tampered tree are still good copies
                if m["type"] == "file" and (path not in problems or problems[path].startswith("mode ")):
                    good.setdefault(m["sha256"], os.path.join(tree, path))
        good.update(h.local_sources(dict((s, n) for s, n in wanted.items() if s not in good), skip=data_hash))
        plan["sources"] = good
        missing = sorted(s for s in wanted if s not in good)
        changes.append("build %s (%d files: %d copied from the host, %d from the bundle)"
                       % (tree, len(wanted), len(wanted) - len(missing), len(missing)))
    cur, prev = h.pointer("current"), h.pointer("previous")
    plan["current"], plan["previous"] = cur, prev
    if cur != data_hash:
        changes.append("%s/current -> %s%s" % (h.data, tree, " (previous -> %s)" % h.tree(cur) if cur else ""))
    for d in ("cni", BACKUP):
        st = lstat_or_none(os.path.join(h.data, d))
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise K3sDataError("%s is not a directory (k3s links the CNI plugins in data/cni, fleetsplit keeps "
                               "tampered trees in data/%s); move it away" % (os.path.join(h.data, d), BACKUP))
    links = cni_links(h.data, tree, cni_names(members))
    for link in foreign_entries(links):
        raise K3sDataError("%s is not a symlink (k3s links the CNI plugins there); move it away" % link)
    changes += ["link %s -> %s" % (link, links[link]) for link in stale_links(links)]
    plan["exe_state"] = h.exe_state(exe)
    plan["exe_stored"] = h.stored_exe(exe["sha256"], exe["size"])
    if plan["exe_state"] == "not a regular file":
        raise K3sDataError("%s is not a regular file (k3s-install puts the executable there); move it away" % h.exe_path)
    if plan["exe_state"]:
        changes.append("write %s (%s)" % (h.exe_path, plan["exe_state"]))
        if plan["exe_stored"] is None:
            missing.append(EXE)
    elif plan["exe_stored"] is None:
        changes.append("keep a copy of %s in %s for rollback" % (h.exe_path, h.exe_store))
    record = h.record()
    plan["record"] = record
    if record.get(data_hash) != exe["sha256"]:
        changes.append("record executable %s for data %s" % (exe["sha256"][:12], data_hash[:12]))
    plan["links"], plan["skipped_links"] = h.link_plan(p.get("cli_links"))
    changes += ["link %s -> %s" % (path, target) for path, target in plan["links"]]
    plan["missing"] = missing
    return plan


def result(plan):
    return {"missing": plan["missing"], "tampered": sorted(plan["tampered"]), "tampered_reasons": plan["tampered"],
            "current": plan["current"], "previous": plan["previous"], "changes": plan["changes"],
            "skipped_links": plan["skipped_links"], "data_hash": plan["hash"], "up_to_date": not plan["changes"],
            "data_tree": plan["host"].tree(plan["hash"])}


# --------------------------------------------------------------------------- writing

class Bundle(object):
    """The uploaded bundle: {name: (offset, size)}, checked to tile the file and cover what is missing."""

    def __init__(self, path, members, missing):
        self.path = path
        self.table = {}
        if not missing:
            return
        if path is None or members is None:
            raise K3sDataError("the host lacks %s but no bundle was given (send stream_bundle's bundle with "
                               "bundle_src and bundle_members)" % ", ".join(missing))
        try:
            self.table = check_bundle_members(members, os.path.getsize(path))
        except PayloadError as e:
            raise K3sDataError("bundle %s: %s" % (path, e))
        except OSError as e:
            raise K3sDataError("bundle %s: %s" % (path, e.strerror))
        lacking = [n for n in missing if n not in self.table]
        if lacking:
            raise K3sDataError("bundle %s does not hold %s, which the host lacks; query again and bundle what "
                               "it reports missing" % (path, ", ".join(lacking)))

    def inflate(self, name, dst, size, sha, crc32, mode):
        offset, length = self.table[name]
        if crc32 is None:   # members carry no CRC: the gzip trailer's, which zlib checks against the data
            with open(self.path, "rb") as f:
                f.seek(offset + length - 8)
                crc32 = struct.unpack("<I", f.read(4))[0]
        try:
            inflate_gzip_member(self.path, dst, size, crc32, sha, mode, None, offset, length)
        except PayloadError as e:
            raise K3sDataError("bundle %s: the stream for %s is unusable (%s); nothing was switched" % (self.path, name, e))


def copy_verified(src, dst, size, sha):
    """release_build's verified copy (its own inode, never a hard link), failing loudly when the source changed."""
    if not copy_checked(src, dst, size, sha, None):
        raise K3sDataError("%s changed while it was copied (it no longer has sha256 %s); run again" % (src, sha))


def build_tree(plan, bundle):
    """<hash>-tmp from local copies and the bundle, checked by k3s's dataverify, renamed to data/<hash>."""
    h, members = plan["host"], plan["members"]
    final = h.tree(plan["hash"])
    tmp = fresh_tmp(final)   # k3s's own temporary name: a k3s starting meanwhile waits on the lock
    written = {}
    try:
        for path in sorted(members):
            m, full = members[path], os.path.join(tmp, path)
            make_dirs(os.path.dirname(full), TREE_MODE)
            if m["type"] == "dir":
                make_dirs(full, TREE_MODE)
            elif m["type"] == "symlink":
                os.symlink(m["target"], full)
            else:
                src = written.get(m["sha256"]) or plan["sources"].get(m["sha256"])
                if src:
                    copy_verified(src, full, m["size"], m["sha256"])
                else:
                    bundle.inflate(m["sha256"], full, m["size"], m["sha256"], m.get("crc32"), m["mode"])
                set_owner_mode(full, m["mode"])
                written.setdefault(m["sha256"], full)
        problems = dataverify(os.path.join(tmp, "bin"))
        if problems:
            raise K3sDataError("the tree built for %s fails k3s's own check (%s); the members do not match their "
                               "bin/.sha256sums or bin/.links: split the executable again" % (final, "; ".join(problems)))
    except BaseException:
        remove_tree_or_file(tmp)
        raise
    if lstat_or_none(final) is not None:
        make_dirs(os.path.join(h.data, BACKUP), 0o700)
    aside = "%s-%d-%s" % (plan["hash"], time.time(), os.urandom(3).hex())
    return install_tree(tmp, final, os.path.join(h.data, BACKUP, aside))


def place(directory, name, produce):
    """``produce(temporary path)`` writes a new executable beside ``<directory>/<name>``; root, 0755, rename, fsync."""
    make_dirs(directory, 0o755)
    tmp = tmp_name(directory, name)
    try:
        produce(tmp)
        set_owner_mode(tmp, 0o755)
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(directory)
    return os.path.join(directory, name)


def store_exe(h, sha, produce):
    """<store>/executables/<sha256> (the directory 0700), for rollback."""
    make_dirs(h.exe_store, 0o700)
    return place(h.exe_store, sha, produce)


def keep_old_exe(h, cur, record):
    """The executable being replaced, kept for rollback when the store lacks it (a host k3s-install set up)."""
    st = lstat_or_none(h.exe_path)
    if cur in record or st is None or not stat.S_ISREG(st.st_mode):
        return None
    sha = h.hash_of(h.exe_path, st)
    if h.stored_exe(sha, st.st_size) is None:
        store_exe(h, sha, lambda tmp: copy_verified(h.exe_path, tmp, st.st_size, sha))
    return sha


def write_record(h, exes):
    make_dirs(h.p["store_dir"], 0o700)
    body = json.dumps({"format": RECORD_FORMAT, "executables": exes}, indent=2, sort_keys=True) + "\n"
    atomic_write(h.record_path, body.encode(), 0o600)


def prune_store(h, record):
    """Keep the executables of the current and previous trees only; returns the record kept."""
    keep = dict((k, v) for k, v in record.items() if k in (h.pointer("current"), h.pointer("previous")))
    if lstat_or_none(h.exe_store) is not None:
        for name in os.listdir(h.exe_store):
            if SHA_RE.match(name) and name not in keep.values():
                unlink_quietly(os.path.join(h.exe_store, name))
    return keep


def present(p, members, executable, data_hash, bundle=None, bundle_members=None, check_mode=False):
    """Make the host hold the tree, current/previous, the CNI links, the executable and the CLI links."""
    plan = query(p, members, executable, data_hash)
    out = result(plan)
    out["changed"] = bool(plan["changes"])
    cur, prev = plan["current"], plan["previous"]   # before and after, for the module's diff
    out["before"] = {"current": cur, "previous": prev}
    out["after"] = {"current": plan["hash"], "previous": cur if cur not in (None, plan["hash"]) else prev}
    # What a running k3s must be restarted for (the roles' handler): a new executable or another current tree.
    out["executable_changed"] = plan["exe_state"] is not None
    out["current_changed"] = plan["current"] != plan["hash"]
    if check_mode or not plan["changes"]:
        return out
    h = plan["host"]
    b = Bundle(bundle, bundle_members, plan["missing"])
    make_dirs(h.data, 0o755)
    tree = h.tree(plan["hash"])
    if plan["build"]:
        with Lock(h.data):
            if h.tree_problems(plan["hash"], plan["members"]) != {}:   # k3s may have extracted it meanwhile
                out["backup"] = build_tree(plan, b)
    record = dict(plan["record"])
    if plan["exe_state"] and plan["current"] not in (None, plan["hash"]):
        old = keep_old_exe(h, plan["current"], record)
        if old:
            record[plan["current"]] = old
    exe = plan["exe"]
    stored = plan["exe_stored"]
    if stored is None:   # from <bin_dir>/k3s when it is already that content, else from the bundle
        stored = store_exe(h, exe["sha256"], (
            lambda tmp: copy_verified(h.exe_path, tmp, exe["size"], exe["sha256"])) if plan["exe_state"] is None
            else (lambda tmp: b.inflate(EXE, tmp, exe["size"], exe["sha256"], exe.get("crc32"), 0o755)))
    record[plan["hash"]] = plan["exe"]["sha256"]
    write_record(h, record)
    rotate(h.data, tree, cni_links(h.data, tree, cni_names(plan["members"])))
    if plan["exe_state"]:
        place(h.p["bin_dir"], EXE, lambda tmp: copy_verified(stored, tmp, exe["size"], exe["sha256"]))
    for path, target in plan["links"]:
        atomic_symlink(target, path)
    kept = prune_store(h, record)
    if kept != record:
        write_record(h, kept)
    out["current"], out["previous"] = h.pointer("current"), h.pointer("previous")
    return out


def rollback(p, check_mode=False):
    """current <-> previous and the executable that belongs to the tree rolled back to, from the store."""
    h = Host(p)
    cur, prev = h.pointer("current"), h.pointer("previous")
    if cur is None or prev is None or prev == cur:
        raise K3sDataError("%s/current and previous do not name two data trees: nothing to roll back to" % h.data)
    tree = h.tree(prev)
    problems = dataverify(os.path.join(tree, "bin"))
    if problems:
        raise K3sDataError("refusing to roll back to %s: k3s's own check fails (%s)" % (tree, "; ".join(problems)))
    record = h.record()
    sha = record.get(prev)
    stored = sha and h.stored_exe(sha)
    if not stored:
        raise K3sDataError("no executable for data %s is kept in %s (it was installed by other means); deploy the "
                           "k3s executable of that version instead" % (prev, h.exe_store))
    changes = ["%s/current -> %s (previous -> %s)" % (h.data, tree, h.tree(cur)),
               "write %s (executable %s)" % (h.exe_path, sha[:12])]
    out = {"changed": True, "current": prev, "previous": cur, "before": {"current": cur, "previous": prev},
           "after": {"current": prev, "previous": cur}, "missing": [], "changes": changes, "executable_changed": True, "current_changed": True}
    bin_dir = os.path.join(tree, "bin")
    names = [n for n in sorted(os.listdir(bin_dir))
             if os.path.islink(os.path.join(bin_dir, n)) and os.readlink(os.path.join(bin_dir, n)) == "cni"]
    links = cni_links(h.data, tree, names)
    for link in foreign_entries(links):
        raise K3sDataError("%s is not a symlink (k3s links the CNI plugins there); move it away" % link)
    if check_mode:
        return out
    rotate(h.data, tree, links)   # current is h.tree(cur): it becomes previous
    size = os.stat(stored).st_size
    place(h.p["bin_dir"], EXE, lambda tmp: copy_verified(stored, tmp, size, sha))
    return out
