# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Deterministic tar and cpio (newc) archives of an ``image_tree.scan`` entry list.

Controller side, standard library only. Only the entries reach the archive: names in their sorted order
(directories before their content), permission bits, the entry's mtime, owner root (uid/gid 0, names
``root``), file content and link targets. No build-host data (no user or group names, inode or device
numbers, atime/ctime, absolute paths, archive file name), so two builds of the same entries are
byte-identical wherever the staged tree lies and whatever its on-disk timestamps are.

- **tar**: POSIX.1-2001 (pax), written with ``tarfile``; pax extended headers appear only where ustar cannot
  hold a value (names over 100 bytes, files over 8 GiB), never a time.
- **cpio newc** (``070701``, what the Linux kernel unpacks as initramfs, and ``cpio -H newc``): written here;
  inode numbers count from 1 in entry order, ``nlink`` is 2 for directories and 1 otherwise (no file is a
  hard link of another: the kernel links files with ``nlink >= 2`` and equal inode numbers), header+name and
  data padded to 4 bytes, a symlink's target is its data, ``TRAILER!!!`` last, the archive padded to 512 bytes
  as GNU cpio pads it.

Outputs go to a fresh temporary name beside the destination (``payload.fsio``) and replace it only when the
bytes differ; ``write=False`` computes the same sha256 and size without writing anything.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import stat
import tarfile

from .image_tree import DIR, SYMLINK, TreeError
from .payload.errors import PayloadError
from .payload.fsio import CHUNK, Sink, commit, remove_quietly, sha256_file, temp_path

FORMATS = ("tar", "cpio")
CPIO_MAGIC = b"070701"
CPIO_TRAILER = "TRAILER!!!"
CPIO_BLOCK = 512
U32 = 0xffffffff


class _Out(Sink):
    """Sink with ``tell`` (tarfile asks where it is)."""

    def tell(self):
        return self.size


class _Reader(object):
    """Reads one staged file for an archive, hashing it; ``check`` refuses a file that changed since the scan."""

    def __init__(self, entry):
        self.entry = entry
        self.file = open(entry.source, "rb")
        self.digest = hashlib.sha256()
        self.seen = 0

    def read(self, size=-1):
        data = self.file.read(CHUNK if size is None or size < 0 else size)
        self.digest.update(data)
        self.seen += len(data)
        return data

    def check(self):
        extra = self.file.read(1)
        self.file.close()
        if extra or self.seen != self.entry.size or self.digest.hexdigest() != self.entry.sha256:
            raise TreeError("%s changed while the image was being written (size or sha256 differs from the scan): "
                            "nothing was replaced; run again" % self.entry.source)


def _tar(entries, out):
    archive = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8")
    for entry in entries:
        info = tarfile.TarInfo(entry.path)
        info.mode = entry.mode
        info.mtime = entry.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if entry.kind == DIR:
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        elif entry.kind == SYMLINK:
            info.type = tarfile.SYMTYPE
            info.linkname = entry.target
            archive.addfile(info)
        else:
            info.type = tarfile.REGTYPE
            info.size = entry.size
            reader = _Reader(entry)
            archive.addfile(info, reader)
            reader.check()
    archive.close()


def _pad4(n):
    return b"\0" * (-n % 4)


def _cpio_header(ino, mode, nlink, mtime, size, name):
    encoded = name.encode("utf-8") + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(encoded), 0)
    head = CPIO_MAGIC + b"".join(b"%08X" % f for f in fields) + encoded
    return head + _pad4(len(head))


def _cpio(entries, out):
    for ino, entry in enumerate(entries, 1):
        if entry.kind == DIR:
            out.write(_cpio_header(ino, stat.S_IFDIR | entry.mode, 2, entry.mtime, 0, entry.path))
        elif entry.kind == SYMLINK:
            target = entry.target.encode("utf-8")
            out.write(_cpio_header(ino, stat.S_IFLNK | 0o777, 1, entry.mtime, len(target), entry.path))
            out.write(target + _pad4(len(target)))
        else:
            if entry.size > U32:
                raise TreeError("%s is %d bytes: cpio newc records at most 4 GiB - 1 per file; use tar"
                                % (entry.path, entry.size))
            out.write(_cpio_header(ino, stat.S_IFREG | entry.mode, 1, entry.mtime, entry.size, entry.path))
            reader = _Reader(entry)
            while True:
                block = reader.read(CHUNK)
                if not block:
                    break
                out.write(block)
            reader.check()
            out.write(_pad4(entry.size))
    out.write(_cpio_header(0, 0, 1, 0, 0, CPIO_TRAILER))
    out.write(b"\0" * (-out.size % CPIO_BLOCK))


WRITERS = {"tar": _tar, "cpio": _cpio}


def check_dest(dest, root=None):
    """Refuse a destination whose parent is missing, that is a directory or symlink, or lies inside ``root``."""
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise PayloadError("output %s: its directory %s does not exist; create it first" % (dest, parent))
    if os.path.islink(dest):
        raise PayloadError("output %s is a symlink: refusing to write through it" % dest)
    if os.path.isdir(dest):
        raise PayloadError("output %s is a directory: name the image file, for example %s/k0s.tar" % (dest, dest))
    if os.path.lexists(dest) and not os.path.isfile(dest):
        raise PayloadError("output %s exists and is not a regular file" % dest)
    if root is not None:
        real_root = os.path.realpath(root)
        real_parent = os.path.realpath(parent)
        if real_parent == real_root or real_parent.startswith(real_root.rstrip("/") + "/"):
            raise PayloadError("output %s lies inside the tree it packs (%s): put it elsewhere" % (dest, root))
    return dest


def write_archive(fmt, entries, dest, mode=0o644, write=True):
    """Pack ``entries`` as ``fmt`` (tar or cpio) into ``dest``; returns {sha256, size, changed}.

    The archive is written to a temporary file beside ``dest`` and renamed over it only when the bytes differ
    (then ``changed``); with ``write=False`` nothing is written, the sha256 and size are computed all the same.
    """
    if fmt not in WRITERS:
        raise PayloadError("unknown archive format %r (expected one of %s)" % (fmt, ", ".join(FORMATS)))
    tmp = temp_path(dest) if write else None
    out = _Out(tmp, mode)
    try:
        WRITERS[fmt](entries, out)
        out.close()
        if tmp:
            os.chmod(tmp, mode)    # whatever the umask
        changed = commit(tmp, dest, out.hash.hexdigest(), write=write)
    except BaseException:
        out.discard()
        if tmp:
            remove_quietly(tmp)
        raise
    return dict(sha256=out.hash.hexdigest(), size=out.size, changed=changed)


def commit_file(tmp, dest, mode=0o644, digest=None):
    """A file another writer made at ``tmp`` (the sysext image): replaces ``dest`` only when the bytes differ.
    ``digest``: the sha256 the writer already computed of ``tmp`` (not read again)."""
    try:
        os.chmod(tmp, mode)
        digest, size = digest or sha256_file(tmp), os.path.getsize(tmp)
        changed = commit(tmp, dest, digest)
    except BaseException:
        remove_quietly(tmp)
        raise
    return dict(sha256=digest, size=size, changed=changed)
