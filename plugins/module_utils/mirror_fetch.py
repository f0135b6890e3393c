# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Pull distribution, host side: the gzip streams a host lacks fetched from a content-addressed mirror
(``<mirror_url>/blobs/sha256/<stream sha256>``, the tree fleetsplit.k0s.mirror_publish writes).

The mirror is untrusted: every stream must have exactly the size and sha256 the controller derived from the k0s
executable in this run (the ``stream_size``/``stream_sha256`` of the split's ``files``), and is only renamed to
``<streams_dir>/<name>.gz`` after both matched; the release build then inflates it with its own size, CRC-32
and sha256 checks. Credentials (headers, a URL's user:password) never appear in an error or a result.

Standard library only (urllib), Python 3.6 syntax; no Ansible import.
"""

import os
import re
import socket
import ssl
import time

from http.client import HTTPException
from urllib import error as urlerror
from urllib import parse as urlparse
from urllib import request as urlrequest

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    TMP_MARK,
    HostFsError,
    fsync_dir,
    lstat_or_none,
    make_dirs,
    set_owner_mode,
    tmp_name,
    unlink_quietly,
)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file

CHUNK = 1 << 20
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
BACKOFF_START = 1.0   # seconds before the first retry; doubled each time, capped
BACKOFF_MAX = 30.0
USER_AGENT = "fleetsplit.k0s-mirror-fetch/1"
# k0s_release's mirror options (documented in plugins/doc_fragments/mirror.py).
MIRROR_OPTIONS = dict(
    mirror_url=dict(type="str"),
    mirror_timeout=dict(type="int", default=30),
    mirror_retries=dict(type="int", default=4),
    mirror_ca_file=dict(type="path"),
    mirror_validate_certs=dict(type="bool", default=True),
    mirror_headers=dict(type="dict", no_log=True),
)


class MirrorError(HostFsError):
    """A clear message naming the stream and the URL without credentials; nothing was renamed into place."""


class MismatchError(MirrorError):
    """The mirror served other bytes than the controller's split says: never retried (the mirror is untrusted)."""


def public_url(url):
    """``url`` without user:password@ (for messages)."""
    parts = urlparse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlparse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_mirror_url(url):
    """The base URL as used for blobs (no trailing slash); refuses anything but a plain http(s) URL."""
    if not isinstance(url, str) or not url:
        raise MirrorError("mirror_url is empty: pull distribution (k0s_distribution: pull) needs k0s_mirror_url, "
                          "the http:// or https:// URL of a tree written by fleetsplit.k0s.mirror_publish")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise MirrorError("mirror_url %r contains white space or control characters" % public_url(url))
    parts = urlparse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise MirrorError("mirror_url %s is not an http:// or https:// URL with a host" % public_url(url))
    if "@" in parts.netloc:
        raise MirrorError("mirror_url %s carries credentials (user:password@): they would be shown in task "
                          "arguments; put them in k0s_mirror_headers (an Authorization header), which is never logged"
                          % public_url(url))
    if parts.query or parts.fragment:
        raise MirrorError("mirror_url %s has a query or fragment; give the base URL of the published tree"
                          % public_url(url))
    return url.rstrip("/")


def check_headers(headers):
    """{name: value} of plain strings; the message names a bad header, never a value."""
    out = {}
    for k, v in (headers or {}).items():
        if not isinstance(k, str) or not HEADER_NAME.match(k):
            raise MirrorError("mirror_headers: %r is not a valid HTTP header name" % (k,))
        if not isinstance(v, str) or any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in v):
            raise MirrorError("mirror_headers: the value of %s must be a string without control characters "
                              "(value not shown)" % k)
        out[k] = v
    return out


def wanted_streams(files, executable):
    """{name: (stream sha256, stream size)} from the module's ``files`` and ``executable`` (the split result)."""
    out = {}
    for name, d in [(f.get("name"), f) for f in files or []] + [("k0s", executable or {})]:
        sha = str(d.get("stream_sha256") or "").lower()
        size = d.get("stream_size")
        if not HEX64.match(sha) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MirrorError("pull needs stream_sha256 and stream_size for %s in the split facts (the payload_split "
                              "result of this run); got %r, %r" % (name, d.get("stream_sha256"), size))
        out[name] = (sha, size)
    return out


class _NoDowngrade(urlrequest.HTTPRedirectHandler):
    """Follows redirects (object stores hand out signed URLs) but never from https to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.lower().startswith("https:") and not newurl.lower().startswith("https:"):
            raise urlerror.HTTPError(req.full_url, code, "refused redirect from https to %s"
                                     % public_url(newurl), headers, fp)
        return urlrequest.HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)


class Fetcher(object):
    """Fetches blobs of one mirror; counts ``requests`` and ``bytes`` (body bytes received)."""

    def __init__(self, url, timeout=30, retries=4, ca_file=None, validate_certs=True, headers=None,
                 backoff=BACKOFF_START, sleep=time.sleep):
        self.base = check_mirror_url(url)
        self.headers = check_headers(headers)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise MirrorError("mirror_timeout must be a positive number of seconds, got %r" % (timeout,))
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise MirrorError("mirror_retries must be 0 or more, got %r" % (retries,))
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self.requests = 0
        self.bytes = 0
        handlers = [_NoDowngrade()]
        if self.base.lower().startswith("https:"):
            handlers.append(urlrequest.HTTPSHandler(context=self._tls_context(ca_file, validate_certs)))
        self.opener = urlrequest.build_opener(*handlers)

    @staticmethod
    def _tls_context(ca_file, validate_certs):
        if ca_file:
            st = lstat_or_none(ca_file)
            if st is None or not os.path.isfile(ca_file):
                raise MirrorError("mirror_ca_file %s does not exist on the host (it is read on the host, not the "
                                  "controller)" % ca_file)
        try:
            ctx = ssl.create_default_context(cafile=ca_file or None)
        except (ssl.SSLError, OSError) as e:
            raise MirrorError("mirror_ca_file %s is not a usable CA bundle: %s" % (ca_file, e))
        if not validate_certs:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def blob_url(self, sha):
        return "%s/blobs/sha256/%s" % (self.base, sha)

    def fetch(self, name, sha, size, dest_dir):
        """Fetch blob ``sha`` into ``<dest_dir>/<name>.gz`` (temp + rename) after checking size and sha256.

        Transient failures (connection, timeout, 5xx, 429, a short body) are retried with exponential backoff,
        resuming with a Range request when the server answers 206; a wrong size or sha256 is not."""
        url = self.blob_url(sha)
        tmp = tmp_name(dest_dir, name + ".gz")
        try:
            last = None
            for attempt in range(self.retries + 1):
                if attempt:
                    self.sleep(min(self.backoff * (2 ** (attempt - 1)), BACKOFF_MAX))
                try:
                    self._get(url, tmp, size, name)
                    break
                except MismatchError:
                    raise
                except _Transient as e:
                    last = e
            else:
                raise MirrorError("mirror %s: could not fetch the stream for %s (%s) after %d attempt%s: %s; "
                                  "nothing was switched" % (public_url(self.base), name, url, self.retries + 1,
                                                            "" if self.retries == 0 else "s", last))
            got = sha256_file(tmp)
            if got != sha:
                raise MismatchError("mirror %s served other bytes for the stream of %s: %s has sha256 %s, but the "
                                    "split of the k0s executable in this run gives %s; refused, nothing was switched"
                                    % (public_url(self.base), name, url, got, sha))
            set_owner_mode(tmp, 0o600)
            os.rename(tmp, os.path.join(dest_dir, name + ".gz"))
            tmp = None
        finally:
            if tmp is not None:
                unlink_quietly(tmp)

    def _get(self, url, tmp, size, name):
        have = lstat_or_none(tmp)
        have = have.st_size if have is not None else 0
        if have >= size:
            return
        req = urlrequest.Request(url, headers={"User-Agent": USER_AGENT})
        for k, v in self.headers.items():
            req.add_unredirected_header(k, v)   # credentials go to the mirror only, never to a redirect target
        if have:
            req.add_unredirected_header("Range", "bytes=%d-" % have)
        self.requests += 1
        try:
            resp = self.opener.open(req, timeout=self.timeout)
        except urlerror.HTTPError as e:
            e.close()
            if e.code == 404:
                raise MirrorError("mirror %s has no stream for %s: %s answered 404 (publish this k0s executable "
                                  "into the mirror with fleetsplit.k0s.publish_k0s, from this controller or one with "
                                  "the same FLEETSPLIT_DEFLATE_ENGINE); nothing was switched"
                                  % (public_url(self.base), name, url))
            if e.code in (408, 429) or e.code >= 500:
                raise _Transient("HTTP %d %s" % (e.code, e.reason))
            raise MirrorError("mirror %s refused the stream for %s: %s answered HTTP %d %s; nothing was switched"
                              % (public_url(self.base), name, url, e.code, e.reason))
        except (urlerror.URLError, socket.timeout, HTTPException, OSError) as e:
            raise _Transient(_reason(e))
        with resp:
            mode = "ab"
            if resp.status == 206 and (not have or _range_start(resp.headers.get("Content-Range")) != have):
                unlink_quietly(tmp)   # not the part asked for: the next attempt starts from the beginning
                raise _Transient("the mirror answered a range request with another range (%s)"
                                 % resp.headers.get("Content-Range"))
            if resp.status != 206:
                mode, have = "wb", 0
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and have + int(length) > size:
                raise MismatchError("mirror %s announces %d bytes for the stream of %s (%s), but the split of the k0s "
                                    "executable in this run gives %d; refused, nothing was switched"
                                    % (public_url(self.base), have + int(length), name, url, size))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, mode) as out:
                if mode == "wb":
                    out.truncate(0)
                try:
                    while True:
                        block = resp.read(min(CHUNK, size - have + 1))
                        if not block:
                            break
                        have += len(block)
                        self.bytes += len(block)
                        if have > size:
                            raise MismatchError("mirror %s sent more than the %d bytes of the stream of %s (%s); "
                                                "refused, nothing was switched" % (public_url(self.base), size, name, url))
                        out.write(block)
                except (socket.timeout, HTTPException, OSError) as e:
                    out.flush()
                    raise _Transient("%s after %d of %d bytes" % (_reason(e), have, size))
                out.flush()
                os.fsync(out.fileno())
        if have < size:
            raise _Transient("the connection closed after %d of %d bytes (truncated)" % (have, size))


class _Transient(Exception):
    pass


def _reason(e):
    r = getattr(e, "reason", None)
    if isinstance(e, socket.timeout) or isinstance(r, socket.timeout):
        return "timed out"
    return str(r if r is not None else e) or e.__class__.__name__


def _range_start(value):
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)\Z", value or "")
    return int(m.group(1)) if m else None


def clean_leftovers(dest_dir):
    """Temporary names of killed fetches in ``dest_dir``."""
    out = []
    if os.path.isdir(dest_dir):
        for e in sorted(os.listdir(dest_dir)):
            if e.startswith(".") and TMP_MARK in e and e.partition(TMP_MARK)[0].endswith(".gz"):
                unlink_quietly(os.path.join(dest_dir, e))
                out.append(os.path.join(dest_dir, e))
    return out


def check_params(params):
    """The mirror options of k0s_release, checked also by state=query (before the first change on any host)."""
    if params.get("mirror_url") is None:
        return
    Fetcher(params["mirror_url"], params.get("mirror_timeout", 30), params.get("mirror_retries", 4),
            params.get("mirror_ca_file") or None, params.get("mirror_validate_certs", True), params.get("mirror_headers"))
    wanted_streams(params.get("files"), params.get("executable"))


def fetch_missing(params, names, dest_dir, fetcher=None):
    """Fetch the streams of ``names`` (what the release still lacks) into ``dest_dir`` (``<name>.gz`` each).

    ``params`` are k0s_release's (files, executable, mirror_*). A ``<name>.gz`` already there with the expected
    sha256 (a run that failed after its fetch) is kept. Returns {fetched: [names], requests, bytes, url}."""
    want = wanted_streams(params.get("files"), params.get("executable"))
    f = fetcher or Fetcher(params["mirror_url"], params.get("mirror_timeout", 30), params.get("mirror_retries", 4),
                           params.get("mirror_ca_file") or None, params.get("mirror_validate_certs", True),
                           params.get("mirror_headers"))
    fetched = []
    if names:
        if lstat_or_none(dest_dir) is None:
            make_dirs(dest_dir, 0o700)
        clean_leftovers(dest_dir)
        for name in sorted(names):
            sha, size = want[name]
            final = os.path.join(dest_dir, name + ".gz")
            st = lstat_or_none(final)
            if st is not None and os.path.isfile(final) and st.st_size == size and sha256_file(final) == sha:
                continue
            f.fetch(name, sha, size, dest_dir)
            fetched.append(name)
        fsync_dir(dest_dir)
    return dict(fetched=fetched, requests=f.requests, bytes=f.bytes, url=public_url(f.base))
