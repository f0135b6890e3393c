# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Action for fleetsplit.k0s.k0s_service: the module through the compact module transport
(plugin_utils/compact_module.py): the host receives the unit, its arguments and this module's code, not an
AnsiballZ payload."""

from __future__ import annotations

from ansible_collections.fleetsplit.k0s.plugins.module_utils import service_unit
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.compact_module import CompactAction


class ActionModule(CompactAction):

    MODULE = "fleetsplit.k0s.k0s_service"
    LOGIC = service_unit
