# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k0s_join_token: runs the module through the compact module transport
(plugin_utils/compact_module.py), so a joining host receives its token and this module's few KB of code,
not an AnsiballZ payload."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.fleetsplit.k0s.plugins.module_utils import join_token_file
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils import compact_module


class ActionModule(ActionBase):

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        result.update(compact_module.execute(self, "fleetsplit.k0s.k0s_join_token", join_token_file.SPEC,
                                             join_token_file.__name__, dict(self._task.args), task_vars))
        return result
