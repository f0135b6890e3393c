# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""Outputs of a k3s split: the ``<data-dir>/data/<hash>/`` tree laid out as k3s's own extraction leaves it, and
one gzip member per distinct file content for hosts (``<streams>/k3s/<sha256>.gz``).

Controller side. ``Writer`` is the visitor ``payload.k3s.walk`` hands every member to, so the tree and the
streams come from one decompression pass. The tree follows ``cmd/k3s/main.go`` extract(): built in
``data/<hash>-tmp`` under k3s's lock ``data/.lock``, renamed to ``data/<hash>``, then the stable CNI links in
``data/cni/`` and ``current``/``previous``. k3s starts from such a tree without extracting again because
``data/<hash>/bin/k3s`` exists; it checks nothing else, so a tree that differs from the archive is rebuilt here.
The k3s rules themselves (lock, temporary tree, tree check, CNI links, rotation) are the host library's
(module_utils/k3s_tree.py), shared with k3s_data.
"""

from __future__ import absolute_import, division, print_function

import errno
import os
import shutil
import struct
import zlib

from ..k0s_hostfs import make_dirs, remove_tree_or_file
from ..k3s_tree import (TREE_MODE, Lock, cni_links as k3s_cni_links, cni_names, foreign_entries, fresh_tmp,
                        install_tree, rotate, stale_links, tree_problems as k3s_tree_problems)
from .errors import PayloadError
from .fsio import Sink, check_output_dir, commit, remove_quietly, temp_path
from .k3s import walk
from .streams import GZIP_HEADER


class GzipWriter(object):
    """One gzip member of the bytes written to it (our fixed header, raw deflate, CRC-32 and size), as
    ``streams.executable_stream`` frames the executable: hosts inflate it with ``streams.inflate_gzip_member``."""

    def __init__(self, temp, engine, level):
        self.sink = Sink(temp, 0o644)
        self.sink.write(GZIP_HEADER)
        self.engine = engine
        self.compressor = engine.compressobj(level, zlib.DEFLATED, -15)
        self.crc32 = 0
        self.size = 0

    def write(self, data):
        self.crc32 = self.engine.crc32(data, self.crc32)
        self.size += len(data)
        self.sink.write(self.compressor.compress(data))

    def finish(self):
        self.sink.write(self.compressor.flush())
        self.sink.write(struct.pack("<II", self.crc32 & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        self.sink.close(fsync=False)
        return self.sink


class Writer(object):
    """Writes what ``walk`` streams: members into ``tree`` (a fresh directory) and, for the member paths in
    ``wanted`` (True: every file), a gzip stream into ``streams`` named by the content's sha256 (``write=False``:
    only its facts). ``defer``: streams stay temporary files (``deferred``) until ``commit_deferred``."""

    def __init__(self, tree=None, streams=None, wanted=(), engine=zlib, level=6, write=True, defer=False):
        self.tree, self.streams, self.wanted = tree, streams, wanted if wanted is True else set(wanted)
        self.engine, self.level, self.write = engine, level, write
        self.written = {}      # sha256 -> {stream, stream_size, stream_sha256, changed}
        self.deferred = {} if defer else None   # sha256 -> (temp, final, stream_size, stream_sha256)
        self.file = self.gzip = None

    def open_file(self, item):
        writers = []
        if self.tree:
            path = os.path.join(self.tree, item["path"])
            make_dirs(os.path.dirname(path), TREE_MODE)
            self.file = Sink(path, 0o600)
            writers.append(self.file)
        if self.streams and (self.wanted is True or item["path"] in self.wanted):
            self.gzip = GzipWriter(temp_path(os.path.join(self.streams, "member.gz")) if self.write else None,
                                   self.engine, self.level)
            writers.append(self.gzip)
        return writers

    def close(self, item):
        path = os.path.join(self.tree, item["path"]) if self.tree else None
        if item["type"] == "file":
            if self.file is not None:
                self.file.close(fsync=False)
                os.chmod(path, item["mode"])     # pkg/untar creates it with the header's permission bits
                self.file = None
            if self.gzip is not None:
                sink = self.gzip.finish()
                self.gzip = None
                final = os.path.join(self.streams, item["sha256"] + ".gz")
                digest = sink.hash.hexdigest()
                if self.deferred is not None:
                    if item["sha256"] in self.deferred:      # a content met again: one stream is enough
                        remove_quietly(sink.path)
                    else:
                        self.deferred[item["sha256"]] = (sink.path, final, sink.size, digest)
                    return
                changed = commit(sink.path, final, digest, write=self.write) if self.write else True
                self.written[item["sha256"]] = {"stream": final, "stream_size": sink.size, "stream_sha256": digest,
                                                "changed": changed}
        elif path and item["type"] == "dir":
            make_dirs(path, TREE_MODE)
            os.chmod(path, TREE_MODE)
        elif path:
            make_dirs(os.path.dirname(path), TREE_MODE)
            os.symlink(item["target"], path)

    def commit_deferred(self, sha):
        temp, final, size, digest = self.deferred.pop(sha)
        self.written[sha] = {"stream": final, "stream_size": size, "stream_sha256": digest,
                             "changed": commit(temp, final, digest)}

    def discard_deferred(self):
        for temp, dummy, dummy2, dummy3 in (self.deferred or {}).values():
            remove_quietly(temp)
        self.deferred = {} if self.deferred is not None else None

    def abort(self):
        for sink in (self.file, self.gzip and self.gzip.sink):
            if sink is not None:
                sink.discard()
        self.file = self.gzip = None
        self.discard_deferred()
        if self.tree:
            shutil.rmtree(self.tree, ignore_errors=True)


class FirstPass(object):
    """A first split (``<dest>/data/<hash>`` absent, or no stream in ``<streams>/k3s`` yet: nothing to compare):
    the walk that checks the archive also writes those outputs, so it is decompressed once. The tree goes to
    ``data/<hash>-tmp`` under k3s's lock (held until ``release``) and is renamed only by ``write_data_dir`` after
    every check; streams stay temporary files until committed. ``release`` removes whatever was not installed,
    and on a refusal the directories this created: nothing is left in ``dest`` or ``streams``."""

    def __init__(self, archive, dest, streams_dest, engine, level=6):
        self.created, self.lock, self.tmp, self.final, self.writer = [], None, None, None, None
        try:
            streams = None
            if dest:
                data, final = _paths(dest, archive)
                if not os.path.lexists(final):
                    # the links known before the walk, refused before anything is written (the rest: write_data_dir)
                    refuse_foreign([os.path.join(data, "current"), os.path.join(data, "cni", "cni")])
                    self.created += make_dirs(data, TREE_MODE)
                    check_output_dir(data)
                    self.lock = Lock(data)
                    self.lock.__enter__()
                    self.tmp, self.final = fresh_tmp(final), final
            if streams_dest:
                path = os.path.join(streams_dest, "k3s")
                if not (os.path.isdir(path) and any(n.endswith(".gz") for n in os.listdir(path))):
                    self.created += make_dirs(path, TREE_MODE)
                    check_output_dir(path)
                    streams = path
            if self.tmp or streams:
                self.writer = Writer(self.tmp, streams, True, engine, level, defer=True)
        except BaseException:
            self.release()
            raise

    def release(self):
        if self.writer is not None:
            self.writer.discard_deferred()
        failed = self.final is not None and not os.path.lexists(self.final)
        if self.tmp:
            remove_tree_or_file(self.tmp)
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None
            if failed and self.created and os.path.dirname(self.final) in self.created:
                remove_quietly(os.path.join(os.path.dirname(self.final), ".lock"))
        for path in sorted(self.created, key=len, reverse=True):   # children first; only empty ones go
            try:
                os.rmdir(path)
            except OSError:
                pass
        self.created = []


# --------------------------------------------------------------------------- the data dir

def _paths(dest, archive):
    data = os.path.join(os.path.abspath(dest), "data")
    return data, os.path.join(data, archive.data_hash)


def _members(archive):
    return dict((m["path"], m) for m in archive.members)


def cni_links(dest, archive):
    """{link path: target} k3s makes in ``data/cni/``: ``cni`` and every ``bin/<name>`` that is a symlink to ``cni``."""
    data, final = _paths(dest, archive)
    return k3s_cni_links(data, final, cni_names(_members(archive)))


def tree_problems(dest, archive):
    """Why ``<dest>/data/<hash>`` is not exactly the archive's tree (empty: it is). Files are hashed."""
    dummy, final = _paths(dest, archive)
    problems = k3s_tree_problems(final, _members(archive))
    if problems is None:
        return ["data/%s is missing" % archive.data_hash]
    return ["%s: %s" % item for item in sorted(problems.items())]


