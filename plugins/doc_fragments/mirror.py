# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The pull-distribution options of fleetsplit.k0s.k0s_release (docs/distribution.md)."""


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  mirror_url:
    description:
      - Pull distribution. The base URL (C(http://) or C(https://), no credentials, query or fragment) of a tree
        written by M(fleetsplit.k0s.mirror_publish). With V(present), the host fetches every stream it lacks (and no
        bundle or upload provides) from C(<mirror_url>/blobs/sha256/<stream_sha256>) into O(streams_dir) before
        anything is built; no request at all when nothing is missing.
      - The mirror is untrusted. Each stream must have the C(stream_size) and C(stream_sha256) of O(files) and
        O(executable) (the controller's split of the k0s executable in this run), else the task fails naming the
        stream, the URL and both hashes, and nothing is switched; the release build then checks size, CRC-32 and
        sha256 of every inflated file as for uploads.
      - V(query) checks the mirror options (no request) so a bad value fails before the first change.
    type: str
  mirror_timeout:
    description: Seconds per mirror request (connect and each read).
    type: int
    default: 30
  mirror_retries:
    description:
      - Retries of a failed request (connection error, timeout, HTTP 408, 429, 5xx, a truncated body), with
        exponential backoff (1 s, 2 s, 4 s, ... at most 30 s), resuming with a C(Range) request where the server
        supports it. A wrong size or sha256 and other HTTP errors (404) are not retried.
    type: int
    default: 4
  mirror_ca_file:
    description: A CA bundle (PEM) on the B(host) that signs the mirror's certificate; default the system's.
    type: path
  mirror_validate_certs:
    description: V(false) skips the TLS certificate check (the sha256 checks still run).
    type: bool
    default: true
  mirror_headers:
    description:
      - Extra HTTP headers for the mirror, for example C(Authorization). Never logged (C(no_log)); sent to the
        mirror only, not to a host it redirects to. Redirects from https to http are refused.
    type: dict
"""
