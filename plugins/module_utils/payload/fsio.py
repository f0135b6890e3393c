# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Files the payload library reads and writes: name checks, safe output paths, temp files and their commit.

Host side too (Python 3.6, standard library only). Outputs are written to a temporary name beside the
final path (``temp_path``, ``open_exclusive``) through a ``Sink`` that counts and checksums them, then
renamed into place by ``commit`` unless the final file already holds the same bytes.
"""

from __future__ import absolute_import, division, print_function

import errno
import hashlib
import os
import stat
import zlib

from .errors import PayloadError

CHUNK = 1 << 17            # bytes read per call: small enough that each piece stays in cache


def sha256_file(path, start=0, length=None):
    """Hex sha256 of a file, or of ``length`` bytes from ``start``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            block = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                if remaining:
                    raise PayloadError("%s: expected %d more bytes at offset %d" % (path, remaining, f.tell()))
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()


def check_name(name):
    """Refuse names that could escape the target directory or mean something else on disk."""
    if not name:
        raise PayloadError("embedded name is empty")
    if "\x00" in name:
        raise PayloadError("embedded name %r contains a NUL byte" % name)
    if name in (".", ".."):
        raise PayloadError("embedded name %r is not a file name" % name)
    if "/" in name or "\\" in name:
        raise PayloadError("embedded name %r contains a path separator (absolute or nested paths are refused)" % name)
    if any(ord(c) < 0x20 for c in name):
        raise PayloadError("embedded name %r contains a control character" % name)
    return name


def check_names(names):
    """``check_name`` for each, and no name twice."""
    seen = set()
    for name in names:
        check_name(name)
        if name in seen:
            raise PayloadError("embedded name %r occurs twice (Go would use the first, Python the last): refusing" % name)
        seen.add(name)


