# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k0s_join_token: the module through the compact module transport
(plugin_utils/compact_module.py), so a joining host receives its token and this module's few KB of code,
not an AnsiballZ payload."""

from __future__ import annotations

from ansible_collections.fleetsplit.k0s.plugins.module_utils import join_token_file
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.compact_module import CompactAction


class ActionModule(CompactAction):

    MODULE = "fleetsplit.k0s.k0s_join_token"
    LOGIC = join_token_file
