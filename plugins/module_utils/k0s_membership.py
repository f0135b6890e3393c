# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Whether a host already belongs to a k0s cluster, read from what k0s leaves in its data directory.
Reads only; standard library, no Ansible import, Python 3.6 syntax (it runs on managed hosts).

The rules follow k0s itself:
- a controller joins only when it has no cluster CA: cmd/controller/controller.go (needToJoin) checks
  ``<data-dir>/pki/ca.crt`` plus ``ca.key``, or, with k0s's own etcd, ``<data-dir>/etcd/member/snap/db``;
- a worker needs no token once ``<data-dir>/kubelet.conf`` (or ``kubelet-bootstrap.conf``) exists:
  pkg/component/worker/utils.go (BootstrapKubeletClientConfig).
The CA's sha256 is the cluster's identity: a join token carries the same CA bytes, and a joined worker's
kubelet.conf keeps them as certificate-authority-data."""

import base64
import binascii
import hashlib
import os
import re
import stat

# kubelet.conf is YAML written by client-go; the CA is one scalar line (no YAML parser on hosts).
_CA_DATA = re.compile(rb"^\s*certificate-authority-data:\s*([A-Za-z0-9+/=]+)\s*$", re.M)
_MAX_KUBECONFIG = 1 << 20


def _regular(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(_MAX_KUBECONFIG)).hexdigest()


def kubeconfig_ca_sha256(path):
    """sha256 of the CA a kubeconfig embeds (certificate-authority-data), or None."""
    if not _regular(path):
        return None
    with open(path, "rb") as f:
        m = _CA_DATA.search(f.read(_MAX_KUBECONFIG))
    if m is None:
        return None
    try:
        return hashlib.sha256(base64.b64decode(m.group(1), validate=True)).hexdigest()
    except (binascii.Error, ValueError):
        return None


def membership(data_dir):
    """What the data dir says about cluster membership; every value is public (no keys, no tokens)."""
    pki = os.path.join(data_dir, "pki")
    ca_crt, ca_key = os.path.join(pki, "ca.crt"), os.path.join(pki, "ca.key")
    has_ca = _regular(ca_crt) and _regular(ca_key)
    kubelet = os.path.join(data_dir, "kubelet.conf")
    state = dict(
        controller_ca_sha256=_sha256_of(ca_crt) if has_ca else None,
        etcd_member=_regular(os.path.join(data_dir, "etcd", "member", "snap", "db")),
        kubelet_conf=_regular(kubelet),
        kubelet_bootstrap_conf=_regular(os.path.join(data_dir, "kubelet-bootstrap.conf")),
        kubelet_ca_sha256=kubeconfig_ca_sha256(kubelet),
    )
    # The one place that says "this host needs no token", per role, by k0s's rules above.
    state["controller_joined"] = has_ca or state["etcd_member"]
    state["worker_joined"] = state["kubelet_conf"] or state["kubelet_bootstrap_conf"]
    return state