def check_output_dir(path):
    """A directory we write into: not a symlink, and not world-writable unless we own it."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise PayloadError("cannot use output directory %s: %s" % (path, e.strerror))
    if stat.S_ISLNK(st.st_mode):
        raise PayloadError("output directory %s is a symlink: refusing to write through it" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise PayloadError("output path %s exists and is not a directory" % path)
    if st.st_mode & stat.S_IWOTH and st.st_uid != os.geteuid():
        raise PayloadError("output directory %s is world-writable and owned by uid %d, not by us: refusing to write there"
                           % (path, st.st_uid))


def ensure_output_dir(path, mode=0o755):
    """Create ``path`` (and parents) if missing, then apply ``check_output_dir``."""
    if not os.path.lexists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            ensure_output_dir(parent, mode)
        else:
            check_output_dir(parent)
        try:
            os.mkdir(path, mode)
            os.chmod(path, mode)    # the mode asked for, whatever the umask
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise PayloadError("cannot create directory %s: %s" % (path, e.strerror))
    check_output_dir(path)


def _check_private_parent(parent, path):
    """Who may rename entries of ``parent`` may swap ``path``: only us or root, or anyone in a sticky dir (/tmp)."""
    st = os.lstat(parent)
    if stat.S_ISLNK(st.st_mode):
        raise PayloadError("controller cache directory %s is a symlink (it holds %s): refusing to use it; make it a "
                           "real directory owned by you" % (parent, path))
    if st.st_uid not in (0, os.geteuid()) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        raise PayloadError("controller cache directory %s (it holds %s) is writable by other users (mode %04o, uid %d):"
                           " refusing to use it; run `chmod go-w %s` or use another k0s_controller_cache_dir"
                           % (parent, path, stat.S_IMODE(st.st_mode), st.st_uid, parent))


def ensure_private_dir(path, write=True, _nested=False):
    """A directory only its owner (this process's user) can read or write, as ssh wants a private key.

    Created 0700 (parents too) when missing. An existing one is refused when it is a symlink, not a
    directory, owned by another user, or group/world-writable (someone else may have put content there);
    one that is only group/world-readable is tightened to 0700. Its parent must not be a symlink nor
    writable by other users. Returns "created", "tightened" or None; with ``write=False`` only checks
    and says what it would do.
    """
    fix = "check what is in it (or remove it: it is a cache), then run `chmod 700 %s`" % path
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        if ensure_private_dir(parent, write, _nested=True) == "created" and not write:
            return "created"
    if not _nested:
        _check_private_parent(parent, path)
    if not os.path.lexists(path):
        if not write:
            return "created"
        try:
            os.mkdir(path, 0o700)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise PayloadError("cannot create directory %s: %s" % (path, e.strerror))
        else:
            os.chmod(path, 0o700)
            return "created"
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PayloadError("controller cache directory %s is a symlink: refusing to use it; make it a real directory "
                           "(mode 0700) owned by you" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise PayloadError("controller cache directory %s exists and is not a directory" % path)
    if st.st_uid != os.geteuid():
        raise PayloadError("controller cache directory %s is owned by uid %d, not by you (uid %d): refusing to use it; "
                           "remove it or use another k0s_controller_cache_dir" % (path, st.st_uid, os.geteuid()))
    if st.st_mode & 0o022:
        raise PayloadError("controller cache directory %s is group/world-writable (mode %04o): refusing to use it; %s"
                           % (path, stat.S_IMODE(st.st_mode), fix))
    if st.st_mode & 0o077:
        if write:
            os.chmod(path, 0o700)
        return "tightened"
    return None


def check_output_file(path):
    """An output file may be replaced, but never through a symlink or over a non-file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise PayloadError("output %s is a symlink: refusing to write through it" % path)
    if not stat.S_ISREG(st.st_mode):
        raise PayloadError("output %s exists and is not a regular file" % path)
    return st


def prepare_output(final, *directories):
    """Create and check ``directories``, then check that ``final`` may be replaced."""
    for directory in directories:
        ensure_output_dir(directory)
    check_output_file(final)


def temp_path(final):
    """A fresh temporary name beside ``final`` (same directory, so the rename is atomic)."""
    directory, base = os.path.split(final)
    return os.path.join(directory, ".%s.fleetsplit-%d-%s.tmp" % (base, os.getpid(), os.urandom(4).hex()))


def open_exclusive(path, mode):
    """A new file opened for writing; never follows a symlink or reuses an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        raise PayloadError("cannot create %s: %s" % (path, e.strerror))
    return os.fdopen(fd, "wb")


def write_error(path, exc):
    """The PayloadError for a failed write (a full disk is said as such)."""
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return PayloadError("no space left on device while writing %s; nothing was replaced" % path)
    return PayloadError("cannot write %s: %s" % (path, getattr(exc, "strerror", None) or exc))


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class Sink(object):
    """Counts, checksums and (optionally) writes the bytes of one output file.

    ``crc32``: the CRC-32 function (zlib's by default; the controller passes its engine's, which computes
    the same value with carry-less multiplication, about ten times faster than zlib's).
    """

    def __init__(self, path=None, mode=0o755, crc32=zlib.crc32):
        self.path = path
        self.size = 0
        self.crc32 = 0
        self._crc32 = crc32
        self.hash = hashlib.sha256()
        self.file = open_exclusive(path, mode) if path else None

    def write(self, data):
        self.size += len(data)
        self.crc32 = self._crc32(data, self.crc32)
        self.hash.update(data)
        if self.file is not None:
            try:
                self.file.write(data)
            except (IOError, OSError) as e:
                raise write_error(self.path, e)

    def close(self, fsync=True):
        if self.file is not None:
            try:
                self.file.flush()
                if fsync:
                    os.fsync(self.file.fileno())
                self.file.close()
            except (IOError, OSError) as e:
                self.file.close()
                raise write_error(self.path, e)
            self.file = None

    def discard(self):
        if self.file is not None:
            try:
                self.file.close()
            except (IOError, OSError):
                pass
            self.file = None
        if self.path:
            remove_quietly(self.path)


def file_sha256_if_regular(path):
    """sha256 of an existing output file, None when there is none (symlinks and non-files are refused)."""
    st = check_output_file(path)
    if st is None:
        return None
    return sha256_file(path)


def commit(temp, final, new_sha256, write=True):
    """Rename ``temp`` over ``final`` unless ``final`` already holds the same bytes. Returns True if replaced."""
    old = file_sha256_if_regular(final)
    if old == new_sha256:
        if temp:
            remove_quietly(temp)
        return False
    if write:
        os.rename(temp, final)
    return True
