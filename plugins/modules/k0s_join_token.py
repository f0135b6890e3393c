#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_join_token
short_description: Put a k0s join token on a host for C(--token-file), overwrite it after the join, or read membership
version_added: "0.3.0"
description:
  - V(present) writes the token to O(path), C(root:root) mode 0600, through a temporary file renamed into place
    (the directory is created mode 0700 when missing), as k0sctl does before it starts a joining host.
  - With O(service_name) and O(service_manager), V(present) then restarts that k0s service, which reads the file
    through C(--token-file) (one module run per joining host for the token and the start).
  - V(overwritten) replaces the content with a comment line once the host has joined, so no usable token stays
    on disk (k0s ignores the token file once it has cluster state). Nothing is done when the file is missing.
  - V(query) changes nothing and reports what O(data_dir) tells about cluster membership (RV(k0s_cluster)).
  - V(created) runs on the leader C(k0s token create) O(count) times with O(k0s), O(data_dir), O(role) and
    O(expiry), and returns the tokens in RV(tokens) (one module run for a whole batch). The result holds
    secrets, so the task must set C(no_log).
  - Runs on the managed host with the Python standard library only, through the collection's compact module
    transport (no ansible-core code is sent; see the C(k0s_module_transport) variable in the collection's
    docs/distribution.md). The token is an option with C(no_log), so Ansible masks it; with pipelining it never
    touches the host's disk outside O(path).
options:
  path:
    description: The token file k0s reads with C(--token-file).
    type: path
    default: /etc/k0s/k0stoken
  token:
    description: The join token (required with O(state=present)). Never shown in results, logs or diffs.
    type: str
  state:
    description: What to do.
    type: str
    choices: [present, overwritten, query, created]
    default: present
  data_dir:
    description: The k0s data directory, for RV(k0s_cluster) and for C(k0s token create).
    type: path
    default: /var/lib/k0s
  service_name:
    description:
      - The k0s service to restart after O(state=present) wrote the token (C(k0scontroller), C(k0sworker)).
      - Letters, digits and C(._@-) only.
    type: str
  service_manager:
    description: How to restart O(service_name) (C(systemctl restart) or C(rc-service ... restart)).
    type: str
    choices: [systemd, openrc]
  k0s:
    description: The leader's k0s executable, for O(state=created).
    type: path
  role:
    description: The role the tokens of O(state=created) join as.
    type: str
    choices: [controller, worker]
  expiry:
    description: C(k0s token create --expiry) for O(state=created).
    type: str
    default: 1h
  count:
    description: How many tokens O(state=created) makes (1 to 1000).
    type: int
    default: 1
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
    details: The action validates the arguments on the controller and sends the module's logic through the compact module transport.
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
  diff_mode:
    support: none
    details: The file holds a secret; RV(changes) says what changed instead.
  platform:
    platforms: posix
notes:
  - A symlink at O(path) is refused, and so is any directory on the way that is owned by another user or
    world-writable (the checks of M(fleetsplit.k0s.k0s_release)).
seealso:
  - name: k0sctl's token handling (phase/install_workers.go)
    description: k0sctl writes the token 0600, starts the host with C(--token-file), then invalidates the token and overwrites the file.
    link: https://github.com/k0sproject/k0sctl/blob/main/phase/install_workers.go
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Hand the worker its token
  fleetsplit.k0s.k0s_join_token:
    token: "{{ worker_token }}"
  no_log: true

- name: Make two worker tokens on the leader
  fleetsplit.k0s.k0s_join_token:
    state: created
    k0s: /usr/bin/k0s
    role: worker
    count: 2
  register: made
  no_log: true

- name: Hand a worker its token and start it
  fleetsplit.k0s.k0s_join_token:
    token: "{{ made.tokens[0] }}"
    service_name: k0sworker
    service_manager: systemd
  no_log: true

- name: After the join, leave no usable token behind
  fleetsplit.k0s.k0s_join_token:
    state: overwritten
"""

RETURN = r"""
path:
  description: The token file.
  returned: always
  type: str
  sample: /etc/k0s/k0stoken
changes:
  description: One line per change made (or that would be made in check mode); never the token.
  returned: always
  type: list
  elements: str
tokens:
  description: The tokens made by O(state=created), in order (also those made before a failure, to invalidate).
  returned: state is created
  type: list
  elements: str
k0s_cluster:
  description: Cluster membership read from O(data_dir), as the C(host.k0s_cluster) result of M(fleetsplit.k0s.k0s_release).
  returned: state is query
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.join_token_file import SPEC, run


def main():
    run(AnsibleModule(supports_check_mode=True, **SPEC))


if __name__ == "__main__":
    main()
