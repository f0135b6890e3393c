# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The links k0s_release manages outside the store (<bin_dir>/k0s, one link per binary in the real
<libexec_dir>, <data_dir>/bin/<name>), the migration of <libexec_dir> from the symlink earlier versions made
to that directory, and the backup/ directory that keeps whatever was in the way. A mixin of Runner
(release_build); standard library only, no Ansible import, Python 3.6 syntax."""

import errno
import os
import secrets
import shutil
import stat
import time

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    atomic_symlink,
    exchange_paths,
    fsync_dir,
    lstat_or_none,
    make_dirs,
    set_owner_mode,
)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_store import ReleaseError, ensure_real_dir

MIGRATE_SUFFIX = ".fleetsplit-migrate"   # the new libexec directory while it is built beside the old symlink


class LinkOps(object):
    """Needs ``self.s`` (Store), ``self.check``, ``self.changes``, ``self.result`` and ``self._backup_root``."""

    def backup_path(self, path):
        if self._backup_root is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self._backup_root = os.path.join(self.s.backup, "%s-%s" % (stamp, secrets.token_hex(3)))
        return os.path.join(self._backup_root, path.lstrip("/"))

    def _backup_dest(self, path):
        dest = self.backup_path(path)
        if not self.check:
            ensure_real_dir(self.s.backup, False, [], 0o700)
            make_dirs(os.path.dirname(dest), 0o700)
        return dest

    def move_aside(self, path, why="not created by fleetsplit"):
        """Move something that is not ours into the store's backup directory; returns where it went."""
        dest = self._backup_dest(path)
        if not self.check:
            try:
                os.rename(path, dest)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                # Other filesystem: copy, then remove the original only after the copy is complete.
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    shutil.copytree(path, dest, symlinks=True)
                    shutil.rmtree(path)
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(path), dest)
                    os.unlink(path)
                else:
                    shutil.copy2(path, dest)
                    os.unlink(path)
        self.result["backups"][path] = dest
        self.changes.append("moved %s (%s) to %s" % (path, why, dest))
        return dest

    def keep_copy(self, path, why):
        """Put the file ``path`` into backup/ while it stays in place (a hard link: the rename that replaces
        it next leaves no moment without a file there)."""
        dest = self._backup_dest(path)
        if not self.check:
            try:
                os.link(path, dest)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM):
                    raise
                shutil.copy2(path, dest)
        self.result["backups"][path] = dest
        self.changes.append("kept %s (%s) as %s" % (path, why, dest))
        return dest

    def apply_links(self, plan):
        for kind, path, target, action in plan:
            if kind == "libexec":
                self.make_libexec_dir(path, target, action)
                continue
            if action == "remove stale link":
                if not self.check:
                    os.unlink(path)
                    fsync_dir(os.path.dirname(path))
                self.changes.append("removed stale link %s" % path)
                self.result["links_changed"].append(path)
                continue
            if not self.check:
                make_dirs(os.path.dirname(path), 0o755)
            if action == "move aside and replace":
                # A file, directory or foreign symlink: keep it in the backup, never delete it.
                self.move_aside(path)
            elif action == "replace staged file":
                self.result["replaced_staged"].append(path)
            if not self.check:
                atomic_symlink(target, path)
            self.changes.append("%s %s -> %s" % ("link" if action == "create" else action + ":", path, target))
            self.result["links_changed"].append(path)

    def make_libexec_dir(self, path, arg, action):
        """<libexec_dir> as a real directory. ``migrate to directory`` replaces the symlink earlier versions
        made: the new directory is built beside it (the per-binary links, then what k0s wrote into the
        current release's libexec/ moved in, never deleted) and swapped in with one rename."""
        if action == "create directory":
            if not self.check:
                make_dirs(path, 0o755)
            self.changes.append("created directory %s" % path)
            return
        if action == "move aside and create directory":
            self.move_aside(path)
            if not self.check:
                make_dirs(path, 0o755)
            self.changes.append("created directory %s" % path)
            return
        runtime, links = arg
        src = os.path.realpath(self.s.libexec_link_target)
        new = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + MIGRATE_SUFFIX)
        self.changes.append("replaced the symlink %s -> %s by a directory with one link per binary (%s)%s"
                            % (path, self.s.libexec_link_target, ", ".join(n for n, t in links),
                               "; moved k0s's own entries into it: %s" % ", ".join(runtime) if runtime else ""))
        self.result["runtime_moved"] = list(runtime)
        self.result["links_changed"].append(path)
        if self.check:
            return
        # A run killed below left `new` (maybe holding moved entries): it is reused, never removed.
        st = lstat_or_none(new)
        if st is None:
            os.mkdir(new, 0o755)
        elif not stat.S_ISDIR(st.st_mode):
            raise ReleaseError("%s is in the way of the new %s (not a directory); move it away and re-run"
                               % (new, path))
        set_owner_mode(new)
        for name, target in links:
            atomic_symlink(target, os.path.join(new, name))
        for name in runtime:
            if lstat_or_none(os.path.join(new, name)) is not None:
                raise ReleaseError("cannot move %s into %s: %s already exists there (left by an interrupted run?); "
                                   "merge the two by hand and re-run" % (os.path.join(src, name), new, name))
            os.rename(os.path.join(src, name), os.path.join(new, name))
        fsync_dir(new)
        if runtime:
            fsync_dir(src)
        if exchange_paths(new, path):
            os.unlink(new)   # now the old symlink (fleetsplit's own: no backup)
        else:
            os.unlink(path)
            os.rename(new, path)
        fsync_dir(os.path.dirname(path))
