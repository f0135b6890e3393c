# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Shared by the k0s_release and k0s_images actions: upload one controller-side bundle with a single
put_file into the task's remote temporary directory, run the module on it, remove the directory.

Why not ansible.builtin.copy: copy runs a stat module and a copy module on the host besides the transfer,
~0.3 MB of module payload per host and run; a plain put_file is the transfer and nothing else (the module
verifies every member: size, CRC-32, sha256).
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils import compact_module

CHECK_MODE_BUNDLE = "/nonexistent/fleetsplit-check-mode.bundle"


def run_with_bundle(action, module, args, task_vars, remote_name, compact=None):
    """Run ``module`` with ``args``; a ``bundle_src`` in them is uploaded first and passed as ``bundle``.
    ``compact`` (the module's spec and module_utils entry) runs it through the compact module transport.

    Returns the module result, plus ``bundle_bytes`` (the bytes sent) when something was uploaded.
    """
    def execute(module_args):
        if compact is None:
            return action._execute_module(module_name=module, module_args=module_args, task_vars=task_vars)
        return compact_module.execute(action, module, compact[0], compact[1], module_args, task_vars)

    args = dict(args)
    src = args.pop("bundle_src", None)
    if src is None:
        return execute(args)
    if args.get("bundle") is not None:
        raise AnsibleActionFail("bundle_src and bundle are mutually exclusive: bundle_src is a controller file "
                                "this action uploads, bundle a file already on the host")
    if args.get("bundle_members") is None:
        raise AnsibleActionFail("bundle_src needs bundle_members (the bundle's member table)")
    src = os.path.realpath(os.path.expanduser(str(src)))
    if not os.path.isfile(src):
        raise AnsibleActionFail("bundle_src %s is not a file on the controller" % src)
    if action._task.check_mode:
        # Nothing is uploaded in check mode; the module reports what the bundle would provide.
        args["bundle"] = CHECK_MODE_BUNDLE
        return execute(args)
    shell = action._connection._shell
    remote_tmp = shell.tmpdir or action._make_tmp_path()
    try:
        remote = shell.join_path(remote_tmp, remote_name)
        action._transfer_file(src, remote)
        action._fixup_perms2((remote_tmp, remote))
        args["bundle"] = remote
        result = execute(args)
    finally:
        action._remove_tmp_path(remote_tmp)
    result["bundle_bytes"] = os.path.getsize(src)
    return result
