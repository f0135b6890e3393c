# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_plain_path
short_description: Is this a plain absolute path, safe to put unquoted into a unit or script?
version_added: "0.3.0"
description:
  - True for an absolute path made of letters, digits, C(.), C(_), C(-) and C(/) only, with no C(.) or C(..)
    component, so it can go into a systemd C(ExecStart) or an OpenRC C(command_args) as it is and cannot climb out
    of its directory.
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

import re

# fullmatch: a "$" anchor would also let a trailing newline through (into a unit's ExecStart).
_PLAIN = re.compile(r"(/[A-Za-z0-9._-]+)+")


def k0s_plain_path(value):
    return (isinstance(value, str) and _PLAIN.fullmatch(value) is not None
            and not any(part in (".", "..") for part in value.split("/")))


class TestModule(object):
    def tests(self):
        return {"k0s_plain_path": k0s_plain_path}
