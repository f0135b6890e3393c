# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The admin kubeconfig a k0s leader prints (``k0s kubeconfig admin``), made fit for the controller machine.

k0s (cmd/kubeconfig/admin.go) prints one cluster ``local``, one context ``Default`` and one user ``user``, with
the CA, the admin client certificate and key inlined, and as server its own API URL (api.externalAddress, else
api.address, and the API port: pkg/apis/k0s/v1beta1/api.go, APIAddressURL). k0sctl (phase/get_kubeconfig.go)
keeps the current context's cluster and user only, renames them, and points the server at the cluster's
external address (pkg/apis/k0sctl.k0sproject.io/v1beta1/cluster/spec.go, KubeAPIURL, IPv6 in brackets). This
library does the same: parse and check, choose the server host, rewrite, render deterministically, and redact
the credentials for a diff.

No Ansible import. Controller side only. PyYAML (which ansible-core brings) is optional at import time: without it
``HAS_YAML`` is false and callers report ``YAML_IMPORT_ERROR`` (missing_required_lib). No error message carries any
value from the kubeconfig text, so a credential can never reach a log through an error."""

import copy
import ipaddress
import os
import re
import traceback

try:
    import yaml
except ImportError:
    yaml = None
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    YAML_IMPORT_ERROR = None
HAS_YAML = YAML_IMPORT_ERROR is None

REDACTED = "<redacted>"
# Credential-named keys (client-go's AuthInfo fields), blanked wherever they appear in a diff.
SECRET_KEYS = frozenset(("client-certificate-data", "client-key-data", "token", "password", "username",
                         "auth-provider", "exec", "tokenFile", "token-file"))
# The names fleetsplit gives the one cluster (and context) and the one user it writes.
DEFAULT_CLUSTER_NAME = "k0s"
USER_NAME = "admin"
_MAX_TEXT = 1024 * 1024   # a k0s admin kubeconfig is about 6 KB
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,252}")


class KubeconfigError(ValueError):
    """Not a usable admin kubeconfig, or a bad setting; the message never quotes the kubeconfig's content."""


def address_problem(value, what="k0s_api_address"):
    """None when ``value`` is a host name, an IPv4 or an IPv6 address (no brackets, scheme, port or path)."""
    if not isinstance(value, str) or not value:
        return "%s must be a host name or an IP address, got an empty value" % what
    shown = value if len(value) <= 80 and value.isprintable() else repr(value[:80])
    try:
        if "%" not in value:   # no IPv6 zone: it would need escaping in the URL and means nothing elsewhere
            ipaddress.ip_address(value)
            return None
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if len(value) <= 253 and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return None
    return ("%s must be a bare host name or IP address (no scheme, port, path, brackets or spaces, e.g."
            " api.example.com, 10.0.0.5 or fd00::5), got '%s'" % (what, shown))


def cluster_name_problem(value, what="k0s_kubeconfig_cluster_name"):
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    return "%s must start with a letter or digit and use only letters, digits and ._@:- (got %r)" % (what, value)


def settings_problems(api_address, cluster_name, path_given, path, server, server_origin):
    """What is wrong with the settings of the kubeconfig fetch, checked before anything changes: the address and
    name values, the server host derived from the inventory (``server_origin`` says where it came from), and the
    target (``path``, resolved from ``path_given``): a file name in an existing directory, no symlink."""
    problems = [p for p in (address_problem(api_address) if api_address else None,
                            cluster_name_problem(cluster_name),
                            address_problem(server, server_origin) if server and server != api_address else None) if p]
    if problems and server and server != api_address and problems[-1].startswith(server_origin):
        problems[-1] += "; set k0s_api_address to the address clients reach the API at"
    if not isinstance(path_given, str) or not path_given or path_given.endswith("/"):
        problems.append("k0s_kubeconfig_path must name a file (such as ./kubeconfig), got %r" % (path_given,))
    elif not os.path.isdir(os.path.dirname(path)):
        problems.append("the directory of k0s_kubeconfig_path %s (%s) does not exist on the controller: create it, or"
                        " set k0s_kubeconfig_path to a file in an existing directory" % (path_given, path))
    elif os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        problems.append("k0s_kubeconfig_path %s (%s) is a symlink or not a regular file: name a file to write" % (path_given, path))
    return problems


def url_host(host):
    """The host as it goes into a URL: an IPv6 address in brackets."""
    return "[%s]" % host if ":" in host else host


def _entries(doc, key, inner):
    items = doc.get(key)
    if not isinstance(items, list):
        raise KubeconfigError("the kubeconfig has no %s list" % key)
    found = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get(inner), dict):
            raise KubeconfigError("%s[%d] of the kubeconfig is not a named %s entry" % (key, i, inner))
        found[item["name"]] = item[inner]
    return found


