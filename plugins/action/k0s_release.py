# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k0s_release: uploads a controller-side stream bundle (O(bundle_src)) into the
task's remote temporary directory and runs the module on it through the compact module transport
(plugin_utils/compact_module.py), in one task (plugin_utils/bundle_upload.py,
shared with k0s_images; a plain put_file, not ansible.builtin.copy: within the 5 % overhead budget of a small
upgrade).
"""

from __future__ import annotations

import os
import re

from ansible.plugins.action import ActionBase
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_build
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.bundle_upload import run_with_bundle

MODULE = "fleetsplit.k0s.k0s_release"


class ActionModule(ActionBase):

    TRANSFERS_FILES = False   # most calls (query, rollback) upload nothing; the tmp dir is made on demand

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        result.update(run_with_bundle(self, MODULE, args, task_vars, "k0s-streams.bundle",
                                      compact=(release_build.SPEC, release_build.__name__)))
        if result.get("failed") and args.get("bundle_src") is not None:
            self._name_cache_file(result, args, os.path.realpath(os.path.expanduser(str(args["bundle_src"]))))
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
