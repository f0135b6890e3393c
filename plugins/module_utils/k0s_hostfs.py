# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""File-system guards and atomic writes for the modules that run on managed hosts (k0s_release,
k0s_service). Standard library only, no Ansible import, kept small: it travels with every module run."""

import errno
import os
import shutil
import stat

TMP_MARK = ".fleetsplit-tmp-"   # every temporary name contains it, so leftovers of killed runs are recognisable


class HostFsError(Exception):
    """A path the modules refuse to write to or through; the message names it."""


def trusted_uids():
    return (0, os.geteuid())


def lstat_or_none(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def tmp_name(directory, base):
    # os.urandom is what secrets.token_hex reads; importing secrets (and random) costs every split's start-up.
    return os.path.join(directory, ".%s%s%s" % (base, TMP_MARK, os.urandom(6).hex()))


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_dir_stat(path, st):
    if not stat.S_ISDIR(st.st_mode):
        raise HostFsError("%s is not a directory" % path)
    if st.st_uid not in trusted_uids():
        raise HostFsError("refusing to write below %s: it is owned by uid %d, not by root" % (path, st.st_uid))
    if st.st_mode & stat.S_IWOTH and not (st.st_mode & stat.S_ISVTX and st.st_uid == 0):
        raise HostFsError("refusing to write below %s: it is world-writable (mode %04o)"
                          % (path, stat.S_IMODE(st.st_mode)))


def check_dir_chain(path, _depth=0):
    """Every existing component of ``path`` must be a safe directory; symlinks must be owned by root."""
    if _depth > 20:
        raise HostFsError("too many levels of symlinks below %s" % path)
    cur = "/"
    check_dir_stat(cur, os.lstat(cur))
    for comp in path.strip("/").split("/"):
        if comp in ("", "."):
            continue
        nxt = os.path.join(cur, comp)
        st = lstat_or_none(nxt)
        if st is None:
            return   # the rest is created by us, below a directory that passed
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in trusted_uids():
                raise HostFsError("refusing to write through %s: it is a symlink owned by uid %d" % (nxt, st.st_uid))
            nxt = os.path.realpath(nxt)
            check_dir_chain(nxt, _depth + 1)
            st = os.lstat(nxt)
        check_dir_stat(nxt, st)
        cur = nxt


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_tree_or_file(path):
    """Remove ``path`` whatever it is (a directory tree, a file, a link: never followed); nothing when absent."""
    st = lstat_or_none(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def make_dirs(path, mode=0o755):
    """Create ``path`` and its missing parents, each with exactly ``mode`` (root-owned when run as root),
    whatever the process umask: os.makedirs leaves parents at 0777 under umask 0, which every later run
    then refuses as world-writable."""
    missing = []
    while lstat_or_none(path) is None:
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue   # created meanwhile (another run waiting for the lock): checked by the caller
        set_owner_mode(d, mode)
    return missing


def set_owner_mode(path, mode=0o755):
    """root:root (when running as root) and ``mode``, never following a symlink for the owner."""
    if os.geteuid() == 0:
        os.chown(path, 0, 0, follow_symlinks=False)
    os.chmod(path, mode)


def atomic_symlink(target, link_path):
    tmp = tmp_name(os.path.dirname(link_path), os.path.basename(link_path))
    os.symlink(target, tmp)
    try:
        os.rename(tmp, link_path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(link_path))


def atomic_write(path, data, mode=0o644):
    """Write ``data`` to a temporary name beside ``path`` (never through a symlink), fsync, set owner
    and mode, rename into place."""
    tmp = tmp_name(os.path.dirname(path), os.path.basename(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        set_owner_mode(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def os_error_message(e):
    """One line for an OSError a module reports: the path it concerns and the reason."""
    return "%s: %s" % (getattr(e, "filename", None) or "file system error", e.strerror or e)


_RENAME_EXCHANGE = 2   # linux/fs.h


def exchange_paths(a, b):
    """Swap the names ``a`` and ``b`` in one renameat2(RENAME_EXCHANGE) (any file types, same file system);
    False when the kernel, libc or file system cannot (the caller then replaces in two steps)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (ImportError, OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, a.encode(), at_fdcwd, b.encode(), ctypes.c_uint(_RENAME_EXCHANGE))
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), b)
    return True
