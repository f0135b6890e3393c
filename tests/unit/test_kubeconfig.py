"""The admin kubeconfig made fit for the controller (module_utils.k0s_kubeconfig): what k0s kubeconfig admin prints
(the fixture k0s for real, and k0s-shaped text with a real CA, client certificate and key), reduced to one cluster,
user and context like k0sctl, the server chosen by the documented rule, deterministic bytes, redaction, and errors
that never carry a credential."""
import base64

import pytest
import yaml

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_kubeconfig import (
    REDACTED,
    KubeconfigError,
    address_problem,
    build,
    choose_server,
    parse,
    redact,
    redacted_text,
    render,
)
from testlib import FakeController, admin_kubeconfig


@pytest.fixture(scope="module")
def k0s_admin():
    return admin_kubeconfig()


def test_fixture_k0s_output_becomes_one_cluster_user_context(fixtures, tmp_path):
    with FakeController(fixtures["k0s-small-zip"]["path"], tmp_path / "k0s", api_address="192.0.2.7") as c:
        printed = c.kubeconfig_admin()
        assert printed == c.kubeconfig_admin(), "k0s prints the same bytes every call"
    secret = (tmp_path / "k0s" / "fake-cluster" / "admin-token").read_text().strip()
    doc = build(printed, server="api.example.com")
    assert doc["clusters"][0]["cluster"]["server"] == "https://api.example.com:%d" % c.api_port
    assert doc["users"] == [{"name": "admin", "user": {"token": secret}}]
    # k0s printed its advertised address (not loopback): kept when no server is given.
    assert build(printed)["clusters"][0]["cluster"]["server"] == "https://192.0.2.7:%d" % c.api_port
    assert secret not in render(redact(doc)).decode()


