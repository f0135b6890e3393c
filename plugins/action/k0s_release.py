# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k0s_release: uploads a controller-side stream bundle (O(bundle_src)) into the
task's remote temporary directory and runs the module on it, in one task.

Why not ansible.builtin.copy: copy runs a stat module and a copy module on the host besides the transfer,
~0.3 MB of module payload per host and run, which is more than the 5 % overhead budget of a small upgrade.
The transfer here is a plain put_file; the module verifies every member (size, CRC-32, sha256) anyway.
"""

from __future__ import annotations

import os
import re

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

MODULE = "fleetsplit.k0s.k0s_release"


class ActionModule(ActionBase):

    TRANSFERS_FILES = False   # most calls (query, rollback) upload nothing; the tmp dir is made on demand

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        src = args.pop("bundle_src", None)
        if src is None:
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result
        if args.get("bundle") is not None:
            raise AnsibleActionFail("bundle_src and bundle are mutually exclusive: bundle_src is a controller file "
                                    "this action uploads, bundle a file already on the host")
        if args.get("bundle_members") is None:
            raise AnsibleActionFail("bundle_src needs bundle_members (the stream_bundle result's members)")
        src = os.path.realpath(os.path.expanduser(str(src)))
        if not os.path.isfile(src):
            raise AnsibleActionFail("bundle_src %s is not a file on the controller" % src)
        if self._task.check_mode:
            # Nothing is uploaded in check mode; the module reports what the bundle would provide.
            args["bundle"] = "/nonexistent/fleetsplit-check-mode.bundle"
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result
        remote_tmp = self._connection._shell.tmpdir or self._make_tmp_path()
        try:
            remote = self._connection._shell.join_path(remote_tmp, "k0s-streams.bundle")
            self._transfer_file(src, remote)
            self._fixup_perms2((remote_tmp, remote))
            args["bundle"] = remote
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        finally:
            self._remove_tmp_path(remote_tmp)
        if result.get("failed"):
            self._name_cache_file(result, args, src)
        result["bundle_bytes"] = os.path.getsize(src)
        return result

    @staticmethod
    def _name_cache_file(result, args, src):
        """A member that failed verification on the host is named by its controller-side cache files."""
        found = re.search(r"stream for (\S+) is unusable", str(result.get("msg", "")))
        if not found:
            return
        name = found.group(1)
        streams = dict((f.get("name"), f.get("stream")) for f in args.get("files") or [] if isinstance(f, dict))
        streams["k0s"] = (args.get("executable") or {}).get("stream") if isinstance(args.get("executable"), dict) else None
        origin = "controller cache bundle %s" % src
        if streams.get(name):
            origin += ", made from the controller cache stream %s" % streams[name]
        result["msg"] = "%s (%s came from the %s; run the fleetsplit.k0s.split role again, which verifies the cache " \
                        "against the k0s executable and rewrites what differs)" % (result["msg"], name, origin)