def parse(text):
    """The kubeconfig ``text`` reduced to the current context: (cluster, user) dicts, copies. Like k0sctl, a
    missing current-context falls back to the only context. Raises KubeconfigError."""
    if not isinstance(text, str) or not text.strip():
        raise KubeconfigError("the kubeconfig is empty")
    if len(text) > _MAX_TEXT:
        raise KubeconfigError("the kubeconfig is %d bytes long; a k0s admin kubeconfig is a few KB" % len(text))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # The parser's message quotes the offending line, which may hold a key: give the position only.
        mark = getattr(e, "problem_mark", None)
        where = " (line %d)" % (mark.line + 1) if mark is not None else ""
        raise KubeconfigError("the kubeconfig is not valid YAML%s" % where)
    if not isinstance(doc, dict):
        raise KubeconfigError("the kubeconfig is not a YAML mapping")
    if doc.get("kind", "Config") != "Config":
        raise KubeconfigError("the kubeconfig's kind is not Config")
    clusters = _entries(doc, "clusters", "cluster")
    users = _entries(doc, "users", "user")
    contexts = _entries(doc, "contexts", "context")
    current = doc.get("current-context")
    if current not in contexts:
        if len(contexts) != 1:
            raise KubeconfigError("the kubeconfig's current-context is %s and it does not hold exactly one context"
                                  " to fall back to" % ("not set" if not current else "not one of its contexts"))
        current = next(iter(contexts))
    context = contexts[current]
    cluster, user = clusters.get(context.get("cluster")), users.get(context.get("user"))
    if cluster is None:
        raise KubeconfigError("the cluster named by the kubeconfig's context %s is not in its clusters" % current)
    if user is None:
        raise KubeconfigError("the user named by the kubeconfig's context %s is not in its users" % current)
    if not user:
        raise KubeconfigError("the kubeconfig's user has no credential")
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeconfigError("the kubeconfig's cluster has no https server URL")
    return copy.deepcopy(cluster), copy.deepcopy(user)


def server_host_port(server):
    """(host, port) of an https URL as k0s prints it; the host without brackets. Raises KubeconfigError."""
    m = re.match(r"^https://(\[([0-9A-Fa-f:.]+)\]|([^/:\[\]@]+))(?::([0-9]{1,5}))?/?$", server)
    if not m:
        raise KubeconfigError("the kubeconfig's server is not an https URL with a host and an optional port")
    return m.group(2) or m.group(3), int(m.group(4) or 443)


def is_loopback(host):
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_server(printed_server, server="", fallback=""):
    """The server URL to write: https, the host ``server`` when given, else the host k0s printed unless it is
    loopback (then ``fallback``, the leader's inventory name), with the port k0s printed."""
    host, port = server_host_port(printed_server)
    if server:
        host = server
    elif is_loopback(host):
        if not fallback:
            raise KubeconfigError("k0s printed a loopback API address and no other address is known: set"
                                  " k0s_api_address to the leader's address")
        host = fallback
    return "https://%s:%d" % (url_host(host), port)


def build(text, server="", fallback="", cluster_name=DEFAULT_CLUSTER_NAME):
    """The kubeconfig document to write: one cluster and context named ``cluster_name``, one user ``admin``, the
    server chosen by choose_server. Raises KubeconfigError."""
    problem = cluster_name_problem(cluster_name)
    if problem:
        raise KubeconfigError(problem)
    cluster, user = parse(text)
    cluster["server"] = choose_server(cluster["server"], server, fallback)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": USER_NAME, "user": user}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": USER_NAME}}],
        "current-context": cluster_name,
        "preferences": {},
    }


def render(doc):
    """Bytes of ``doc``: sorted keys, block style, so the same content always gives the same bytes."""
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=True, allow_unicode=False, width=1 << 30).encode("ascii")


def _blank(value):
    if isinstance(value, dict):
        return dict((k, _blank(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return REDACTED


def _blank_secrets(value):
    if isinstance(value, dict):
        return dict((k, REDACTED if k in SECRET_KEYS else _blank_secrets(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_blank_secrets(v) for v in value]
    return value


def redact(doc):
    """A copy of a kubeconfig document for a diff: every value under users[].user (keys, certificates, tokens,
    passwords, exec and auth-provider settings) and any credential-named key elsewhere replaced by a
    placeholder; names and servers kept."""
    out = _blank_secrets(copy.deepcopy(doc))
    for entry in out.get("users") or []:
        if isinstance(entry, dict) and "user" in entry:
            entry["user"] = _blank(entry["user"])
    return out


def redacted_text(data):
    """The redacted rendering of existing kubeconfig bytes for the diff's before side; a placeholder when they
    do not parse as a kubeconfig mapping (nothing of an unreadable file is shown)."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        doc = None
    if not isinstance(doc, dict):
        return "# (existing file is not a YAML kubeconfig; its content is not shown)\n"
    return render(redact(doc)).decode("ascii")
