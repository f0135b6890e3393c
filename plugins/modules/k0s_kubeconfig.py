#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_kubeconfig
short_description: Write the admin kubeconfig a k0s leader printed to a private file on the controller
version_added: "0.4.0"
description:
  - Takes the output of C(k0s kubeconfig admin) (O(content)), keeps the current context's cluster and user only (as
    k0sctl's C(kubeconfig) does), names them O(cluster_name) and C(admin), sets the server URL, and writes the
    result to O(path) mode 0600 through a temporary file in the same directory renamed into place.
  - The server is C(https://<host>:<port>) with the port k0s printed and as host O(server) when given, else the
    host k0s printed unless it is a loopback address, then O(server_fallback). An IPv6 address is put in brackets.
  - The rendering is deterministic (sorted keys), so the task reports a change only when the bytes differ or the
    file's mode is not 0600 (a wrong mode is repaired).
  - Runs on the controller (delegate it to C(localhost)).
options:
  content:
    description: The kubeconfig text C(k0s kubeconfig admin) printed. Never shown in results, logs or diffs.
    type: str
    required: true
  path:
    description:
      - Absolute path of the file to write. Its directory must exist (a mistyped path is refused rather than
        created). A symlink or anything but a regular file at O(path) is refused.
    type: path
    required: true
  server:
    description: Host name or IP address for the server URL. Empty keeps the host k0s printed.
    type: str
    default: ""
  server_fallback:
    description: The host used when O(server) is empty and k0s printed a loopback address (the leader's inventory name).
    type: str
    default: ""
  cluster_name:
    description: Name of the one cluster and of the one context written.
    type: str
    default: k0s
requirements:
  - PyYAML (ansible-core's own dependency) in the Python that runs the module on the controller
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the structure (names, server, CA) with every credential value replaced by C(<redacted>).
  platform:
    platforms: posix
seealso:
  - name: k0s kubeconfig admin (cmd/kubeconfig/admin.go)
    description: What k0s prints - cluster C(local), context C(Default), user C(user), its own API URL.
    link: https://github.com/k0sproject/k0s/blob/main/cmd/kubeconfig/admin.go
  - name: k0sctl kubeconfig (phase/get_kubeconfig.go)
    description: The same reduction to one cluster, user and context, with the server pointed at the cluster's address.
    link: https://github.com/k0sproject/k0sctl/blob/main/phase/get_kubeconfig.go
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Read the admin kubeconfig on the leader
  ansible.builtin.command:
    argv: [/usr/bin/k0s, kubeconfig, admin, --data-dir=/var/lib/k0s]
  register: admin_kubeconfig
  changed_when: false
  no_log: true

- name: Write it next to the playbook, pointing at the leader
  fleetsplit.k0s.k0s_kubeconfig:
    content: "{{ admin_kubeconfig.stdout }}"
    path: "{{ playbook_dir }}/kubeconfig"
    server: 192.0.2.10
  delegate_to: localhost
  become: false
"""

RETURN = r"""
path:
  description: The file written.
  returned: always
  type: str
  sample: /home/me/cluster/kubeconfig
server:
  description: The server URL written.
  returned: success
  type: str
  sample: https://192.0.2.10:6443
changes:
  description: One line per change made (or that would be made in check mode); never the credential.
  returned: always
  type: list
  elements: str
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import atomic_write, lstat_or_none, os_error_message
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_kubeconfig import (
    HAS_YAML,
    YAML_IMPORT_ERROR,
    KubeconfigError,
    address_problem,
    build,
    redact,
    redacted_text,
    render,
)


def existing(path):
    """(bytes, mode) of the file at ``path``, or (None, None); refuses anything but a regular file."""
    st = lstat_or_none(path)
    if st is None:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        raise KubeconfigError("refusing to write the kubeconfig to %s: it is not a regular file (a symlink or a"
                              " directory); set k0s_kubeconfig_path to a file name" % path)
    with open(path, "rb") as f:
        return f.read(), stat.S_IMODE(st.st_mode)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            content=dict(type="str", required=True, no_log=True),
            path=dict(type="path", required=True),
            server=dict(type="str", default=""),
            server_fallback=dict(type="str", default=""),
            cluster_name=dict(type="str", default="k0s"),
        ),
        supports_check_mode=True,
    )
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    p = module.params
    path, changes = p["path"], []
    result = dict(path=path, changes=changes)
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        module.fail_json(msg="path must be a normalised absolute path, got %r" % path, **result)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        module.fail_json(msg="the directory of the kubeconfig path %s does not exist: create it or set"
                             " k0s_kubeconfig_path to a file in an existing directory" % path, **result)
    for name in ("server", "server_fallback"):
        problem = p[name] and address_problem(p[name], name)
        if problem:
            module.fail_json(msg=problem, **result)
    try:
        doc = build(p["content"], p["server"], p["server_fallback"], p["cluster_name"])
        server = doc["clusters"][0]["cluster"]["server"]
        data = render(doc)
        old, mode = existing(path)
    except KubeconfigError as e:
        module.fail_json(msg="the admin kubeconfig from k0s cannot be written to %s: %s" % (path, e), **result)
    except OSError as e:
        module.fail_json(msg=os_error_message(e), **result)
    result["server"] = server
    if old != data:
        changes.append("%s %s (server %s, mode 0600)" % ("wrote" if old is None else "updated", path, server))
    elif mode != 0o600:
        changes.append("set the mode of %s to 0600 (was %04o)" % (path, mode))
    if changes and not module.check_mode:
        try:
            atomic_write(path, data, mode=0o600)
        except OSError as e:
            module.fail_json(msg=os_error_message(e), **result)
    if module._diff:
        result["diff"] = dict(before_header=path, after_header=path,
                              before="" if old is None else redacted_text(old),
                              after=render(redact(doc)).decode("ascii"))
    module.exit_json(changed=bool(changes), **result)


if __name__ == "__main__":
    main()
