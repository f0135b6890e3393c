# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""A staged image tree (the directory overlay of deploy_k0s) as a sorted list of entries, for the image writers.

Controller side, standard library only. ``scan`` walks the tree without following symlinks and returns one
``Entry`` per directory, regular file and symlink below the root, sorted by the path's UTF-8 bytes (a directory
always comes before its content: its path is a prefix of theirs). What an image records is decided here, once,
for every output format (tar, cpio, sysext):

- ownership is not recorded: every writer stores root (0/0);
- the mode is the permission bits (``S_IMODE``) of the staged entry;
- the mtime is the fixed ``epoch`` (reproducible builds, ``SOURCE_DATE_EPOCH``), except for the paths in
  ``keep_mtime``: a stripped legacy k0s re-uses a staged binary only when its mtime equals the executable's
  (docs/overlay.md, "Legacy"), so those keep their on-disk mtime in whole seconds;
- files carry size and sha256 (the writers re-hash while copying and refuse a file that changed meanwhile).

Anything else (devices, fifos, sockets), names with control characters or that are not UTF-8 are refused
naming the path.
"""

from __future__ import absolute_import, division, print_function

import collections
import os
import stat

from .payload.fsio import sha256_file

DIR, FILE, SYMLINK = "dir", "file", "symlink"


class TreeError(Exception):
    """A staged tree that cannot become an image; the message names the path."""


# path: relative posix path (no leading "./"); mode: permission bits; mtime: int seconds; size/sha256: files;
# target: symlink target; source: the absolute path on this machine (read by the writers).
Entry = collections.namedtuple("Entry", "path kind mode mtime size sha256 target source")


def check_entry_name(rel):
    """A relative path an image may record: UTF-8, no control character (newline, DEL) in any component."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise TreeError("%r is not a UTF-8 name: rename it (image formats record names as UTF-8)" % rel)
    bad = [c for c in rel if ord(c) < 0x20 or ord(c) == 0x7f]
    if bad:
        raise TreeError("%r contains the control character %r: refusing to put it into an image" % (rel, bad[0]))
    return rel


def _kind(st, path):
    if stat.S_ISDIR(st.st_mode):
        return DIR
    if stat.S_ISREG(st.st_mode):
        return FILE
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK
    raise TreeError("%s is neither a directory, a regular file nor a symlink (mode %o): an image of the overlay "
                    "holds only those; remove it from the staged tree" % (path, stat.S_IFMT(st.st_mode)))


def check_epoch(epoch):
    """The fixed timestamp: an integer the formats can store (cpio newc: 32 bits unsigned)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= 0xffffffff:
        raise TreeError("epoch must be an integer number of seconds from 0 to 4294967295, got %r" % (epoch,))
    return epoch


def scan(root, epoch=0, keep_mtime=()):
    """Every entry below ``root`` (not the root itself), sorted by path bytes; see the module docstring."""
    check_epoch(epoch)
    try:
        st = os.stat(root)
    except OSError as e:
        raise TreeError("cannot read the staged tree %s: %s" % (root, e.strerror))
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError("staged tree %s is not a directory" % root)
    keep = set()
    for rel in keep_mtime:
        if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
            raise TreeError("keep_mtime entry %r is not a normalised relative path (like usr/bin/k0s)" % (rel,))
        keep.add(rel)
    entries = []
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            names = os.listdir(directory)
        except OSError as e:
            raise TreeError("cannot list %s: %s" % (directory, e.strerror))
        for name in names:
            rel = check_entry_name(prefix + name)
            path = os.path.join(directory, name)
            st = os.lstat(path)
            kind = _kind(st, path)
            mtime = st.st_mtime_ns // 1000000000 if rel in keep else epoch
            if rel in keep:
                keep.discard(rel)
                if kind != FILE:
                    raise TreeError("keep_mtime entry %s is a %s, not a regular file" % (rel, kind))
                check_epoch(mtime)
            size = sha = target = None
            if kind == FILE:
                size, sha = st.st_size, sha256_file(path)
            elif kind == SYMLINK:
                target = check_entry_name(os.readlink(path))
            else:
                stack.append((rel + "/", path))
            entries.append(Entry(rel, kind, stat.S_IMODE(st.st_mode), mtime, size, sha, target, path))
    if keep:
        raise TreeError("keep_mtime names %s, which %s not in the staged tree %s"
                        % (", ".join(sorted(keep)), "are" if len(keep) > 1 else "is", root))
    entries.sort(key=lambda e: e.path.encode("utf-8"))
    return entries


def apply_tree(entries):
    """Give every entry's ``source`` its recorded mode and mtime on disk (symlinks: mtime only, not followed).

    For writers that pack a directory with an external tool (mksquashfs, mkfs.erofs): after this the tree on
    disk says what the entries say. Directories are done last, deepest first: timing their content first would
    otherwise change nothing, but a chmod of a directory to read-only before its content would block it.
    """
    for entry in sorted(entries, key=lambda e: (e.kind == DIR, -e.path.count("/"))):
        if entry.kind != SYMLINK:
            os.chmod(entry.source, entry.mode)
        os.utime(entry.source, ns=(entry.mtime * 1000000000,) * 2, follow_symlinks=False)


def summary(entries):
    """Counts per kind and the bytes of file content, for results and logs."""
    out = {DIR: 0, FILE: 0, SYMLINK: 0, "bytes": 0}
    for entry in entries:
        out[entry.kind] += 1
        out["bytes"] += entry.size or 0
    return out
