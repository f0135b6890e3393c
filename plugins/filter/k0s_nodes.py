# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_ready_nodes
short_description: Names of the Ready nodes in C(kubectl get nodes -o json) output
version_added: "0.3.0"
description:
  - Takes the output of C(k0s kubectl get nodes -o json) (text or parsed) and returns the names of the nodes whose
    C(Ready) condition has status C(True), the check k0sctl makes before it counts a worker as joined
    (pkg/node/statusfunc.go, KubeNodeReadyFunc).
  - Empty or unparsable input gives an empty list (the caller is waiting for nodes to appear).
positional: _input
options:
  _input:
    description: The kubectl JSON output.
    type: raw
    required: true
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Wait for worker-1 to be Ready
  ansible.builtin.command: k0s kubectl get nodes -o json
  register: nodes
  until: "'worker-1' in nodes.stdout | fleetsplit.k0s.k0s_ready_nodes"
  retries: 60
  delay: 2
"""

RETURN = r"""
_value:
  description: Node names, in the order the API listed them.
  type: list
  elements: str
"""

import json


def k0s_ready_nodes(output):
    if isinstance(output, str):
        try:
            output = json.loads(output) if output.strip() else {}
        except ValueError:
            return []
    items = output.get("items") if isinstance(output, dict) else None
    ready = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        conditions = (item.get("status") or {}).get("conditions") or []
        if any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready.append((item.get("metadata") or {}).get("name"))
    return [name for name in ready if isinstance(name, str)]


class FilterModule(object):
    def filters(self):
        return {"k0s_ready_nodes": k0s_ready_nodes}
