# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""A systemd-sysupdate channel for sysext images: a directory served over HTTP (docs/sysext.md).

Controller side, standard library only. The directory holds one image per k0s version named
``<name>-<version>-<arch>.raw`` (flatcar/sysext-bakery's naming), a ``SHA256SUMS`` listing exactly those
images, and ``<name>.conf``, a sysupdate.d transfer definition (systemd >= 257 also reads it as
``<name>.transfer``). The rules here follow systemd's src/sysupdate: ``@v`` is matched up to the first
occurrence of the literal after it (sysupdate-pattern.c), a version may hold only ``A-Za-z0-9.,_-+``
(version_is_valid), newest = ``strverscmp_improved`` (src/fundamental/string-util-fundamental.c), and
``%`` in a value starts a specifier (``%a`` is the architecture in systemd's spelling, ``%%`` a literal %).
"""

from __future__ import absolute_import, division, print_function

import os
import re

from .image_sysext import SYSTEMD_ARCHITECTURES, SysextError, check_options, systemd_architecture
from .payload.fsio import sha256_file

SUMS = "SHA256SUMS"
DEFAULT_TARGET_DIR = "/var/lib/extensions.d"   # not a directory systemd-sysext merges from
_VERSION = re.compile(r"\A[A-Za-z0-9.,_+-]+\Z")
_TARGET = re.compile(r"\A/[A-Za-z0-9._/-]*\Z")


class ChannelError(Exception):
    """A channel input refused; the message names the option or file."""


def version_is_valid(version):
    return bool(version) and version not in (".", "..") and len(version) < 256 and bool(_VERSION.match(version))


def _segments_cmp(a, b):
    return (a > b) - (a < b)


def strverscmp_improved(a, b):
    """systemd's version order: -1, 0, 1 (``~`` pre-release oldest, ``-`` before ``^`` before ``.``)."""
    def valid(c):
        return c.isdigit() or (c.isalpha() and c.isascii()) or c in "~-^."

    i = j = 0
    while True:
        while i < len(a) and not valid(a[i]):
            i += 1
        while j < len(b) and not valid(b[j]):
            j += 1
        ca, cb = a[i:i + 1], b[j:j + 1]
        # "~" sorts before everything, even the end; then the end; then "-", "^", "." in that order
        # (systemd src/fundamental/string-util-fundamental.c): each restarts the loop after both advance.
        mark = "~" if "~" in (ca, cb) else None
        if mark is None:
            if not ca or not cb:
                return _segments_cmp(ca != "", cb != "")
            mark = next((m for m in "-^." if m in (ca, cb)), None)
        if mark is not None:
            r = _segments_cmp(ca != mark, cb != mark)
            if r:
                return r
            i, j = i + 1, j + 1
            continue
        if ca.isdigit() or cb.isdigit():
            ea, eb = i, j
            while ea < len(a) and a[ea].isdigit():
                ea += 1
            while eb < len(b) and b[eb].isdigit():
                eb += 1
            r = _segments_cmp(ea != i, eb != j)
            if r:
                return r
            na, nb = a[i:ea].lstrip("0"), b[j:eb].lstrip("0")
            r = _segments_cmp(len(na), len(nb)) or _segments_cmp(na, nb)
            if r:
                return r
        else:
            ea, eb = i, j
            while ea < len(a) and a[ea].isascii() and a[ea].isalpha():
                ea += 1
            while eb < len(b) and b[eb].isascii() and b[eb].isalpha():
                eb += 1
            n = min(ea - i, eb - j)
            r = _segments_cmp(a[i:i + n], b[j:j + n]) or _segments_cmp(ea - i, eb - j)
            if r:
                return r
        i, j = ea, eb


def pattern(name):
    """The MatchPattern of source and target: ``<name>-@v-%a.raw``."""
    return "%s-@v-%%a.raw" % name


def match(pattern_text, filename, architecture):
    """The version ``filename`` carries under ``pattern_text`` (after %a/%% expansion), None if it does not
    match: the literal before @v must start the name, @v runs to the first occurrence of the next literal."""
    expanded = pattern_text.replace("%a", "\0a").replace("%%", "%").replace("\0a", architecture)
    head, sep, tail = expanded.partition("@v")
    if not sep or not filename.startswith(head):
        return None
    rest = filename[len(head):]
    end = rest.find(tail) if tail else len(rest)
    if end < 0 or rest[end + len(tail):] != "":
        return None
    version = rest[:end]
    return version if version_is_valid(version) else None


def image_filename(name, version, architecture):
    if not version_is_valid(version):
        raise ChannelError("k0s version %r is not a valid sysupdate version (A-Z a-z 0-9 . , _ - + only, "
                           "systemd src/sysupdate version_is_valid)" % (version,))
    filename = "%s-%s-%s.raw" % (name, version, architecture)
    if match(pattern(name), filename, architecture) != version:
        raise ChannelError("version %r does not read back from %s under %s: sysupdate would see another version"
                           % (version, filename, pattern(name)))
    return filename


def check_url(url):
    """An http(s) URL without whitespace or control characters, ending in / (the directory)."""
    if not isinstance(url, str) or not re.match(r"\Ahttps?://[^/\s?#]+(/[^\s]*)?\Z", url) \
            or any(ord(c) < 0x21 or ord(c) == 0x7f for c in url) or "?" in url or "#" in url:
        raise ChannelError("k0s_sysext_channel_url=%r is not an http:// or https:// URL of a directory without "
                           "whitespace, control characters, query or fragment" % (url,))
    return url if url.endswith("/") else url + "/"


def check_target_dir(path):
    if not _TARGET.match(path or "") or "//" in path or any(p in (".", "..") for p in path.split("/")):
        raise ChannelError("k0s_sysext_target_dir=%r is not a plain absolute path (A-Z a-z 0-9 . _ - /)" % (path,))
    return path.rstrip("/") or "/"


def channel_images(directory, name):
    """{filename: (version, architecture)} of the channel's images of ``name`` (any architecture)."""
    found = {}
    for filename in os.listdir(directory):
        if not filename.endswith(".raw") or filename.startswith("."):
            continue
        for arch in SYSTEMD_ARCHITECTURES:
            version = match(pattern(name), filename, arch)
            if version and os.path.isfile(os.path.join(directory, filename)) \
                    and not os.path.islink(os.path.join(directory, filename)):
                found[filename] = (version, arch)
    return found


def sha256sums(directory, name, planned=None):
    """SHA256SUMS text: ``<sha256>  <file>`` per image of ``name``, sorted by file name (bytes); ``planned``
    ({file: sha256}) stands for images about to be copied in (check mode sees the result without the copy)."""
    digests = dict((f, None) for f in channel_images(directory, name))
    digests.update(planned or {})
    return "".join("%s  %s\n" % (digests[f] or sha256_file(os.path.join(directory, f)), f)
                   for f in sorted(digests, key=lambda s: s.encode("utf-8")))


def transfer(name, url, target_dir, instances_max):
    """The sysupdate.d transfer definition (``<name>.conf``, or ``.transfer`` on systemd >= 257)."""
    if isinstance(instances_max, bool) or not isinstance(instances_max, int) or instances_max < 2:
        raise ChannelError("k0s_sysext_instances_max must be an integer >= 2 (the current image and at least "
                           "one to roll back to), got %r" % (instances_max,))
    url = check_url(url).replace("%", "%%")   # a percent-encoded URL: % would start a specifier
    target_dir = check_target_dir(target_dir)
    return ("# Managed by fleetsplit.k0s (sysext_channel); systemd-sysupdate transfer for the %s sysext.\n"
            "# Verify=false: the channel's SHA256SUMS is not signed; sysupdate still checks each image's\n"
            "# sha256 against it. Sign SHA256SUMS (SHA256SUMS.gpg) and set Verify=true to trust the channel.\n"
            "[Transfer]\nVerify=false\n\n"
            "[Source]\nType=url-file\nPath=%s\nMatchPattern=%s\n\n"
            "[Target]\nType=regular-file\nPath=%s\nMatchPattern=%s\nInstancesMax=%d\n"
            "CurrentSymlink=/etc/extensions/%s.raw\n"
            % (name, url, pattern(name), target_dir, pattern(name), instances_max, name))


def plan_channel(directory, name, url, target_dir=DEFAULT_TARGET_DIR, instances_max=3, image=None,
                 version=None, architecture=None):
    """What the channel should hold: {file name: bytes or None (the image, copied)} and facts; reads only."""
    try:
        name = check_options({"name": name, "architecture": "x86-64"})["name"]
    except SysextError as e:
        raise ChannelError(str(e))
    conf = transfer(name, url, target_dir, instances_max)
    if not os.path.isdir(directory) or os.path.islink(directory):
        raise ChannelError("k0s_sysext_channel_dir %s is not an existing directory (not a symlink): create it"
                           % directory)
    out = dict(name=name, conf=conf, image_file=None, image_sha256=None)
    if image is not None:
        try:
            arch = architecture if architecture in SYSTEMD_ARCHITECTURES else systemd_architecture(architecture)
        except SysextError as e:
            raise ChannelError(str(e))
        if not os.path.isfile(image):
            raise ChannelError("sysext image %s is not a file: build it first (k0s_overlay_format=sysext)" % image)
        out["image_file"] = image_filename(name, version or "", arch)
        out["image_sha256"] = sha256_file(image)
    return out


def newest(sums_text, name, architecture):
    """(version, file, sha256) of the newest image of ``architecture`` in a SHA256SUMS text, as sysupdate picks."""
    best = None
    for line in sums_text.splitlines():
        digest, sep, filename = line.partition("  ")
        version = match(pattern(name), filename, architecture) if sep else None
        if version and (best is None or strverscmp_improved(version, best[0]) > 0):
            best = (version, filename, digest)
    return best
