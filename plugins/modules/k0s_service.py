#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_service
short_description: Write a k0s service unit (systemd or OpenRC), enable it and start or restart k0s, in one step
version_added: "0.1.0"
description:
  - Writes the unit file (systemd) or init script (OpenRC, plus an optional C(/etc/conf.d) file) with the given
    content, then reloads systemd when the unit changed, enables or disables the service and starts, stops or
    restarts it. The content normally comes from the templates of the C(fleetsplit.k0s.service) role, which match
    what C(k0s install) writes.
  - One module run instead of a C(template) (a C(stat) plus a C(copy) module) and a C(systemd_service) or
    C(service) module, which keeps what a host receives per play small.
  - With O(root) other than C(/) the files are written below that directory (an image overlay) and enabling
    creates the links C(systemctl enable) or C(rc-update add) would create; no service manager is contacted.
  - Runs on the managed host with the Python standard library only.
options:
  name:
    description: Service name, for example C(k0scontroller) or C(k0sworker). Letters, digits and C(._@-) only.
    type: str
    required: true
  manager:
    description: The host's service manager.
    type: str
    required: true
    choices: [systemd, openrc]
  unit:
    description:
      - Content of C(/etc/systemd/system/<name>.service) (systemd) or C(/etc/init.d/<name>) (OpenRC).
    type: str
    required: true
  conf:
    description:
      - OpenRC only. Content of C(/etc/conf.d/<name>), to which the O(env) variables are appended (exported).
        Written with mode 0600. Unset (and O(env) empty) leaves that file alone.
    type: str
  env:
    description:
      - Environment of the service, treated as secret (proxy credentials and the like) - never in the unit, in
        diffs or in logs. systemd - written to C(/etc/k0s/<name>.env) (mode 0600), which the unit must name with
        C(EnvironmentFile=); empty removes that file. OpenRC - appended to the conf.d file (mode 0600).
      - Names must match C([A-Za-z_][A-Za-z0-9_]*), values must not contain control characters. Values are quoted
        so that both systemd's C(EnvironmentFile=) parser and C(/bin/sh) read them back exactly.
    type: dict
    default: {}
  env_path:
    description:
      - Write O(env) to this file instead (mode 0600, both managers, no C(export) lines; empty O(env) removes it).
        The unit or script must read it - k3s's units name C(/etc/systemd/system/<name>.service.env) in
        C(EnvironmentFile=) and source C(/etc/rancher/k3s/<name>.env) with C(set -o allexport) (OpenRC).
    type: path
  settings:
    description:
      - The role variables the unit was rendered from (C(k0s_bin_dir), C(k0s_libexec_dir), C(k0s_data_dir),
        C(k0s_config_path), C(k0s_join_token_path), C(k0s_system_path), C(k0s_extra_args), C(k0s_openrc_conf),
        C(k0s_role)), checked again before anything is written; a refusal names the variable.
    type: dict
    default: {}
  binary:
    description:
      - The k0s executable the unit starts (for example C(/usr/bin/k0s), a link into the current release). With
        O(state=started) a running service whose process runs another file (C(/proc/<pid>/exe), also a replaced
        one) is restarted, so a run interrupted after the switch converges on the next one.
    type: path
  root:
    description: Directory the files are written below. Anything other than C(/) only writes files.
    type: path
    default: /
  enabled:
    description:
      - Whether the service starts at boot. Unset leaves that alone.
      - With O(root) other than C(/), V(true) creates the enablement link inside O(root) and V(false) removes it.
    type: bool
  state:
    description:
      - V(started) starts the service when it is not running and restarts it when the unit changed or
        O(restart=true). V(stopped) stops it. Unset leaves the running state alone. Ignored with O(root) other
        than C(/).
    type: str
    choices: [started, stopped]
  restart:
    description:
      - Restart a running service with O(state=started) even if the unit did not change, for example because the
        k0s binaries or the k0s configuration changed.
    type: bool
    default: false
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
    support: full
    details:
      - Shows the unit before and after. The environment file and the conf.d file may hold secrets; their diff
        shows only a sha256 of the content.
  platform:
    platforms: posix
notes:
  - Files are written to a temporary name and renamed into place, C(root:root) (when run as root), mode 0644
    (systemd unit), 0600 (environment file, conf.d) or 0755 (init script). A symlink at the target path is refused, and so is any
    directory on the way that is owned by another user or world-writable (unless root-owned with the sticky
    bit), or a symlink on the way owned by another user (the same checks as M(fleetsplit.k0s.k0s_release)).
  - The action validates the arguments on the controller and runs the module's logic on the host through the
    collection's compact module transport (no ansible-core code is sent; the C(k0s_module_transport) variable in
    docs/distribution.md).
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Install and start k0s as a worker (systemd)
  fleetsplit.k0s.k0s_service:
    name: k0sworker
    manager: systemd
    unit: "{{ lookup('ansible.builtin.template', 'k0s.service.j2') }}"
    enabled: true
    state: started
    restart: "{{ k0s_binaries_changed }}"

- name: Put an enabled OpenRC service into an image overlay
  fleetsplit.k0s.k0s_service:
    name: k0scontroller
    manager: openrc
    unit: "{{ lookup('ansible.builtin.template', 'k0s.openrc.j2') }}"
    root: /srv/image-overlay
    enabled: true
"""

RETURN = r"""
path:
  description: The unit file or init script.
  returned: always
  type: str
  sample: /etc/systemd/system/k0sworker.service
unit_changed:
  description: The unit file or init script was written.
  returned: always
  type: bool
conf_changed:
  description: The OpenRC conf.d file or the systemd environment file was written or removed.
  returned: always
  type: bool
restart_reason:
  description: Why the service was (or in check mode would be) restarted, or null.
  returned: always
  type: str
  sample: k0s (pid 812) runs /var/lib/fleetsplit-k0s/releases/a/bin/k0s, not the current /var/lib/fleetsplit-k0s/releases/b/bin/k0s
enabled_changed:
  description: The service was enabled or disabled.
  returned: always
  type: bool
action:
  description: What was done to the running service (V(started), V(restarted), V(stopped)), or null.
  returned: always
  type: str
changes:
  description: One line per change made (or that would be made in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.service_unit import SPEC, run


def main():
    run(AnsibleModule(supports_check_mode=True, **SPEC))


if __name__ == "__main__":
    main()
