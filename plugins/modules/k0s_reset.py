#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_reset
short_description: Take a host back to the state before deploy_k0s (stop k0s, run k0s reset, remove what fleetsplit installed)
version_added: "0.5.0"
description:
  - V(query) changes nothing and returns the plan; V(absent) carries it out, in this order, after every check
    passed - stop and disable the C(k0scontroller) and C(k0sworker) services (systemd and OpenRC, whichever
    runs), run C(<store_dir>/current/bin/k0s reset) (the current release, so a stripped k0s still finds its
    binaries through C(<data_dir>/bin) and O(libexec_dir); with the unit's C(PATH), C(--data-dir) and
    C(--config) when that file exists), then remove the unit files, environment and C(conf.d) files and
    enablement links (C(systemctl daemon-reload)), C(<bin_dir>/k0s), O(libexec_dir) as a whole, the data-dir
    links C(k0s reset) left, the release store's own entries, the join token file and the configuration
    directory (C(dirname(config_path))) unless O(keep_config).
  - C(k0s reset) itself (k0s C(cmd/reset/reset.go), C(pkg/cleanup)) refuses while k0s runs, uninstalls the
    service it finds and removes the kubelet root dir, the data dir, C(/run/k0s) and CNI leftovers. When it
    fails, nothing else is removed and a second run retries with the binaries still in place.
  - Without an executable C(k0s) in the current release (a half-installed host) the data dir is removed
    directly, unless something is mounted at or below it (C(/proc/self/mountinfo)); then the module fails
    naming the mount.
  - Refused before any change - a path value that is not absolute and normalised, C(/), a top-level or a system
    directory removed as a whole, trees that contain each other, a mount below a tree to remove, a store root
    that is not a directory. Symlinks below a removed directory are removed, never followed.
  - In the release store only what the store owns goes (C(releases), C(current), C(previous), C(backup),
    C(incoming), C(.lock), C(rolled-back.json), temporary names); anything else is kept and reported in
    RV(kept), and the store root is removed only when it is empty then.
options:
  state:
    description: V(query) reads only (the plan); V(absent) resets the host.
    type: str
    choices: [query, absent]
    default: absent
  bin_dir:
    description: Directory of the C(k0s) link (C(k0s_bin_dir)); only C(<bin_dir>/k0s) is removed, when it links into O(store_dir).
    type: path
    default: /usr/bin
  libexec_dir:
    description: The libexec directory (C(k0s_libexec_dir)), removed as a whole with what k0s wrote there.
    type: path
    default: /usr/libexec/k0s
  data_dir:
    description: k0s's data dir (C(k0s_data_dir)), passed to C(k0s reset --data-dir).
    type: path
    default: /var/lib/k0s
  store_dir:
    description: The release store (C(k0s_store_dir)).
    type: path
    default: /var/lib/fleetsplit-k0s
  config_path:
    description: The k0s configuration (C(k0s_config_path)); its directory is removed unless O(keep_config).
    type: path
    default: /etc/k0s/k0s.yaml
  join_token_path:
    description: The join token file (C(k0s_join_token_path)); always removed (a secret).
    type: path
    default: /etc/k0s/k0stoken
  kubelet_root_dir:
    description: Passed to C(k0s reset --kubelet-root-dir) when set (k0s's default is C(<data_dir>/kubelet)).
    type: path
  system_path:
    description: The C(PATH) after O(libexec_dir) that C(k0s reset) runs with (the unit's).
    type: str
    default: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  keep_config:
    description: Keep O(config_path) and the service environment files (C(/etc/k0s/<unit>.env)); the token file still goes.
    type: bool
    default: false
  root:
    description:
      - Where the service files are looked for (C(<root>/etc/systemd/system), C(<root>/etc/init.d), ...). Anything
        other than C(/) contacts no service manager (tests, image roots).
    type: path
    default: /
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (what would be stopped, the C(k0s reset) command, every path removed, what is kept);
        C(changed) is true when anything would be stopped, reset or removed.
  diff_mode:
    support: full
    details:
      - Before - the paths that exist and are considered; after - the ones that stay.
  platform:
    platforms: posix
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Show what a reset would do
  fleetsplit.k0s.k0s_reset:
    state: query
  register: plan

- name: Reset the host, keeping /etc/k0s/k0s.yaml
  fleetsplit.k0s.k0s_reset:
    keep_config: true
"""

RETURN = r"""
services:
  description: The k0s services found running or enabled (name, manager, running, enabled).
  returned: always
  type: list
  elements: dict
stopped:
  description: Services stopped (would be, in check mode and with V(query)).
  returned: always
  type: list
  elements: str
disabled:
  description: Services disabled.
  returned: always
  type: list
  elements: str
k0s_reset:
  description:
    - C(executable) and C(command) of C(k0s reset) (null without a k0s, then C(why_not)), C(removes) (what k0s
      removes itself), C(ran), C(rc) and C(output) (what it printed).
  returned: always
  type: dict
removed:
  description: Paths removed (would be, in check mode and with V(query)), in order.
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/k0sworker.service, /usr/bin/k0s, /usr/libexec/k0s, /var/lib/fleetsplit-k0s/releases]
kept:
  description: Paths kept, each with the reason.
  returned: always
  type: dict
changes:
  description: One line per change.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError, os_error_message
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_reset import Reset


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["query", "absent"], default="absent"),
            bin_dir=dict(type="path", default="/usr/bin"),
            libexec_dir=dict(type="path", default="/usr/libexec/k0s"),
            data_dir=dict(type="path", default="/var/lib/k0s"),
            store_dir=dict(type="path", default="/var/lib/fleetsplit-k0s"),
            config_path=dict(type="path", default="/etc/k0s/k0s.yaml"),
            join_token_path=dict(type="path", default="/etc/k0s/k0stoken"),
            kubelet_root_dir=dict(type="path"),
            system_path=dict(type="str", default="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            keep_config=dict(type="bool", default=False),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )

    def run(cmd, env=None):
        return module.run_command(cmd, environ_update=env)

    reset = Reset(module.params, run, check_mode=module.check_mode)
    try:
        result = reset.query() if module.params["state"] == "query" else reset.apply()
    except HostFsError as e:
        module.fail_json(msg=str(e), **reset.result)
    except (IOError, OSError) as e:
        module.fail_json(msg=os_error_message(e), **reset.result)
    if module.params["state"] == "query":
        result["changed"] = False
    if module._diff:
        kept = sorted(result["kept"])
        result["diff"] = {"before": "\n".join(sorted(set(result["removed"]) | set(kept))) + "\n",
                          "after": "\n".join(kept) + "\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
