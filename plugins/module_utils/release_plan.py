# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""What a host has and what a release still needs (reads only): the state of each file, the content
already on the host, the streams, the links to fix, and the host facts the roles use. Standard library only,
no Ansible import, Python 3.6 syntax."""

import os
import socket
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import TMP_MARK, check_dir_stat, lstat_or_none
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_membership import membership
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_store import EXE_REL, ReleaseError


MTIME_ONLY = "mtime %d ns, expected %d ns"


def file_state(path, expect_size, expect_sha, record, verify, mtime_ns=None):
    """None when ``path`` holds the expected content, else a short reason.

    Trusts a ``manifest.json`` record when size and mtime match it (fast re-runs); otherwise hashes.
    """
    st = lstat_or_none(path)
    if st is None:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size != expect_size:
        return "size %d, expected %d" % (st.st_size, expect_size)
    trusted = (not verify and record is not None and record.get("sha256") == expect_sha
               and record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns)
    if not trusted and sha256_file(path) != expect_sha:
        return "sha256 mismatch"
    if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
        # Right content, not the pinned mtime (legacy k0s compares it): a change, fixed in place.
        return MTIME_ONLY % (st.st_mtime_ns, mtime_ns)
    return None


class Planner(object):
    """Works out what a host has and needs. Reads only."""

    def __init__(self, store, items, rid, pinned_mtime, verify, link_data_dir):
        self.s = store
        self.items = items
        self.rid = rid
        self.mtime_ns = None if pinned_mtime is None else pinned_mtime * 1000000000
        self.verify = verify
        self.link_data_dir = link_data_dir
        self.manifests = dict((r, self.s.manifest(r)) for r in self.s.list_releases())
        self._hash_cache = {}
        self.bundle = None   # (path, {name: (offset, size)}) once checked by Runner.check_bundle

    def target_exists(self):
        # A release directory without a readable manifest still counts: its files get hashed.
        return self.rid in self.manifests

    def target_problems(self):
        """{rel: reason} for files of an existing target release that are not right."""
        rdir = self.s.release_dir(self.rid)
        man = self.manifests.get(self.rid) or {"files": {}}
        out = {}
        for rel, it in sorted(self.items.items()):
            reason = file_state(os.path.join(rdir, rel), it.size, it.sha256,
                                man["files"].get(rel), self.verify, self.mtime_ns)
            if reason:
                out[rel] = reason
        return out

    def target_perm_problems(self):
        rdir = self.s.release_dir(self.rid)
        out = []
        for rel in sorted(self.items):
            st = lstat_or_none(os.path.join(rdir, rel))
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) != 0o755 or (os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0)):
                out.append(rel)
        return out

    def target_shared(self):
        """Files of the target release sharing their inode with another file (hard links between releases
        that earlier versions made): a write into the live release would change the rollback target too."""
        rdir = self.s.release_dir(self.rid)
        out = []
        for rel in sorted(self.items):
            st = lstat_or_none(os.path.join(rdir, rel))
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                out.append(rel)
        return out

    def target_extras(self):
        """Entries of the target release that are not part of it: moved to backup/, never deleted (k0s's
        autopilot leaves k0s.tmp next to the executable it replaced, hosts of the old layout have what k0s
        wrote through the libexec symlink: that is migrated, see runtime_entries)."""
        rdir = self.s.release_dir(self.rid)
        migrating = set()
        if self.s.pointer(self.s.current_link) == self.rid:
            migrating = set("libexec/" + e for e in self.runtime_entries())
        out = []
        for sub in ("bin", "libexec"):
            d = os.path.join(rdir, sub)
            if lstat_or_none(d) is None:
                continue
            for e in sorted(os.listdir(d)):
                rel = "%s/%s" % (sub, e)
                if rel not in self.items and rel not in migrating and TMP_MARK not in e:
                    out.append(rel)
        return out

    def old_libexec_layout(self):
        """True when libexec_dir is still the symlink to <store>/current/libexec earlier versions made."""
        st = lstat_or_none(self.s.libexec_dir)
        return st is not None and stat.S_ISLNK(st.st_mode) and \
            os.readlink(self.s.libexec_dir) == self.s.libexec_link_target

    def runtime_entries(self):
        """What k0s and its components wrote into the current release's libexec/ through the old libexec
        symlink (kubelet-plugins/...): names not in that release's manifest. Moved into the real libexec
        directory by the migration, never deleted."""
        if not self.old_libexec_layout():
            return []
        cur = self.s.pointer(self.s.current_link)
        if cur is None:
            return []
        d = os.path.join(self.s.release_dir(cur), "libexec")
        if lstat_or_none(d) is None or not os.path.isdir(d):
            return []
        man = self.manifests.get(cur) or {"files": {}}
        return [e for e in sorted(os.listdir(d)) if "libexec/" + e not in man["files"] and TMP_MARK not in e]

    def exe_drift(self):
        """Why <bin_dir>/k0s is no longer the release's executable (a manual copy or a full k0s written over
        the link), or None. Content written over the release's own file shows in target_problems."""
        st = lstat_or_none(self.s.exe_link)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(self.s.exe_link)
            if target == self.s.exe_link_target:
                return None
            return "a symlink to %s, not to %s" % (target, self.s.exe_link_target)
        if stat.S_ISREG(st.st_mode):
            return "a regular file replaced the symlink to %s (a manual copy or an in-place update)" \
                % self.s.exe_link_target
        return "not a symlink"

    def _hash(self, path):
        if path not in self._hash_cache:
            self._hash_cache[path] = sha256_file(path)
        return self._hash_cache[path]

    def host_sources(self, it, exclude_target=False):
        """Verified-enough paths on the host that hold ``it``'s content: [(path, can_link)]."""
        out = []
        for rid, man in sorted(self.manifests.items()):
            if man is None or (exclude_target and rid == self.rid):
                continue
            for rel, rec in sorted(man["files"].items()):
                if not isinstance(rec, dict) or rec.get("sha256") != it.sha256:
                    continue
                path = os.path.join(self.s.release_dir(rid), rel)
                if file_state(path, it.size, it.sha256, rec, self.verify) is None:
                    st = os.lstat(path)
                    can_link = self.mtime_ns is None or st.st_mtime_ns == self.mtime_ns
                    out.append((path, can_link))
        # Copies k0s staged itself, or an earlier install by other means: copy only (not ours to link).
        foreign = []
        if it.rel == EXE_REL:
            foreign.append(self.s.exe_link)
        else:
            foreign.append(os.path.join(self.s.data_bin, it.name))
            foreign.append(os.path.join(self.s.libexec_dir, it.name))
        for path in foreign:
            st = lstat_or_none(path)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != it.size:
                continue
            parent = lstat_or_none(os.path.dirname(path))
            if parent is None or not stat.S_ISDIR(parent.st_mode):
                continue   # e.g. <libexec_dir>/x when libexec_dir is our symlink: already covered above
            try:
                if self._hash(path) == it.sha256:
                    out.append((path, False))
            except OSError:
                pass
        return out

    def stream_path(self, it):
        """Where ``it``'s gzip stream is: (path, offset, length or None), or None."""
        if self.bundle is not None and it.name in self.bundle[1]:
            offset, length = self.bundle[1][it.name]
            return (self.bundle[0], offset, length)
        p = os.path.join(self.s.streams_dir, it.stream)
        st = lstat_or_none(p)
        return (p, 0, None) if st is not None and stat.S_ISREG(st.st_mode) else None

    def missing(self):
        """Names whose content is nowhere on the host (their streams must be uploaded)."""
        problems = self.target_problems() if self.target_exists() else dict((r, "new") for r in self.items)
        out = []
        for rel, it in sorted(self.items.items(), key=lambda kv: kv[1].name):
            if rel in problems and not problems[rel].startswith("mtime ") and \
                    not self.host_sources(it, exclude_target=True):
                out.append(it.name)
        return problems, sorted(out)

    def link_plan(self):
        """[(kind, path, target, action)] for links that are not right; raises for foreign links we must not touch.

        libexec_dir is a real directory: one link per binary through `current` (so the rename of `current`
        still switches them all), everything else in it belongs to k0s, the kubelet and CNI plugins and is
        left alone (see docs/upgrade.md, "Runtime directories")."""
        plan = []
        st = lstat_or_none(self.s.exe_link)
        plan += self._leaf_plan(self.s.exe_link, self.s.exe_link_target, st)
        names = set(it.name for it in self.items.values() if it.rel != EXE_REL)
        plan += self._libexec_plan(names)
        if self.link_data_dir:
            prefix = self.s.libexec_dir.rstrip("/") + "/"
            for name in sorted(names):
                path = os.path.join(self.s.data_bin, name)
                target = prefix + name
                st = lstat_or_none(path)
                if st is None:
                    plan.append(("data", path, target, "create"))
                elif stat.S_ISLNK(st.st_mode):
                    cur = os.readlink(path)
                    if cur == target:
                        continue
                    if not cur.startswith(prefix):
                        raise ReleaseError(
                            "%s is a symlink to %s, which fleetsplit did not create; remove it (or set "
                            "link_data_dir: false) so k0s uses the installed %s" % (path, cur, name))
                    plan.append(("data", path, target, "replace stale link"))
                elif stat.S_ISREG(st.st_mode):
                    plan.append(("data", path, target, "replace staged file"))
                else:
                    raise ReleaseError("%s is in the way (not a file or symlink); remove it" % path)
            # Our links to names this release no longer has; k0s's own entries (its relative iptables*
            # links to xtables-*-multi, files it staged) are not ours and never touched.
            plan += self._stale_links(self.s.data_bin, names, prefix)
        return plan

    def _libexec_plan(self, names):
        path = self.s.libexec_dir
        st = lstat_or_none(path)
        plan = []
        if st is None:
            plan.append(("libexec", path, None, "create directory"))
        elif self.old_libexec_layout():
            # The per-binary links go into the new directory before it replaces the symlink.
            links = [(n, os.path.join(self.s.libexec_link_target, n)) for n in sorted(names)]
            plan = [("libexec", path, (self.runtime_entries(), links), "migrate to directory")]
            cur = self.s.pointer(self.s.current_link)
            man = self.manifests.get(cur) or {"files": {}} if cur else {"files": {}}
            for rel in sorted(man["files"]):
                name = rel.split("/", 1)[1] if rel.startswith("libexec/") else None
                if name and name not in names:
                    # The release still current needs it until the switch; removed after it.
                    links.append((name, os.path.join(self.s.libexec_link_target, name)))
                    plan.append(("data", os.path.join(path, name), None, "remove stale link"))
            return plan
        elif not stat.S_ISDIR(st.st_mode):
            plan.append(("libexec", path, None, "move aside and create directory"))
        else:
            check_dir_stat(path, st)
        real_dir = st is not None and stat.S_ISDIR(st.st_mode)
        prefix = os.path.join(self.s.libexec_link_target, "")
        for name in sorted(names):
            link = os.path.join(path, name)
            target = prefix + name
            lst = lstat_or_none(link) if real_dir else None
            if lst is None:
                plan.append(("bin", link, target, "create"))
            elif stat.S_ISLNK(lst.st_mode) and os.readlink(link) == target:
                continue
            else:
                plan.append(("bin", link, target, "move aside and replace"))
        if real_dir:
            plan += self._stale_links(path, names, prefix)
        return plan

    @staticmethod
    def _stale_links(d, names, prefix):
        st = lstat_or_none(d)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return []
        out = []
        for e in sorted(os.listdir(d)):
            path = os.path.join(d, e)
            if e in names or TMP_MARK in e:
                continue
            est = lstat_or_none(path)
            if est is not None and stat.S_ISLNK(est.st_mode) and os.readlink(path).startswith(prefix):
                out.append(("data", path, None, "remove stale link"))
        return out

    @staticmethod
    def _leaf_plan(path, target, st):
        if st is None:
            return [("leaf", path, target, "create")]
        if stat.S_ISLNK(st.st_mode) and os.readlink(path) == target:
            return []
        return [("leaf", path, target, "move aside and replace")]


def service_manager():
    """The host's init system, decided like Ansible's service_mgr fact for the two k0s supports."""
    if os.path.isdir("/run/systemd/system"):
        return "systemd"
    if os.path.exists("/run/openrc/softlevel") or os.path.exists("/sbin/openrc-run"):
        return "openrc"
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def host_facts(data_dir):
    """What the roles need to know about the host, so plays need no fact gathering (a `setup` call
    costs more bytes than this whole module): also the k0s node name (k0s defaults to the lowercased
    host name) and whether k0s's data dir says the host already belongs to a cluster."""
    return dict(architecture=os.uname().machine, service_mgr=service_manager(),
                node_name=socket.gethostname().lower(), k0s_cluster=membership(data_dir))
