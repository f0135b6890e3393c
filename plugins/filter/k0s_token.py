# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_join_token_info
short_description: The public facts of a k0s join token (id, role, API server, CA fingerprint), never its secret
version_added: "0.3.0"
description:
  - Decodes a k0s join token (base64 of a gzip-compressed kubeconfig, as C(k0s token create) prints it) and returns
    what can be shown - the bootstrap token id, the role it joins as, the server URL and the sha256 of the cluster
    CA it carries. The secret half of the bootstrap token is never returned.
  - Fails with a message naming the problem (not base64, not gzip, no server, wrong user, ...) that never contains
    the token text.
positional: _input, source
options:
  _input:
    description: The join token text.
    type: str
    required: true
  source:
    description: Where the token came from (a file name), put in front of error messages.
    type: str
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Check a token brought by the user before anything changes
  ansible.builtin.assert:
    that: (lookup('ansible.builtin.file', k0s_join_token_file) | fleetsplit.k0s.k0s_join_token_info(k0s_join_token_file)).role == 'worker'
  no_log: true
"""

RETURN = r"""
_value:
  description: Public facts of the token.
  type: dict
  contains:
    id:
      description: The bootstrap token id (what C(k0s token invalidate) takes).
      type: str
      sample: abcdef
    role:
      description: V(worker) or V(controller).
      type: str
    user:
      description: The kubeconfig user, C(kubelet-bootstrap) or C(controller-bootstrap).
      type: str
    server:
      description: The API URL the joining host contacts.
      type: str
      sample: https://10.0.0.10:6443
    ca_sha256:
      description: sha256 of the cluster CA certificate in the token (the same bytes as the leader's pki/ca.crt).
      type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils.k0s_token import TokenError, describe


def k0s_join_token_info(token, source=None):
    try:
        return describe(token)
    except TokenError as e:
        raise AnsibleFilterError("%s: %s" % (source, e) if source else str(e))


class FilterModule(object):
    def filters(self):
        return {"k0s_join_token_info": k0s_join_token_info}
