# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Builds, repairs, switches, rolls back and prunes releases in the store of k0s_release (Runner), from
host content and uploaded gzip streams. Raises ReleaseError (or HostFsError, PayloadError, OSError) and
returns data; it never imports Ansible. ``run(module)`` is the k0s_release module itself, for the AnsiballZ and the
compact transports (host_module.py). Standard library only, Python 3.6 syntax."""

import fcntl
import json
import os
import secrets
import shutil
import stat
import subprocess

from ansible_collections.fleetsplit.k0s.plugins.module_utils import mirror_fetch
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    TMP_MARK,
    HostFsError,
    atomic_symlink,
    atomic_write,
    check_dir_chain,
    fsync_dir,
    os_error_message,
    lstat_or_none,
    make_dirs,
    remove_tree_or_file,
    set_owner_mode,
    tmp_name,
    unlink_quietly,
)
# Only the host-side parts of the payload library (standard library, Python 3.6): never the ELF/zip readers.
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import check_bundle_members
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.streams import inflate_gzip_member
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_links import LinkOps
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_plan import Planner, host_facts
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_store import (
    MANIFEST,
    Item,
    ReleaseError,
    Store,
    build_items,
    check_layout,
    check_path_param,
    check_release_id,
    compute_release_id,
    ensure_real_dir,
)

SELINUX_NAMES = ("containerd", "containerd-shim-runc-v2", "runc")
CHUNK = 1 << 20
SBIN_DIRS = ("/sbin", "/usr/sbin", "/usr/local/sbin")


KEEP_BACKUPS = 3   # the module's default for keep_backups
PATH_KEYS = ("store_dir", "bin_dir", "libexec_dir", "data_dir", "streams_dir", "bundle")


def _kernel_copy(src_fd, dst_fd, size):
    """copy_file_range (Python 3.8+): shares the extents (a reflink) where the file system can (XFS, Btrfs),
    copies inside the kernel elsewhere. False when unavailable before the first byte (then copy in Python)."""
    fn = getattr(os, "copy_file_range", None)
    if fn is None:
        return False
    done = 0
    try:
        while done < size:
            n = fn(src_fd, dst_fd, size - done)
            if n == 0:
                break
            done += n
    except OSError:
        if done:
            raise
        return False
    return True


def copy_verified(src, dst, size, sha256, mtime_ns):
    """Copy ``src`` to the new file ``dst`` (its own inode: releases never share one, so a write into the
    live release cannot change another) and prove the copy has the expected size and sha256."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    ok = False
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            if not _kernel_copy(inp.fileno(), out.fileno(), size):
                shutil.copyfileobj(inp, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        if os.lstat(dst).st_size != size or sha256_file(dst) != sha256:
            return False
        set_owner_mode(dst)
        if mtime_ns is not None:
            os.utime(dst, ns=(mtime_ns, mtime_ns))
        ok = True
        return True
    finally:
        if not ok:
            unlink_quietly(dst)


def find_command(name):
    """Path of a host command like AnsibleModule.get_bin_path finds it (PATH plus the sbin directories), or None."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath)] + list(SBIN_DIRS)))


# --------------------------------------------------------------------------- actions

class Runner(LinkOps):
    """One run of k0s_release: ``params`` are the module parameters (a dict, checked by the module), ``check_mode``
    changes nothing, ``diff`` adds a before/after ``diff`` to the result. run_query, run_present and run_rollback
    fill ``result`` and ``changes`` and raise on refusal."""

    def __init__(self, params, check_mode=False, diff=False):
        self.p = p = dict(params)
        p.setdefault("keep_backups", KEEP_BACKUPS)   # callers written before the option existed
        self.check = check_mode
        self.want_diff = diff
        self.s = Store(p)
        self.changes = []
        self.result = dict(changed=False, changes=self.changes, binaries_changed=False, backups={},
                           replaced_staged=[], links_changed=[], drift={}, pruned=[], pruned_backups=[], cleaned=[],
                           warnings=[])
        self._lock_fd = None
        self._backup_root = None
        self.stale_manifest = False

    # ----- guards
    def check_paths(self, writing):
        dirs = [self.s.root, self.s.bin_dir, os.path.dirname(self.s.libexec_dir.rstrip("/"))]
        if self.p["link_data_dir"]:
            dirs.append(self.s.data_bin)
        if writing:
            dirs.append(self.s.streams_dir)
        for d in dirs:
            check_dir_chain(d)
        self.check_writable([self.s.bin_dir, os.path.dirname(self.s.libexec_dir.rstrip("/"))])
        for d in (self.s.releases, self.s.backup):
            st = lstat_or_none(d)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise ReleaseError("refusing to write through %s: it is %s, not a directory fleetsplit created"
                                   % (d, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"))
        for rid in self.s.list_releases():
            for sub in ("bin", "libexec"):
                d = os.path.join(self.s.release_dir(rid), sub)
                st = lstat_or_none(d)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    raise ReleaseError("refusing to use %s: it is not a real directory" % d)
        if lstat_or_none(self.s.releases) is not None:
            # symlinked release directories are filtered out by list_releases; name them.
            for e in os.listdir(self.s.releases):
                st = lstat_or_none(os.path.join(self.s.releases, e))
                if st is not None and stat.S_ISLNK(st.st_mode) and not e.startswith("."):
                    raise ReleaseError("refusing to use %s: it is a symlink fleetsplit did not create"
                                       % os.path.join(self.s.releases, e))

    @staticmethod
    def check_writable(dirs):
        """Refused before any change: a link directory on a read-only mount, above all a /usr that a merged
        systemd-sysext image covers (fleetsplit.k0s.deploy_sysext; its /usr/bin/k0s cannot be replaced)."""
        for d in dirs:
            while lstat_or_none(d) is None and d != "/":
                d = os.path.dirname(d)
            if os.statvfs(d).f_flag & os.ST_RDONLY:
                raise ReleaseError("refusing to install into %s: it is on a read-only mount (k0s from a merged "
                                   "systemd-sysext image? `systemd-sysext status`; such a host is managed by "
                                   "fleetsplit.k0s.deploy_sysext, docs/sysext-hosts.md)" % d)

    def lock(self):
        if self.check:
            return
        if lstat_or_none(self.s.root) is None:
            make_dirs(self.s.root, 0o755)
        fd = os.open(os.path.join(self.s.root, ".lock"),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def check_params(self):
        """Path parameters: absolute, normal, no control characters, not containing each other. Also for
        query, which the install role runs before any change, so this is part of its preflight."""
        for key in PATH_KEYS:
            if self.p.get(key) is not None:
                check_path_param(key, self.p[key])
        check_layout(self.p)
        mirror_fetch.check_params(self.p)

    def run(self):
        """Run the state the parameters name; the store lock is held until it returns or raises."""
        self.check_params()
        try:
            getattr(self, "run_" + self.p["state"])()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)   # closing the only descriptor releases the flock
                self._lock_fd = None
        return self.result

    # ----- cleanup of killed runs
    def cleanup(self):
        found = []
        if lstat_or_none(self.s.releases) is not None:
            for e in os.listdir(self.s.releases):
                if e.startswith(".") and (".tmp-" in e):
                    found.append(os.path.join(self.s.releases, e))
            for rid in self.s.list_releases():
                for sub in ("", "bin", "libexec"):
                    d = os.path.join(self.s.release_dir(rid), sub)
                    if os.path.isdir(d):
                        found += [os.path.join(d, e) for e in os.listdir(d) if TMP_MARK in e]
        dirs = [self.s.root, self.s.bin_dir, os.path.dirname(self.s.libexec_dir.rstrip("/")), self.s.data_bin]
        st = lstat_or_none(self.s.libexec_dir)
        if st is not None and stat.S_ISDIR(st.st_mode):
            dirs.append(self.s.libexec_dir)   # temp names of its per-binary links (only ours carry TMP_MARK)
        for d in dirs:
            if os.path.isdir(d):
                for e in os.listdir(d):
                    if e.startswith(".") and TMP_MARK in e:
                        p = os.path.join(d, e)
                        st = lstat_or_none(p)
                        if st is not None and (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                            found.append(p)
        for p in sorted(set(found)):
            if not self.check:
                remove_tree_or_file(p)
            self.result["cleaned"].append(p)
            self.changes.append("removed leftover of an interrupted run: %s" % p)

    # ----- building files
    def materialize(self, it, dst, sources, stream, mtime_ns):
        # Never a hard link: an admin's in-place write to the live release would change the rollback target too.
        for path, dummy in sources:
            try:
                if copy_verified(path, dst, it.size, it.sha256, mtime_ns):
                    return "copy"
            except OSError:
                pass
        if stream is None:
            raise ReleaseError("no source for %s: its content is not on the host and %s does not exist"
                               % (it.name, os.path.join(self.s.streams_dir, it.stream)))
        path, offset, length = stream
        try:
            inflate_gzip_member(path, dst, it.size, it.crc32, it.sha256, mode=0o755, mtime_ns=mtime_ns,
                                offset=offset, length=length)
        except PayloadError as e:
            raise ReleaseError("stream for %s is unusable: %s" % (it.name, e))
        set_owner_mode(dst)
        if mtime_ns is not None:
            os.utime(dst, ns=(mtime_ns, mtime_ns))
        return "stream"

    def selinux(self, named_paths):
        """Label container runtime binaries like k0s does; ``named_paths`` is [(name, path)]."""
        paths = [(n, p) for n, p in named_paths if n in SELINUX_NAMES]
        if not self.p["selinux_relabel"] or not paths:
            return []
        tool = find_command("selinuxenabled")
        chcon = find_command("chcon")
        if not tool or not chcon or subprocess.call([tool]) != 0:
            return []
        proc = subprocess.run([chcon, "-t", "container_runtime_exec_t"] + [p for n, p in paths],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if proc.returncode != 0:
            raise ReleaseError("chcon failed on %s: %s" % (", ".join(p for n, p in paths), proc.stderr.strip()))
        return [n for n, p in paths]

    def write_manifest(self, rdir, rid, items, pinned):
        files = {}
        for rel, it in sorted(items.items()):
            st = os.lstat(os.path.join(rdir, rel))
            files[rel] = dict(name=it.name, size=it.size, sha256=it.sha256, crc32=it.crc32, mtime_ns=st.st_mtime_ns)
        data = dict(format=1, release_id=rid, k0s_version=self.p["k0s_version"], pinned_mtime=pinned, files=files)
        atomic_write(os.path.join(rdir, MANIFEST), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def build(self, pl, rid, items, pinned, sources_out):
        mtime_ns = pl.mtime_ns
        tmp = os.path.join(self.s.releases, ".%s.tmp-%s" % (rid, secrets.token_hex(6)))
        os.mkdir(tmp, 0o755)
        try:
            for sub in ("bin", "libexec"):
                os.mkdir(os.path.join(tmp, sub), 0o755)
                set_owner_mode(os.path.join(tmp, sub))
            for rel, it in sorted(items.items()):
                sources_out[it.name] = self.materialize(it, os.path.join(tmp, rel), pl.host_sources(it),
                                                        pl.stream_path(it), mtime_ns)
            self.result["selinux_relabeled"] = self.selinux(
                [(it.name, os.path.join(tmp, rel)) for rel, it in items.items()])
            self.write_manifest(tmp, rid, items, pinned)
            for sub in ("bin", "libexec"):
                fsync_dir(os.path.join(tmp, sub))
            set_owner_mode(tmp)
            fsync_dir(tmp)
            os.rename(tmp, self.s.release_dir(rid))
            fsync_dir(self.s.releases)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def repair(self, pl, rid, items, problems, pinned, sources_out):
        rdir = self.s.release_dir(rid)
        for rel, reason in sorted(problems.items()):
            it = items[rel]
            if reason.startswith("mtime "):
                os.utime(os.path.join(rdir, rel), ns=(pl.mtime_ns, pl.mtime_ns))   # content checked: right
                continue
            d = os.path.join(rdir, os.path.dirname(rel))
            if lstat_or_none(d) is None:
                os.mkdir(d, 0o755)
                set_owner_mode(d)
            tmp = tmp_name(d, it.name)
            bad = os.path.join(rdir, rel)
            srcs = [(p, c) for p, c in pl.host_sources(it) if p != bad]
            sources_out[it.name] = self.materialize(it, tmp, srcs, pl.stream_path(it), pl.mtime_ns)
            self.result["selinux_relabeled"] += self.selinux([(it.name, tmp)])
            st = lstat_or_none(bad)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.move_aside(bad, "in the way of %s" % rel)
            elif bad in self.result["drift"]:
                self.keep_copy(bad, "replaced content, e.g. by k0s's autopilot")
            os.rename(tmp, bad)
            fsync_dir(d)

    def switch(self, rid, old_current):
        """previous := old current, then current := rid (each one rename)."""
        if old_current == rid:
            return False
        if old_current is not None:
            if not self.check:
                atomic_symlink("releases/" + old_current, self.s.previous_link)
        if not self.check:
            atomic_symlink("releases/" + rid, self.s.current_link)
        self.changes.append("current: %s -> %s" % (old_current, rid))
        return True

    def after_switch(self, what, fn, *args):
        """Housekeeping after `current` is switched (or nothing is to be switched): a failure there must not
        fail a run whose switch happened, so it becomes a warning that says what is left to do."""
        try:
            fn(*args)
        except (OSError, HostFsError) as e:
            msg = os_error_message(e) if isinstance(e, OSError) else str(e)
            self.result["warnings"].append("%s failed: %s; the release is installed, fix this and re-run (or "
                                           "remove it by hand)" % (what, msg))

    def touch(self, rid):
        if not self.check:
            os.utime(self.s.release_dir(rid))   # activation time orders releases for pruning

    def prune(self, keep, cur, prev, staged=None):
        """Remove old releases beyond ``keep``. Current, previous and a release just staged (switch=false) are
        never removed; releases staged and then abandoned count like any other, so they cannot pile up."""
        protected = set(x for x in (cur, prev, staged) if x)
        others = [r for r in self.s.list_releases() if r not in protected]
        others.sort(key=lambda r: os.lstat(self.s.release_dir(r)).st_mtime_ns, reverse=True)
        room = max(0, keep - (1 if prev and prev != cur else 0))
        for r in others[room:]:
            self.changes.append("pruned old release %s" % r)
            if not self.check:
                self.after_switch("pruning old release %s" % self.s.release_dir(r), shutil.rmtree,
                                  self.s.release_dir(r))
                if lstat_or_none(self.s.release_dir(r)) is not None:
                    continue
            self.result["pruned"].append(r)

    def prune_backups(self, keep):
        """Keep the ``keep`` newest backup sets (one per run that moved something aside, this run's included)."""
        st = lstat_or_none(self.s.backup)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        sets = []
        for e in os.listdir(self.s.backup):
            path = os.path.join(self.s.backup, e)
            est = lstat_or_none(path)
            if est is not None and stat.S_ISDIR(est.st_mode) and path != self._backup_root:
                sets.append((est.st_mtime_ns, e, path))
        sets.sort(reverse=True)
        for dummy, e, path in sets[max(0, keep - (1 if self._backup_root else 0)):]:
            self.changes.append("removed old backup set %s" % path)
            if not self.check:
                self.after_switch("removing old backup set %s" % path, shutil.rmtree, path)
            self.result["pruned_backups"].append(path)

    def unshare(self, rdir, rel, it):
        """Give a file of the target release its own inode (hard links an earlier version made between
        releases), keeping its mtime so its manifest record stays valid."""
        path = os.path.join(rdir, rel)
        tmp = tmp_name(os.path.dirname(path), it.name)
        if not copy_verified(path, tmp, it.size, it.sha256, os.lstat(path).st_mtime_ns):
            raise ReleaseError("%s does not hold its recorded content; run with verify=true to repair it" % path)
        self.result["selinux_relabeled"] += self.selinux([(it.name, tmp)])
        os.rename(tmp, path)
        fsync_dir(os.path.dirname(path))

    # ----- states
    def common_result(self):
        cur = self.s.pointer(self.s.current_link)
        exe = self.s.exe_link
        man = self.s.manifest(cur) if cur else None
        self.result.update(current_release=cur, previous_release=self.s.pointer(self.s.previous_link),
                           # the version skew check reads it here instead of a module run of its own per host
                           current_k0s_version=(man or {}).get("k0s_version") or None,
                           current_manifest_readable=man is not None if cur else None,
                           releases=self.s.list_releases(),
                           # what a k0s started now runs: compare with /proc/<pid>/exe of the running one
                           current_executable=os.path.realpath(exe) if os.path.exists(exe) else None)

    def diff(self, before_rid, after):
        before = {}
        if before_rid:
            man = self.s.manifest(before_rid) or {"files": {}}
            for rel, rec in man["files"].items():
                before[rec.get("name", rel)] = rec.get("sha256")

        def lines(d):
            return "".join("%s: %s\n" % (k, d[k]) for k in sorted(d))

        return dict(before=lines(before), after=lines(after),
                    before_header="release %s" % (before_rid or "(none)"),
                    after_header="release %s" % self.result.get("release_id"))

    def items_and_id(self):
        p = self.p
        if p["executable"] is None or p["files"] is None:
            raise ReleaseError("state=%s needs files and executable (the payload_split result)" % p["state"])
        items = build_items(p["files"], p["executable"])
        rid = p["release_id"] or compute_release_id(items, p["k0s_version"], p["pinned_mtime"])
        return items, check_release_id(rid)

    def run_query(self):
        # A dry run of present: `up_to_date` then means exactly "present would change nothing", so
        # callers may skip it (one module call less per host and run).
        self.check = True
        self.p["switch"] = True
        self.run_present()
        if lstat_or_none(self.s.rollback_record) is not None or self.stale_manifest:
            # present ends a rollback by removing its record, and refreshes a stale manifest.json,
            # even when nothing else changes.
            self.result["up_to_date"] = False
        self.result["host"] = host_facts(self.p["data_dir"])
        self.result.pop("diff", None)

    def run_present(self):
        items, rid = self.items_and_id()
        self.result["release_id"] = rid
        self.check_paths(writing=True)
        self.lock()
        if lstat_or_none(self.s.root) is None:
            self.changes.append("created directory %s" % self.s.root)
        ensure_real_dir(self.s.releases, self.check, self.changes)
        self.cleanup()
        pl = Planner(self.s, items, rid, self.p["pinned_mtime"], self.p["verify"], self.p["link_data_dir"])
        old_cur = self.s.pointer(self.s.current_link)
        problems, missing = pl.missing()
        self.result["corrupt"] = dict((items[r].name, why) for r, why in problems.items() if why != "new")
        self.result["drift"] = self.drift(pl, rid, problems, old_cur)
        links = pl.link_plan()   # raises on foreign data-dir links before anything is built
        pl.bundle = self.check_bundle(items)
        if self.p.get("mirror_url") and not self.check:   # pull: what no bundle or upload provides, from the mirror
            self.result["mirror"] = mirror_fetch.fetch_missing(
                self.p, [n for n in missing if pl.stream_path(self._by_name(items, n)) is None], self.s.streams_dir)
        # Everything needed must be available before anything is switched.
        unavailable = [n for n in missing if pl.stream_path(self._by_name(items, n)) is None]
        if unavailable and not self.check:
            raise ReleaseError(
                "cannot install release %s: no content on the host and no stream in %s for: %s "
                "(expected %s%s); nothing was switched"
                % (rid, self.s.streams_dir, ", ".join(unavailable),
                   ", ".join(os.path.join(self.s.streams_dir, n + ".gz") for n in unavailable),
                   "" if pl.bundle is None else ", or a member of the bundle %s" % self.p["bundle"]))
        self.result["missing"] = missing
        sources = {}
        self.result.update(built=False, repaired={}, sources=sources, selinux_relabeled=[])
        pinned = self.p["pinned_mtime"]
        if not pl.target_exists():
            if not self.check:
                self.build(pl, rid, items, pinned, sources)
            else:
                for it in items.values():
                    sources[it.name] = "link/copy" if pl.host_sources(it) else "stream"
            self.result["built"] = True
            self.changes.append("built release %s (%d files)" % (rid, len(items)))
        else:
            if problems:
                if not self.check:
                    self.repair(pl, rid, items, problems, pinned, sources)
                for rel, why in sorted(problems.items()):
                    self.result["repaired"][items[rel].name] = why
                    self.changes.append("repaired %s in release %s (%s)" % (items[rel].name, rid, why))
            for rel in pl.target_shared():
                if rel not in problems:
                    if not self.check:
                        self.unshare(self.s.release_dir(rid), rel, items[rel])
                    self.changes.append("gave %s in release %s its own copy (it shared its inode with another "
                                        "release, so a write to one changed both)" % (items[rel].name, rid))
            for rel in pl.target_perm_problems():
                if not self.check:
                    set_owner_mode(os.path.join(self.s.release_dir(rid), rel))
                self.changes.append("fixed owner/mode of %s in release %s" % (rel, rid))
            for rel in pl.target_extras():
                self.move_aside(os.path.join(self.s.release_dir(rid), rel), "not part of release %s" % rid)
            if problems or self._manifest_stale(pl, rid, items):
                if self.check:
                    # Not a change anyone sees, but without the refresh every run re-hashes those files.
                    self.stale_manifest = True
                else:
                    self.write_manifest(self.s.release_dir(rid), rid, items, pinned)
        old_prev = self.s.pointer(self.s.previous_link)
        switched = False
        if self.p["switch"]:
            # Everything is built and verified; links name current/..., not a release, so they go in before
            # the switch. The rename of `current` is the last change that can fail the run: what follows is
            # housekeeping that only warns (a caller seeing a failure may rely on `current` being unchanged).
            self.apply_links([x for x in links if x[3] != "remove stale link"])
            switched = self.switch(rid, old_cur)
            if switched:
                self.after_switch("recording the activation time of %s" % rid, self.touch, rid)
            # Links to names the new release lacks: only now, so the old release never misses one while current.
            self.after_switch("removing stale links", self.apply_links,
                              [x for x in links if x[3] == "remove stale link"])
            if not self.check:
                unlink_quietly(self.s.rollback_record)   # an explicit install ends a rollback
            self.prune(self.p["keep_releases"], rid, old_cur if switched and old_cur else old_prev)
        else:
            self.prune(self.p["keep_releases"], old_cur, old_prev, staged=rid)
        self.prune_backups(self.p["keep_backups"])
        self.result["binaries_changed"] = bool(switched or self.result["repaired"])
        self.after_switch("removing used uploads", self.remove_streams, items)
        self.result["up_to_date"] = not self.changes
        if self.want_diff and self.p["state"] == "present":
            self.result["diff"] = self.diff(old_cur, dict((it.name, it.sha256) for it in items.values()))
        self.common_result()
        if self.check:
            self.result["current_release"] = old_cur

    def drift(self, pl, rid, problems, cur):
        """{path: why} for executables that are no longer the release's: <bin_dir>/k0s replaced by a file,
        or other content written over a file of the live release (k0s's autopilot renames the download over
        os.Executable(), which is the release's bin/k0s). present keeps them in backup/ and restores."""
        out = {}
        why = pl.exe_drift()
        if why:
            out[self.s.exe_link] = why
        if rid == cur:
            for rel, reason in sorted(problems.items()):
                if reason.startswith(("size ", "sha256")):
                    out[os.path.join(self.s.release_dir(rid), rel)] = "%s: not the release's content (%s)" % (
                        pl.items[rel].name, reason)
        return out

    def check_bundle(self, items):
        """The uploaded bundle as (path, {name: (offset, size)}), or None; refuses a bundle that does not
        match its member table before anything is built."""
        path = self.p["bundle"]
        if path is None:
            return None
        try:
            table = check_bundle_members(self.p["bundle_members"])
        except PayloadError as e:
            raise ReleaseError("bundle_members: %s; nothing was switched" % e)
        names = set(it.name for it in items.values())
        extra = sorted(set(table) - names)
        if extra:
            raise ReleaseError("bundle %s has members that are not part of release %s: %s (member table from "
                               "another split?); nothing was switched"
                               % (path, self.result.get("release_id"), ", ".join(extra)))
        st = lstat_or_none(path)
        if st is None:
            if self.check:
                return None
            raise ReleaseError("bundle %s does not exist (upload it first); nothing was switched" % path)
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError("bundle %s is not a regular file; nothing was switched" % path)
        try:
            check_bundle_members(self.p["bundle_members"], st.st_size)
        except PayloadError as e:
            raise ReleaseError("bundle %s does not match its member table: %s; nothing was switched" % (path, e))
        return (path, table)

    @staticmethod
    def _by_name(items, name):
        for it in items.values():
            if it.name == name:
                return it
        raise KeyError(name)

    def _manifest_stale(self, pl, rid, items):
        man = pl.manifests.get(rid)
        if man is None:
            return True
        for rel in items:
            rec = man["files"].get(rel) or {}
            st = lstat_or_none(os.path.join(self.s.release_dir(rid), rel))
            if st is None or rec.get("mtime_ns") != st.st_mtime_ns or rec.get("size") != st.st_size:
                return True
        return False

    def remove_streams(self, items):
        b = self.p["bundle"]
        if b is not None:
            st = lstat_or_none(b)
            if st is not None and stat.S_ISREG(st.st_mode):
                if not self.check:
                    os.unlink(b)
                self.changes.append("removed used bundle %s" % b)
        for it in items.values():
            p = os.path.join(self.s.streams_dir, it.stream)
            st = lstat_or_none(p)
            if st is not None and stat.S_ISREG(st.st_mode):
                if not self.check:
                    os.unlink(p)
                self.changes.append("removed used stream %s" % p)

    def _read_rollback_record(self):
        try:
            with open(self.s.rollback_record, "rb") as f:
                rec = json.loads(f.read().decode("utf-8"))
            return rec if isinstance(rec, dict) else None
        except (OSError, ValueError):
            return None

    def run_rollback(self):
        self.check_paths(writing=True)
        self.lock()
        self.cleanup()
        cur = self.s.pointer(self.s.current_link)
        prev = self.s.pointer(self.s.previous_link)
        rec = self._read_rollback_record()
        if rec and cur and rec.get("to") == cur:
            # Already rolled back by an earlier run: a re-run must not flip back again.
            left = rec.get("from")
            if left and left != prev and left in self.s.list_releases():
                # That run was killed between its two renames: finish recording what it left.
                if not self.check:
                    atomic_symlink("releases/" + left, self.s.previous_link)
                self.changes.append("previous: %s -> %s (finishing an interrupted rollback)" % (prev, left))
            self.result.update(release_id=cur, rolled_back_from=left)
            self.common_result()
            return
        if prev is None or prev == cur:
            raise ReleaseError("nothing to roll back to: %s records no previous release%s"
                               % (self.s.previous_link, "" if cur is None else " (current is %s)" % cur))
        man = self.s.manifest(prev)
        if man is None or lstat_or_none(self.s.release_dir(prev)) is None:
            raise ReleaseError("previous release %s is gone or has no manifest.json; cannot roll back" % prev)
        items = {}
        for rel, r in man["files"].items():
            items[rel] = Item(r.get("name"), rel, r.get("size"), r.get("sha256"), r.get("crc32"))
        pl = Planner(self.s, items, prev, man.get("pinned_mtime"), self.p["verify"], self.p["link_data_dir"])
        problems = pl.target_problems()
        if problems:
            raise ReleaseError("previous release %s is damaged (%s); not switching to it. Install it again "
                               "with state=present instead" % (prev, ", ".join(
                                   "%s: %s" % (items[r].name, w) for r, w in sorted(problems.items()))))
        links = pl.link_plan()
        self.result.update(release_id=prev, rolled_back_from=cur)
        # As in present: links first, the switch last, stale links after it (only a warning if that fails).
        self.apply_links([x for x in links if x[3] != "remove stale link"])
        # current := previous first (what matters for running hosts), then previous := the release we left.
        if not self.check:
            # The record goes first, so a run killed between the renames below is finished by the next one.
            atomic_write(self.s.rollback_record, (json.dumps({"from": cur, "to": prev}) + "\n").encode())
            atomic_symlink("releases/" + prev, self.s.current_link)
            if cur:
                atomic_symlink("releases/" + cur, self.s.previous_link)
        self.changes.append("rolled back: current %s -> %s" % (cur, prev))
        self.after_switch("recording the activation time of %s" % prev, self.touch, prev)
        self.after_switch("removing stale links", self.apply_links, [x for x in links if x[3] == "remove stale link"])
        self.prune_backups(self.p["keep_backups"])
        self.result["binaries_changed"] = True
        if self.want_diff:
            self.result["diff"] = self.diff(cur, dict((it.name, it.sha256) for it in items.values()))
        self.common_result()
        if self.check:
            self.result.update(current_release=cur, previous_release=prev)


SPEC = dict(
    argument_spec=dict(
        state=dict(type="str", default="present", choices=["query", "present", "rollback"]),
        release_id=dict(type="str"),
        k0s_version=dict(type="str"),
        files=dict(type="list", elements="dict"),
        executable=dict(type="dict"),
        streams_dir=dict(type="path"),
        bundle=dict(type="path"),
        bundle_members=dict(type="list", elements="dict"),
        bundle_src=dict(type="path"),   # consumed by the action plugin; never reaches the host set
        switch=dict(type="bool", default=True),
        store_dir=dict(type="path", default="/var/lib/fleetsplit-k0s"),
        bin_dir=dict(type="path", default="/usr/bin"),
        libexec_dir=dict(type="path", default="/usr/libexec/k0s"),
        data_dir=dict(type="path", default="/var/lib/k0s"),
        link_data_dir=dict(type="bool", default=True),
        pinned_mtime=dict(type="int"),
        keep_releases=dict(type="int", default=2),
        keep_backups=dict(type="int", default=3),
        verify=dict(type="bool", default=False),
        selinux_relabel=dict(type="bool", default=True),
        **mirror_fetch.MIRROR_OPTIONS
    ),
    required_if=[("state", "present", ("files", "executable")), ("state", "query", ("files", "executable"))],
    required_together=[("bundle", "bundle_members")],
)


def run(module):
    """The k0s_release module (its AnsiballZ and compact transports share this)."""
    p = module.params
    if p["keep_releases"] < 1:
        module.fail_json(msg="keep_releases must be at least 1 (the previous release is always kept), got %d"
                         % p["keep_releases"])
    if p["keep_backups"] < 1:
        module.fail_json(msg="keep_backups must be at least 1 (a run's own backup set is never removed), got %d"
                         % p["keep_backups"])
    if p["pinned_mtime"] is not None and p["pinned_mtime"] < 0:
        module.fail_json(msg="pinned_mtime must be a non-negative number of seconds")
    r = Runner(p, check_mode=module.check_mode, diff=module._diff)
    try:
        r.run()
    except (HostFsError, PayloadError) as e:
        module.fail_json(msg=str(e), changes=r.changes)
    except OSError as e:
        module.fail_json(msg=os_error_message(e), changes=r.changes)
    res = r.result
    for w in res.pop("warnings", []):
        module.warn(w)
    res["changed"] = bool(r.changes) and p["state"] != "query"
    if p["state"] == "query":
        for k in ("backups", "replaced_staged", "links_changed", "pruned", "pruned_backups", "cleaned"):
            res.pop(k, None)
    module.exit_json(**res)
