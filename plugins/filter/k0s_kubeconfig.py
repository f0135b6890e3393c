# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_kubeconfig_problems
short_description: What is wrong with the settings of the admin kubeconfig fetch (an empty list when nothing)
version_added: "0.4.0"
description:
  - Checks, on the controller and before anything changes, the values the cluster role's C(kubeconfig) entry point
    uses (module_utils C(k0s_kubeconfig), the checks of M(fleetsplit.k0s.k0s_kubeconfig)) - C(k0s_api_address) a bare
    host name or IP address, the server host taken from the inventory likewise, the cluster name, and
    C(k0s_kubeconfig_path) a file name in an existing directory of the controller that is not a symlink.
options:
  _input:
    description: The settings.
    type: dict
    required: true
    suboptions:
      api_address:
        description: C(k0s_api_address).
        type: str
      cluster_name:
        description: C(k0s_kubeconfig_cluster_name).
        type: str
      path_given:
        description: C(k0s_kubeconfig_path) as given.
        type: str
      path:
        description: That path resolved on the controller.
        type: str
      server:
        description: The server host the role derived ("" when k0s's own address is used).
        type: str
      server_origin:
        description: Where that host came from, for the message (such as C(ansible_host of leader1)).
        type: str
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Refuse bad kubeconfig settings before anything changes
  vars:
    __problems: >-
      {{ dict(api_address=k0s_api_address, cluster_name='k0s', path_given='./kubeconfig', path='/work/kubeconfig',
              server='', server_origin='') | fleetsplit.k0s.k0s_kubeconfig_problems }}
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ __problems | join(' ') }}"
"""

RETURN = r"""
_value:
  description: One message per problem, each naming the variable and what to do.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_kubeconfig import settings_problems

_KEYS = ("api_address", "cluster_name", "path_given", "path", "server", "server_origin")


def k0s_kubeconfig_problems(settings):
    if not isinstance(settings, dict) or set(settings) != set(_KEYS):
        raise AnsibleFilterError("k0s_kubeconfig_problems takes a dict with exactly the keys %s" % ", ".join(_KEYS))
    return settings_problems(*[settings[k] for k in _KEYS])


class FilterModule(object):
    def filters(self):
        return {"k0s_kubeconfig_problems": k0s_kubeconfig_problems}
