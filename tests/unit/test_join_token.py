"""Join tokens read on the controller (plugin_utils.k0s_token, filter k0s_join_token_info) and Ready
nodes (filter k0s_ready_nodes): decoding k0s's real token layout, refusing everything else with a message
that never carries the token."""
import base64
import gzip
import hashlib
import json

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.filter.k0s_nodes import k0s_ready_nodes
from ansible_collections.fleetsplit.k0s.plugins.filter.k0s_token import k0s_join_token_info
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.k0s_token import TokenError, describe
from testlib import JOIN_KUBECONFIG, make_join_token

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SECRET = "0123456789abcdef"


def test_worker_token():
    info = describe(make_join_token(CA, token="abc123." + SECRET))
    assert info == dict(id="abc123", role="worker", user="kubelet-bootstrap", server="https://10.0.0.1:6443",
                        ca_sha256=hashlib.sha256(CA).hexdigest())
    assert SECRET not in json.dumps(info)


def test_controller_token_with_trailing_newline():
    token = make_join_token(CA, user="controller-bootstrap", server="https://10.0.0.1:9443") + "\n"
    assert describe(token)["role"] == "controller"


def pack(text):
    return base64.b64encode(gzip.compress(text.encode())).decode()


@pytest.mark.parametrize("token, reason", [
    ("", "is empty"),
    ("not a token at all", "not base64"),
    (base64.b64encode(b"plain text").decode(), "not gzip"),
    (pack("- just\n- a list\n"), "does not hold a kubeconfig"),
    (pack("a: [unclosed"), "does not hold a YAML kubeconfig"),
    (pack(JOIN_KUBECONFIG.format(ca="", server="https://x:6443", user="kubelet-bootstrap", token="abcdef." + SECRET)),
     "no certificate-authority-data"),
    (pack(JOIN_KUBECONFIG.format(ca="QQ==", server="http://x:6443", user="kubelet-bootstrap", token="abcdef." + SECRET)),
     "no https server URL"),
    (make_join_token(CA, user="admin"), "k0s join tokens use controller-bootstrap or kubelet-bootstrap"),
    (make_join_token(CA, token="ABCDEF." + SECRET), "not a bootstrap token"),
    ("A" * 70000, "characters long"),
])
def test_refusals_name_the_problem_never_the_token(token, reason):
    with pytest.raises(TokenError) as e:
        describe(token)
    assert reason in str(e.value)
    assert SECRET not in str(e.value) and (not token or token.strip()[:40] not in str(e.value))


def test_filter_turns_refusals_into_filter_errors():
    with pytest.raises(AnsibleFilterError, match="^k0s_join_token_file /x: the join token is not base64"):
        k0s_join_token_info("garbage!", "k0s_join_token_file /x")
    assert k0s_join_token_info(make_join_token(CA))["id"] == "abcdef"


def node(name, ready):
    return {"metadata": {"name": name},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": ready}]}}


def test_ready_nodes():
    out = json.dumps({"kind": "List", "items": [node("w1", "True"), node("w2", "False"), {"metadata": {"name": "w3"}}]})
    assert k0s_ready_nodes(out) == ["w1"]
    assert k0s_ready_nodes(json.loads(out)) == ["w1"]
    assert k0s_ready_nodes("") == [] and k0s_ready_nodes("error: not json") == [] and k0s_ready_nodes({"items": None}) == []
