"""k0s_membership: cluster membership read from a k0s data dir, by k0s's own rules."""
import base64
import hashlib
import os

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_membership as km
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_plan as rp

CA = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def kubeconfig(ca):
    return ("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: %s\n"
            "    server: https://10.0.0.1:6443\n  name: k0s\nkind: Config\n" % base64.b64encode(ca).decode())


def test_empty_data_dir_is_no_member(tmp_path):
    m = km.membership(str(tmp_path / "missing"))
    assert m == dict(controller_ca_sha256=None, etcd_member=False, kubelet_conf=False,
                     kubelet_bootstrap_conf=False, kubelet_ca_sha256=None,
                     controller_joined=False, worker_joined=False)


def test_controller_needs_both_ca_files(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki/ca.crt").write_bytes(CA)
    m = km.membership(str(tmp_path))
    assert m["controller_ca_sha256"] is None and not m["controller_joined"], "ca.key missing: k0s would join"
    (tmp_path / "pki/ca.key").write_bytes(b"key")
    m = km.membership(str(tmp_path))
    assert m["controller_ca_sha256"] == hashlib.sha256(CA).hexdigest() and m["controller_joined"]
    assert not m["worker_joined"]


def test_symlinked_ca_is_not_trusted(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "real.crt").write_bytes(CA)
    os.symlink(tmp_path / "real.crt", tmp_path / "pki/ca.crt")
    (tmp_path / "pki/ca.key").write_bytes(b"key")
    assert km.membership(str(tmp_path))["controller_ca_sha256"] is None


def test_worker_kubelet_conf_carries_the_cluster_ca(tmp_path):
    (tmp_path / "kubelet.conf").write_text(kubeconfig(CA))
    m = km.membership(str(tmp_path))
    assert m["kubelet_conf"] and m["kubelet_ca_sha256"] == hashlib.sha256(CA).hexdigest()
    assert m["worker_joined"] and not m["controller_joined"]


def test_kubelet_conf_without_ca_data(tmp_path):
    (tmp_path / "kubelet.conf").write_text("apiVersion: v1\nclusters: []\n")
    (tmp_path / "kubelet-bootstrap.conf").write_text("x")
    m = km.membership(str(tmp_path))
    assert m["kubelet_conf"] and m["kubelet_bootstrap_conf"] and m["kubelet_ca_sha256"] is None
    (tmp_path / "kubelet.conf").unlink()
    assert km.membership(str(tmp_path))["worker_joined"], "a bootstrap kubeconfig alone needs no token either"


def test_etcd_member(tmp_path):
    (tmp_path / "etcd/member/snap").mkdir(parents=True)
    (tmp_path / "etcd/member/snap/db").write_bytes(b"")
    m = km.membership(str(tmp_path))
    assert m["etcd_member"] is True and m["controller_joined"] is True


def test_host_facts_carry_node_name_and_membership(tmp_path):
    facts = rp.host_facts(str(tmp_path))
    assert facts["architecture"] == os.uname().machine and facts["service_mgr"]
    assert facts["node_name"] == facts["node_name"].lower() and facts["node_name"]
    assert facts["k0s_cluster"]["kubelet_conf"] is False
