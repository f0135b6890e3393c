# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Read a k0s join token without revealing it: which cluster, API and role it is for, and its public id.

A k0s join token is base64 of a gzip of a kubeconfig (k0s pkg/token/joinencode.go, kubeconfig.go): one
cluster (server URL, certificate-authority-data) and one user whose token is a Kubernetes bootstrap token
``<id>.<secret>`` (id 6 and secret 16 characters of [a-z0-9]). Worker tokens name the user
``kubelet-bootstrap`` and point at the Kubernetes API (port 6443 by default); controller tokens name it
``controller-bootstrap`` and point at the k0s API (9443). k0sctl reads tokens the same way
(pkg/apis/k0sctl.k0sproject.io/v1beta1/cluster/k0s.go, ParseToken).

No Ansible import. Controller side only (plugin_utils: it needs PyYAML, which ansible-core brings). No error message and
no result carries the secret or the token text."""

import base64
import binascii
import gzip
import hashlib
import re
import zlib

import yaml

ROLE_BY_USER = {"kubelet-bootstrap": "worker", "controller-bootstrap": "controller"}
_BOOTSTRAP_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_MAX_TOKEN = 64 * 1024  # real tokens are about 2 KB


class TokenError(ValueError):
    """The text is not a usable k0s join token; the message says why, never what it contains."""


def _kubeconfig(token):
    text = token.strip() if isinstance(token, str) else ""
    if not text:
        raise TokenError("the join token is empty")
    if len(text) > _MAX_TOKEN:
        raise TokenError("the join token is %d characters long; k0s tokens are a few KB" % len(text))
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("the join token is not base64 (k0s tokens are base64 of a gzip-compressed kubeconfig)")
    try:
        raw = gzip.decompress(packed)
    except (OSError, EOFError, zlib.error):
        raise TokenError("the join token is base64 but not gzip-compressed: not a k0s join token")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise TokenError("the join token does not hold a YAML kubeconfig")
    if not isinstance(doc, dict):
        raise TokenError("the join token does not hold a kubeconfig")
    return doc


def _first(doc, key, inner):
    items = doc.get(key)
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise TokenError("the join token's kubeconfig has no %s" % key)
    value = items[0].get(inner)
    if not isinstance(value, dict):
        raise TokenError("the join token's kubeconfig has no %s[0].%s" % (key, inner))
    return items[0].get("name"), value


def describe(token):
    """Public facts of a join token: id, role, user, server, ca_sha256. Raises TokenError."""
    doc = _kubeconfig(token)
    dummy, cluster = _first(doc, "clusters", "cluster")
    user_name, user = _first(doc, "users", "user")
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise TokenError("the join token's kubeconfig has no https server URL")
    ca_data = cluster.get("certificate-authority-data")
    try:
        ca = base64.b64decode(ca_data or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        ca = b""
    if not ca:
        raise TokenError("the join token's kubeconfig carries no certificate-authority-data")
    role = ROLE_BY_USER.get(user_name)
    if role is None:
        raise TokenError("the join token's user is %r; k0s join tokens use %s"
                         % (user_name, " or ".join(sorted(ROLE_BY_USER))))
    match = _BOOTSTRAP_TOKEN.match(str(user.get("token") or ""))
    if match is None:
        raise TokenError("the join token's user token is not a bootstrap token (<6 chars>.<16 chars>, [a-z0-9])")
    return dict(id=match.group(1), role=role, user=user_name, server=server,
                ca_sha256=hashlib.sha256(ca).hexdigest())