def test_k0s_shaped_text_with_real_certificates(k0s_admin):
    text, key = k0s_admin
    doc = build(text, server="10.0.0.5", cluster_name="prod")
    back = yaml.safe_load(render(doc))
    assert [c["name"] for c in back["clusters"]] == ["prod"] and [u["name"] for u in back["users"]] == ["admin"]
    assert back["contexts"] == [{"name": "prod", "context": {"cluster": "prod", "user": "admin"}}]
    assert back["current-context"] == "prod" and back["kind"] == "Config"
    assert back["users"][0]["user"]["client-key-data"] == key
    ca = base64.b64decode(back["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca.startswith(b"-----BEGIN CERTIFICATE-----")
    assert back["clusters"][0]["cluster"]["server"] == "https://10.0.0.5:6443"


def test_render_is_deterministic(k0s_admin):
    text, dummy = k0s_admin
    # The same content in another key order and layout renders to the same bytes.
    shuffled = yaml.safe_dump(dict(reversed(list(yaml.safe_load(text).items()))), default_flow_style=True)
    assert render(build(text, "h")) == render(build(shuffled, "h")) == render(build(text, "h"))


def test_current_context_selects_cluster_and_user(k0s_admin):
    text, key = k0s_admin
    doc = yaml.safe_load(text)
    doc["clusters"].insert(0, {"name": "other", "cluster": {"server": "https://other:1"}})
    doc["users"].insert(0, {"name": "intruder", "user": {"token": "not-this-one"}})
    doc["contexts"].insert(0, {"name": "x", "context": {"cluster": "other", "user": "intruder"}})
    out = build(yaml.safe_dump(doc))
    assert out["users"][0]["user"]["client-key-data"] == key and len(out["users"]) == 1
    assert out["clusters"][0]["cluster"]["server"] == "https://172.17.0.2:6443" and len(out["clusters"]) == 1
    # Without current-context, like k0sctl: the sole context, else a refusal.
    del doc["current-context"]
    with pytest.raises(KubeconfigError, match="current-context is not set"):
        parse(yaml.safe_dump(doc))
    doc["contexts"] = doc["contexts"][1:]
    assert parse(yaml.safe_dump(doc))[1]["client-key-data"] == key


@pytest.mark.parametrize("printed, server, fallback, want", [
    ("https://10.1.2.3:6443", "", "leader", "https://10.1.2.3:6443"),
    ("https://127.0.0.1:6443", "", "leader", "https://leader:6443"),
    ("https://localhost:6443", "", "leader", "https://leader:6443"),
    ("https://[::1]:6443", "", "leader", "https://leader:6443"),
    ("https://10.1.2.3:7443", "fd00::5", "leader", "https://[fd00::5]:7443"),
    ("https://[fd00::1]:6443", "", "", "https://[fd00::1]:6443"),
    ("https://10.1.2.3:6443", "api.example.com", "", "https://api.example.com:6443"),
])
def test_server_rule(printed, server, fallback, want):
    assert choose_server(printed, server, fallback) == want


def test_loopback_without_fallback_is_refused():
    with pytest.raises(KubeconfigError, match="set k0s_api_address"):
        choose_server("https://127.0.0.1:6443")


@pytest.mark.parametrize("value, ok", [
    ("10.0.0.5", True), ("fd00::5", True), ("api.example.com", True), ("leader-1", True), ("api.example.com.", True),
    ("https://10.0.0.5", False), ("10.0.0.5:6443", False), ("[fd00::5]", False), ("host/path", False),
    ("two words", False), ("host\n", False), ("-bad", False), ("", False), ("999.1.1.1", False), ("fe80::1%eth0", False), ("name\n", False),
])
def test_address_check(value, ok):
    problem = address_problem(value)
    assert (problem is None) == ok, problem
    if not ok:
        assert "k0s_api_address" in problem


def test_redaction_keeps_structure_and_hides_every_credential(k0s_admin):
    text, key = k0s_admin
    doc = build(text, "10.0.0.5")
    cert = doc["users"][0]["user"]["client-certificate-data"]
    shown = render(redact(doc)).decode()
    assert key not in shown and cert not in shown and shown.count(REDACTED) == 2
    assert "server: https://10.0.0.5:6443" in shown and "name: admin" in shown
    assert doc["users"][0]["user"]["client-key-data"] == key, "redact works on a copy"
    # An existing file with credentials elsewhere, or one that is not YAML, shows nothing secret.
    foreign = {"users": [{"name": "u", "user": {"password": "pw-secret", "exec": {"env": [{"value": "s3"}]},
                                                "some-future-credential": "fc-secret"}}],
               "extra": {"token": "tok-secret"}}
    before = redacted_text(yaml.safe_dump(foreign).encode())
    assert not any(s in before for s in ("pw-secret", "tok-secret", "s3", "fc-secret"))
    assert "some-future-credential: <redacted>" in before
    assert "client-key" not in redacted_text(b"client-key-data: [unclosed")


@pytest.mark.parametrize("mutate, reason", [
    (lambda t: t.replace("kind: Config", "kind: Pod"), "kind is not Config"),
    (lambda t: t.replace("server: https://", "server: http://"), "no https server"),
    (lambda t: t.replace("    user: user", "    user: nobody"), "user named by the kubeconfig's context"),
    (lambda t: t.replace("  name: local", "  name: elsewhere"), "cluster named by"),
    (lambda t: t + "  broken: [\n", "not valid YAML"),
    (lambda t: "just text", "not a YAML mapping"),
    (lambda t: "", "is empty"),
])
def test_errors_never_carry_credentials(k0s_admin, mutate, reason):
    text, key = k0s_admin
    bad = mutate(text)
    with pytest.raises(KubeconfigError, match=reason) as e:
        build(bad, "10.0.0.5")
    assert key not in str(e.value) and key[60:90] not in str(e.value)


def test_yaml_error_quoting_the_key_line_is_not_echoed(k0s_admin):
    text, key = k0s_admin
    bad = text.replace("client-key-data: " + key, "client-key-data: " + key + " : : [")
    with pytest.raises(KubeconfigError) as e:
        parse(bad)
    assert key[60:90] not in str(e.value) and "line" in str(e.value)


def test_bad_cluster_name_is_refused(k0s_admin):
    with pytest.raises(KubeconfigError, match="k0s_kubeconfig_cluster_name"):
        build(k0s_admin[0], "h", cluster_name="has space")
