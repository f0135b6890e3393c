"""What the lifecycle scenario asks of the kubeconfig deploy_k0s fetched, without ever printing a credential.

    use_kubeconfig.py check <kubeconfig> <server>     # mode 0600, one cluster/user/context, the server named
    use_kubeconfig.py get <kubeconfig> <api path>     # the route to the server checked (tests/hostnet.py), then an
                                                      # authenticated HTTPS GET with the file's CA and credential
    use_kubeconfig.py absent <kubeconfig> <file>...   # no credential of the kubeconfig appears in these files

Prints JSON (never a credential); exit 1 naming the problem.
"""
import base64
import json
import os
import ssl
import stat
import sys
import tempfile
import urllib.parse
import urllib.request

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
import hostnet  # noqa: E402  (test traffic stays on the project's bridge)

CREDENTIAL_KEYS = ("token", "client-key-data", "client-certificate-data", "password")


def fail(message):
    sys.exit("use_kubeconfig: " + message)


def load(path):
    with open(path, encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    if not isinstance(conf, dict):
        fail("%s is not a YAML mapping" % path)
    return conf


def only(conf, key):
    items = conf.get(key) or []
    if len(items) != 1:
        fail("%d %s, want exactly one" % (len(items), key))
    return items[0]


def structure(path):
    conf = load(path)
    cluster, user, context = only(conf, "clusters"), only(conf, "users"), only(conf, "contexts")
    if conf.get("current-context") != context["name"]:
        fail("current-context %r is not the one context %r" % (conf.get("current-context"), context["name"]))
    if (context["context"]["cluster"], context["context"]["user"]) != (cluster["name"], user["name"]):
        fail("the context does not name the one cluster and user")
    return cluster, user


def credentials(user):
    return [str(v) for k, v in sorted((user.get("user") or {}).items()) if k in CREDENTIAL_KEYS and v]


def check(path, server):
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o600:
        fail("%s has mode %o, want 600" % (path, mode))
    cluster, user = structure(path)
    if cluster["cluster"]["server"] != server:
        fail("server %r, want %r" % (cluster["cluster"]["server"], server))
    if not credentials(user) or not cluster["cluster"].get("certificate-authority-data"):
        fail("no credential or no CA data")
    print(json.dumps({"cluster": cluster["name"], "user": user["name"], "server": server,
                      "credential_kinds": sorted(k for k in user["user"] if k in CREDENTIAL_KEYS)}))


def get(path, api_path):
    cluster, user = structure(path)
    server = cluster["cluster"]["server"]
    hostnet.ensure_routes([urllib.parse.urlsplit(server).hostname], log=lambda m: print(m, file=sys.stderr))
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode())
    creds = user["user"]
    headers = {}
    with tempfile.TemporaryDirectory() as tmp:  # 0700: the client key never lands anywhere readable
        if creds.get("client-certificate-data"):
            cert, key = os.path.join(tmp, "crt"), os.path.join(tmp, "key")
            for name, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
                with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(base64.b64decode(creds[field]))
            ctx.load_cert_chain(cert, key)
        if creds.get("token"):
            headers["Authorization"] = "Bearer " + creds["token"]
        req = urllib.request.Request(server + api_path, headers=headers)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            sys.stdout.write(resp.read().decode())


def absent(path, files):
    user = structure(path)[1]
    secrets = credentials(user)
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if any(s in text for s in secrets):
            fail("a credential of %s appears in %s" % (path, name))
    print(json.dumps({"credentials": len(secrets), "files": len(files)}))


if __name__ == "__main__":
    mode, conf_path, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    {"check": lambda: check(conf_path, rest[0]), "get": lambda: get(conf_path, rest[0]),
     "absent": lambda: absent(conf_path, rest)}[mode]()
