# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k0s_sysext: uploads the sysext image the store lacks (``bundle_src``) with one
put_file and runs the module on it, in one task (the k0s_release action's path, plugin_utils/bundle_upload.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.bundle_upload import run_with_bundle

MODULE = "fleetsplit.k0s.k0s_sysext"


class ActionModule(ActionBase):

    TRANSFERS_FILES = False   # query, rollback and unchanged runs upload nothing; the tmp dir is made on demand

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        result.update(run_with_bundle(self, MODULE, self._task.args, task_vars, "k0s-sysext.raw"))
        return result
