# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The logic of the k0s_join_token module (``run(module)``, shared by its AnsiballZ and compact transports):
join tokens made on the leader, written 0600 on the joining host (which then restarts its k0s service),
overwritten after the join, and the cluster membership a data dir shows. Standard library only, Python 3.6.
"""

import os
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    HostFsError,
    atomic_write,
    check_dir_chain,
    lstat_or_none,
    make_dirs,
    os_error_message,
)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_membership import membership
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import MANAGERS, SERVICE_NAME, service_control

SPENT = b"# overwritten by fleetsplit.k0s after the join; k0s ignores this file once it has joined\n"
TOKEN_ROLES = ("controller", "worker")

SPEC = dict(
    argument_spec=dict(
        path=dict(type="path", default="/etc/k0s/k0stoken"),
        token=dict(type="str", no_log=True),
        state=dict(type="str", default="present", choices=["present", "overwritten", "query", "created"]),
        data_dir=dict(type="path", default="/var/lib/k0s"),
        service_name=dict(type="str"),
        service_manager=dict(type="str", choices=list(MANAGERS)),
        k0s=dict(type="path"),
        role=dict(type="str", choices=list(TOKEN_ROLES)),
        expiry=dict(type="str", default="1h"),
        count=dict(type="int", default=1),
    ),
    required_if=[("state", "present", ["token"]), ("state", "created", ["k0s", "role"])],
    required_together=[("service_name", "service_manager")],
)


def current(path):
    """(content, stat) of the token file, or (None, None); refuses anything but a regular file."""
    st = lstat_or_none(path)
    if st is None:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        raise HostFsError("refusing to use %s as the join token file: it is not a regular file" % path)
    with open(path, "rb") as f:
        return f.read(), st


def ensure(module, path, data, changes):
    old, st = current(path)
    private = st is not None and stat.S_IMODE(st.st_mode) == 0o600 and (
        os.geteuid() != 0 or (st.st_uid, st.st_gid) == (0, 0))
    if old == data and private:
        return
    directory = os.path.dirname(path)
    check_dir_chain(directory)
    changes.append("%s %s (mode 0600)" % ("wrote the join token to" if data != SPENT else "overwrote", path))
    if module.check_mode:
        return
    make_dirs(directory, 0o700)   # missing parents too, each 0700 whatever the umask
    atomic_write(path, data, mode=0o600)


def create(module, p, changes, tokens):
    """``count`` tokens from ``k0s token create`` on this host (the leader), in one module run, appended to
    ``tokens`` (a failed run returns the ones made, so the caller can invalidate them). k0s's stderr carries no
    token, so a failure can show it."""
    argv = [p["k0s"], "token", "create", "--data-dir=%s" % p["data_dir"], "--role=%s" % p["role"],
            "--expiry=%s" % p["expiry"]]
    while len(tokens) < p["count"] and not module.check_mode:
        rc, out, err = module.run_command(argv)
        token = out.strip()
        if rc != 0 or not token or "\n" in token:
            raise HostFsError("k0s token create --role=%s failed (rc=%d) after %d of %d tokens: %s"
                              % (p["role"], rc, len(tokens), p["count"], (err.strip() or "no token printed")))
        tokens.append(token)
    changes.append("created %d %s join token(s)" % (p["count"], p["role"]))


def restart(module, p, changes):
    """Restart the joining host's k0s service, which now finds the token file (--token-file in its unit)."""
    name = p["service_name"]
    argv = service_control(p["service_manager"], name, "restart")
    changes.append("restarted %s" % name)
    if module.check_mode:
        return
    rc, out, err = module.run_command(argv)
    if rc != 0:
        raise HostFsError("%s failed (rc=%d): %s" % (" ".join(argv), rc, (err or out).strip()))


def run(module):
    p = module.params
    path, changes = p["path"], []
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        module.fail_json(msg="path must be a normalised absolute path, got %r" % path)
    if p["service_name"] is not None and not SERVICE_NAME.match(p["service_name"]):
        module.fail_json(msg="service_name %r is not a plain service name (letters, digits, ._@- only)"
                         % p["service_name"])
    if p["state"] == "created" and not (1 <= p["count"] <= 1000):
        module.fail_json(msg="count must be between 1 and 1000, got %d" % p["count"])
    result = dict(path=path, changes=changes)
    try:
        if p["state"] == "query":
            result["k0s_cluster"] = membership(p["data_dir"])
        elif p["state"] == "created":
            result["tokens"] = []
            create(module, p, changes, result["tokens"])
        elif p["state"] == "present":
            token = p["token"].strip()
            if not token or "\n" in token:
                module.fail_json(msg="token must be one non-empty line (a k0s join token)", **result)
            ensure(module, path, token.encode("utf-8") + b"\n", changes)
            if p["service_name"] is not None:
                restart(module, p, changes)
        elif current(path)[0] is not None:
            ensure(module, path, SPENT, changes)
    except HostFsError as e:
        module.fail_json(msg=str(e), **result)
    except OSError as e:
        module.fail_json(msg=os_error_message(e), **result)
    module.exit_json(changed=bool(changes), **result)
