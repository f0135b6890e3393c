# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k3s_data: uploads the bundle of what a host lacks (``bundle_src``) with one
put_file and runs the module on it, in one task (the k0s_release action's path, plugin_utils/bundle_upload.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.bundle_upload import run_with_bundle

MODULE = "fleetsplit.k0s.k3s_data"


class ActionModule(ActionBase):

    TRANSFERS_FILES = False   # queries and rollbacks upload nothing; the tmp dir is made on demand

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        result.update(run_with_bundle(self, MODULE, self._task.args, task_vars, "k3s-data.bundle"))
        return result
