# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_settings_problems
short_description: What is wrong with the role variables that reach a k0s unit, init script or environment file
version_added: "0.4.0"
description:
  - Takes a mapping of variable name to value (C(k0s_role), C(k0s_bin_dir), C(k0s_libexec_dir), C(k0s_data_dir),
    C(k0s_config_path), C(k0s_join_token_path), C(k0s_root), C(k0s_system_path), C(k0s_env), C(k0s_openrc_conf),
    C(k0s_extra_args), C(k0s_service_managers)) and returns one message per problem, each naming the variable.
  - The same checks as M(fleetsplit.k0s.k0s_service) makes on the host (module_utils C(k0s_settings)) - no control
    characters anywhere, paths absolute and normalised without C(.) or C(..) and made of letters, digits and
    C(._+@-), environment names C([A-Za-z_][A-Za-z0-9_]*), C(k0s_role) one of controller, worker,
    controller+worker. Messages never repeat an environment value (it may be a secret).
positional: _input
options:
  _input:
    description: Variable name to value; variables left out are not checked.
    type: dict
    required: true
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Refuse values that would break the unit
  vars:
    problems: "{{ {'k0s_data_dir': k0s_data_dir, 'k0s_env': k0s_env} | fleetsplit.k0s.k0s_settings_problems }}"
  ansible.builtin.assert:
    that: problems | length == 0
    fail_msg: "{{ problems | join(' ') }}"
"""

RETURN = r"""
_value:
  description: Problems, empty when every value is acceptable.
  type: list
  elements: str
"""

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import problems


def k0s_settings_problems(settings):
    return problems(dict(settings))


class FilterModule(object):
    def filters(self):
        return {"k0s_settings_problems": k0s_settings_problems}
