#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_join_token
short_description: Put a k0s join token on a host for C(--token-file), overwrite it after the join, or read membership
version_added: "0.3.0"
description:
  - V(present) writes the token to O(path), C(root:root) mode 0600, through a temporary file renamed into place
    (the directory is created mode 0700 when missing), as k0sctl does before it starts a joining host.
  - V(overwritten) replaces the content with a comment line once the host has joined, so no usable token stays
    on disk (k0s ignores the token file once it has cluster state). Nothing is done when the file is missing.
  - V(query) changes nothing and reports what O(data_dir) tells about cluster membership (RV(k0s_cluster)).
  - Runs on the managed host with the Python standard library only. The token is an option with C(no_log), so
    Ansible masks it; with pipelining it never touches the host's disk outside O(path).
options:
  path:
    description: The token file k0s reads with C(--token-file).
    type: path
    default: /etc/k0s/k0stoken
  token:
    description: The join token (required with O(state=present)). Never shown in results, logs or diffs.
    type: str
  state:
    description: What to do.
    type: str
    choices: [present, overwritten, query]
    default: present
  data_dir:
    description: The k0s data directory, for RV(k0s_cluster).
    type: path
    default: /var/lib/k0s
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    details: The file holds a secret; RV(changes) says what changed instead.
  platform:
    platforms: posix
notes:
  - A symlink at O(path) is refused, and so is any directory on the way that is owned by another user or
    world-writable (the checks of M(fleetsplit.k0s.k0s_release)).
seealso:
  - name: k0sctl's token handling (phase/install_workers.go)
    description: k0sctl writes the token 0600, starts the host with C(--token-file), then invalidates the token and overwrites the file.
    link: https://github.com/k0sproject/k0sctl/blob/main/phase/install_workers.go
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Hand the worker its token
  fleetsplit.k0s.k0s_join_token:
    token: "{{ worker_token }}"
  no_log: true

- name: After the join, leave no usable token behind
  fleetsplit.k0s.k0s_join_token:
    state: overwritten
"""

RETURN = r"""
path:
  description: The token file.
  returned: always
  type: str
  sample: /etc/k0s/k0stoken
changes:
  description: One line per change made (or that would be made in check mode); never the token.
  returned: always
  type: list
  elements: str
k0s_cluster:
  description: Cluster membership read from O(data_dir), as the C(host.k0s_cluster) result of M(fleetsplit.k0s.k0s_release).
  returned: state is query
  type: dict
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    HostFsError,
    atomic_write,
    check_dir_chain,
    lstat_or_none,
    make_dirs,
    os_error_message,
)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_membership import membership

SPENT = b"# overwritten by fleetsplit.k0s after the join; k0s ignores this file once it has joined\n"


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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/k0s/k0stoken"),
            token=dict(type="str", no_log=True),
            state=dict(type="str", default="present", choices=["present", "overwritten", "query"]),
            data_dir=dict(type="path", default="/var/lib/k0s"),
        ),
        required_if=[("state", "present", ["token"])],
        supports_check_mode=True,
    )
    p = module.params
    path, changes = p["path"], []
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        module.fail_json(msg="path must be a normalised absolute path, got %r" % path)
    result = dict(path=path, changes=changes)
    try:
        if p["state"] == "query":
            result["k0s_cluster"] = membership(p["data_dir"])
        elif p["state"] == "present":
            token = p["token"].strip()
            if not token or "\n" in token:
                module.fail_json(msg="token must be one non-empty line (a k0s join token)", **result)
            ensure(module, path, token.encode("utf-8") + b"\n", changes)
        elif current(path)[0] is not None:
            ensure(module, path, SPENT, changes)
    except HostFsError as e:
        module.fail_json(msg=str(e), **result)
    except OSError as e:
        module.fail_json(msg=os_error_message(e), **result)
    module.exit_json(changed=bool(changes), **result)


if __name__ == "__main__":
    main()
