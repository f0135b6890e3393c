# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_plain_path
short_description: Is this a plain absolute path, safe to put unquoted into a unit or script?
version_added: "0.3.0"
description:
  - True for an absolute, normalised path made of letters, digits, C(.), C(_), C(+), C(@), C(-) and C(/) only,
    with no C(.) or C(..) component (module_utils C(k0s_settings), the check M(fleetsplit.k0s.k0s_service) makes),
    so it can go into a systemd C(ExecStart) or an OpenRC C(command_args) as it is and cannot climb out of its
    directory.
options:
  _input:
    description: The path.
    type: str
    required: true
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Refuse a token path that is not plain
  ansible.builtin.assert:
    that: k0s_join_token_path is fleetsplit.k0s.k0s_plain_path
"""

RETURN = r"""
_value:
  description: Whether the path is plain.
  type: bool
"""

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import path_problem


def k0s_plain_path(value):
    return value != "/" and path_problem("path", value) is None


class TestModule(object):
    def tests(self):
        return {"k0s_plain_path": k0s_plain_path}