def links_problems(dest, archive):
    """The CNI links and ``current`` that are not as k3s leaves them after extracting this archive."""
    data, final = _paths(dest, archive)
    wanted = cni_links(dest, archive)
    wanted[os.path.join(data, "current")] = final
    return stale_links(wanted)


def refuse_foreign(paths):
    for path in foreign_entries(paths):
        raise PayloadError("%s exists and is not a symlink; k3s keeps only links there: move it away" % path)


def write_data_dir(src, archive, dest, build, streams=None, wanted=(), engine=zlib, level=6, first=None):
    """Make ``<dest>`` a k3s data dir holding this archive: the tree rebuilt when ``build`` (in ``<hash>-tmp``,
    then renamed, a differing old tree removed only after), the CNI links and ``current``/``previous``.
    ``first``: a FirstPass that already wrote ``<hash>-tmp`` (and holds the lock).
    Returns the Writer (the streams it wrote, when ``wanted`` names members)."""
    data, final = _paths(dest, archive)
    make_dirs(data, TREE_MODE)
    check_output_dir(data)
    links = cni_links(dest, archive)
    refuse_foreign(list(links) + [os.path.join(data, "current")])
    prebuilt = first is not None and first.tmp is not None
    lock = None if prebuilt else Lock(data).__enter__()   # a FirstPass holds it already
    try:
        writer = Writer(streams=streams, wanted=wanted, engine=engine, level=level)
        if build and not prebuilt:
            writer.tree = fresh_tmp(final)    # k3s's own temporary name; it removes a leftover first, so do we
        if wanted or (build and not prebuilt):
            walk(src, archive, writer)
        if prebuilt:
            writer.tree = first.tmp
        if build:
            old = install_tree(writer.tree, final, os.path.join(data, ".%s.fleetsplit-%d.old"
                                                                % (archive.data_hash, os.getpid())))
            if old:
                remove_tree_or_file(old)
        rotate(data, final, links)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return writer


def ensure_streams_dir(streams_dest):
    path = os.path.join(streams_dest, "k3s")
    try:
        make_dirs(path, TREE_MODE)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise PayloadError("cannot create %s: %s" % (path, e.strerror))
    check_output_dir(path)
    return path
