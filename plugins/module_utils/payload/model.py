# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""What ``inspect`` finds: the payload of one executable and its entries (host side: Python 3.6)."""

from __future__ import absolute_import, division, print_function

FORMAT_ZIP = "zip"
FORMAT_LEGACY = "legacy"
FORMAT_BARE = "bare"
FORMAT_K3S = "k3s"          # a k3s executable: its data archive is embedded in the Go image (payload/k3s.py)

METHOD_STORE = "store"
METHOD_DEFLATE = "deflate"


class Entry(object):
    """One embedded binary and where its compressed bytes sit in the executable."""

    __slots__ = ("name", "size", "crc32", "method", "data_offset", "compressed_size",
                 "member_offset", "member_size", "sha256")

    def __init__(self, name, size, crc32, method, data_offset, compressed_size,
                 member_offset=None, member_size=None, sha256=None):
        self.name = name
        self.size = size                     # inflated size
        self.crc32 = crc32
        self.method = method                 # "deflate" or "store"
        self.data_offset = data_offset       # absolute offset of the raw compressed bytes
        self.compressed_size = compressed_size
        self.member_offset = member_offset   # legacy: whole gzip member (header..trailer)
        self.member_size = member_size
        self.sha256 = sha256                 # known once inflated (legacy scan or extraction)

    def as_dict(self):
        return dict((k, getattr(self, k)) for k in self.__slots__)


class Payload(object):
    """What ``inspect`` found in one executable."""

    def __init__(self, path, file_size, fmt, elf_end, entries, elf_machine, k0s_version,
                 mtime_ns, bin_data_size=None, zip64=False, images=None, engine=None):
        self.path = path
        self.file_size = file_size
        self.format = fmt
        self.elf_end = elf_end
        self.payload_offset = elf_end
        self.payload_size = file_size - elf_end
        self.entries = entries               # embedded binaries (names as written to libexec)
        self.images = images or []           # image bundles (zip ``images/<name>``): never binaries
        self.elf_machine = elf_machine
        self.k0s_version = k0s_version
        self.mtime_ns = mtime_ns
        self.bin_data_size = bin_data_size
        self.zip64 = zip64
        self.engine = engine                 # controller: the deflate engine inspect chose (payload.engines)

    @property
    def stripped_size(self):
        return self.payload_offset

    def names(self):
        return [e.name for e in self.entries]
