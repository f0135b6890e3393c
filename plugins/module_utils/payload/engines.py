# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The deflate engine the controller inflates and compresses with: isal, then zlib-ng, then the standard zlib.

Controller side only. ``isal`` (ISA-L) and ``zlib-ng`` inflate about three times faster than zlib, with
the same output (deflate decoding is exact; CRC-32, size and sha256 are still checked). Both are optional:
without them zlib is used. Hosts never import this file: ``payload.streams`` takes the engine as a
parameter and defaults to zlib.

``FLEETSPLIT_DEFLATE_ENGINE`` (``auto``, ``isal``, ``zlib-ng``, ``zlib``) overrides the choice: tests run the
format tests under each engine and under zlib alone, and the benchmark measures "without the fast engine"
through it. Compressed output depends on the engine (isal has levels 0-3, its own encoder); every stream
the controller writes is verified by inflating, never compared to another engine's bytes.
"""

from __future__ import absolute_import, division, print_function

import os
import zlib

from .errors import PayloadError

ENV = "FLEETSPLIT_DEFLATE_ENGINE"
ORDER = ("isal", "zlib-ng", "zlib")      # fastest first (inflate, measured in docs/performance.md)


class Engine(object):
    """One zlib-compatible module behind the calls the payload library makes.

    Quacks like the ``zlib`` module (what ``payload.streams`` takes): ``decompressobj``, ``crc32``,
    ``DEFLATED`` and ``error`` are the module's own; ``compressobj`` takes zlib's levels 0-9 (-1: 6) and
    maps them to the engine's range.
    """

    def __init__(self, name, module, version, max_level=9):
        self.name = name
        self.module = module
        self.version = version
        self.max_level = max_level
        self.decompressobj = module.decompressobj
        self.crc32 = module.crc32
        self.DEFLATED = module.DEFLATED
        self.error = module.error

    def compressobj(self, level=-1, method=zlib.DEFLATED, wbits=15):
        level = 6 if level == -1 else level
        if self.max_level < 9:   # isal 0-3: zlib's fast levels 1-3 -> 1, 4-6 -> 2, 7-9 -> 3 (0 stays 0)
            level = (level + 2) // 3
        return self.module.compressobj(level, method, wbits)

    def describe(self):
        return {"name": self.name, "version": self.version}


def _load(name):
    """The Engine ``name``, or the reason it cannot be used (a string)."""
    if name == "zlib":
        return Engine("zlib", zlib, zlib.ZLIB_RUNTIME_VERSION)
    try:
        if name == "isal":
            import isal
            from isal import isal_zlib
            return Engine("isal", isal_zlib, getattr(isal, "__version__", "unknown"), max_level=isal_zlib.ISAL_BEST_COMPRESSION)
        if name == "zlib-ng":
            import zlib_ng
            from zlib_ng import zlib_ng as zng
            return Engine("zlib-ng", zng, getattr(zlib_ng, "__version__", "unknown"))
    except ImportError as e:
        return "cannot be imported (%s)" % e
    return None


_cache = {}


def available():
    """Names of the engines this Python can use, fastest first (zlib always)."""
    return [name for name in ORDER if isinstance(get(name, strict=False), Engine)]


def get(name, strict=True):
    """The Engine ``name`` (cached). Unusable: PayloadError when ``strict``, else the reason string."""
    if name not in ORDER:
        raise PayloadError("unknown deflate engine %r (from %s or an engine argument): use auto, %s"
                           % (name, ENV, ", ".join(ORDER)))
    if name not in _cache:
        _cache[name] = _load(name)
    found = _cache[name]
    if strict and not isinstance(found, Engine):
        raise PayloadError("deflate engine %r %s: install it on the controller (pip install isal zlib-ng; "
                           "meta/ee-requirements.txt lists them for execution environments) or set %s to auto "
                           "(the fastest installed)" % (name, found, ENV))
    return found


def select(name=None):
    """The engine to use: ``name`` (or an Engine, returned as it is), else ``$FLEETSPLIT_DEFLATE_ENGINE``, else
    (``auto``) the fastest installed."""
    if isinstance(name, Engine):
        return name
    name = (name or os.environ.get(ENV) or "auto").strip().lower()
    if name != "auto":
        return get(name)
    for candidate in ORDER:
        found = get(candidate, strict=False)
        if isinstance(found, Engine):
            return found
    return get("zlib")
