#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_sysext
short_description: Run k0s from a systemd-sysext image on a host, upgrade it, roll it back
version_added: "0.5.0"
description:
  - Keeps k0s sysext images (built by C(fleetsplit.k0s.deploy_k0s) with C(k0s_overlay_format=sysext)) in a root-owned
    store C(<store_dir>/<name>-<sha256 prefix>.raw) and points C(<extensions_dir>/<name>.raw) at the current one;
    C(systemd-sysext) names the extension after that link.
  - V(query) changes nothing and reports every refusal in RV(problems) and what V(present) would do. The refusals are
    no C(systemd-sysext); an image built for another architecture; C(<extensions_dir>/<name>.raw) that is not this
    module's link (never overwritten); an image of the same name in C(/etc/extensions) or C(/run/extensions) (it would
    shadow ours); k0s installed by the release store (C(fleetsplit.k0s.deploy_k0s); remove it with
    C(fleetsplit.k0s.reset_k0s) first); unsafe directories on the way.
  - V(present) stores the image when the store lacks it (from O(bundle), checked for size and sha256, temporary name
    then rename), switches the link in one rename, runs C(systemd-sysext refresh), C(systemctl daemon-reload),
    C(systemd-tmpfiles --create) on the image's C(/usr/lib/tmpfiles.d/fleetsplit-k0s.conf), checks that
    C(systemd-sysext status) lists the image on C(/usr), then starts O(unit), or restarts it when the image changed.
    The previous image stays in the store for V(rollback); older ones this store wrote are removed.
  - V(rollback) points the link back to the previous image, refreshes and restarts O(unit).
  - The action plugin uploads O(bundle_src) from the controller with one C(put_file) (like M(fleetsplit.k0s.k0s_release));
    the role passes it only when the query reports RV(transfer).
options:
  state:
    description: V(query) reads only; V(present) makes the host run the image; V(rollback) goes back to the previous one.
    type: str
    choices: [query, present, rollback]
    default: present
  name:
    description: The extension name (the image file name without C(.raw); its C(extension-release.<name>) carries it).
    type: str
    required: true
  sha256:
    description: The image's sha256 (computed on the controller). Required unless O(state=rollback).
    type: str
  size:
    description: The image's size in bytes. Required unless O(state=rollback).
    type: int
  architecture:
    description: The image's C(ARCHITECTURE=) (systemd's spelling, e.g. C(x86-64)); empty or C(_any) for any.
    type: str
    default: ""
  unit:
    description: The unit the image carries for this host's role (C(k0scontroller) or C(k0sworker)); omit to leave the service alone.
    type: str
  bundle:
    description: The image already uploaded to the host. Mutually exclusive with O(bundle_src).
    type: path
  bundle_src:
    description: The image on the controller; the action uploads it (one C(put_file)) and passes it as O(bundle).
    type: path
  bundle_members:
    description: The upload's member table, one member C({name, offset=0, size}) (the shared upload path requires it).
    type: list
    elements: dict
  store_dir:
    description: The image store (a 0700 root-owned directory).
    type: path
    default: /var/lib/fleetsplit-k0s/sysext
  extensions_dir:
    description: Where the link systemd-sysext merges is placed.
    type: path
    default: /var/lib/extensions
  release_store_dir:
    description: The release store of C(fleetsplit.k0s.deploy_k0s), checked so both methods never provide k0s on one host.
    type: path
    default: /var/lib/fleetsplit-k0s
  bin_dir:
    description: Where the release store would have linked C(k0s) (checked, never written).
    type: path
    default: /usr/bin
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports the query's plan (transfer, switch, refresh, start/restart); nothing is uploaded or changed.
  diff_mode:
    support: full
    details: The image the link names before and after (store file names carry the sha256 prefix).
  platform:
    platforms: posix
notes:
  - Inside a container, C(systemd-sysext refresh) needs loop devices (privileged) and a shared root mount
    (C(mount --make-rshared /)), and systemd makes C(/) shared at boot only outside containers
    (C(src/shared/mount-setup.c), C(mount_setup())). See docs/sysext-hosts.md.
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: What would change?
  fleetsplit.k0s.k0s_sysext:
    state: query
    name: k0s
    sha256: "{{ image.sha256 }}"
    size: "{{ image.size }}"
    architecture: x86-64
    unit: k0scontroller
  register: q

- name: Run k0s from the image (upload only when the store lacks it)
  fleetsplit.k0s.k0s_sysext:
    name: k0s
    sha256: "{{ image.sha256 }}"
    size: "{{ image.size }}"
    architecture: x86-64
    unit: k0scontroller
    bundle_src: "{{ '/srv/images/k0s.raw' if q.transfer else omit }}"
    bundle_members: "{{ [{'name': 'k0s.raw', 'offset': 0, 'size': image.size}] if q.transfer else omit }}"

- name: Back to the previous image
  fleetsplit.k0s.k0s_sysext:
    state: rollback
    name: k0s
    unit: k0scontroller
"""

RETURN = r"""
current:
  description: The store file the link names after the run (C(<name>-<sha256[:16]>.raw)); null when none.
  returned: always
  type: str
previous:
  description: The store file kept for rollback; null when none.
  returned: always
  type: str
wanted:
  description: The store file of the requested image.
  returned: always
  type: str
problems:
  description: Every refusal found (V(query) only; the other states fail with them).
  returned: always
  type: list
  elements: str
transfer:
  description: The store lacks the image, so it has to be uploaded.
  returned: always
  type: bool
switch:
  description: The link has to point at another image.
  returned: always
  type: bool
refresh:
  description: C(systemd-sysext refresh) has to run (switch, not merged, or merged from another image).
  returned: always
  type: bool
image_changed:
  description: The link now names another image than before the run (an upgrade, a first deploy or a rollback).
  returned: when O(state=present) or O(state=rollback)
  type: bool
merged:
  description: C(systemd-sysext status) lists the extension on C(/usr).
  returned: always
  type: bool
service:
  description: The unit's C(active), C(sub), C(main_pid) and C(unit_path) (systemctl show) after the run.
  returned: when O(unit) is given
  type: dict
steps:
  description: The commands run and files stored, in order.
  returned: always
  type: list
  elements: str
removed:
  description: Older images removed from the store.
  returned: always
  type: list
  elements: str
bundle_bytes:
  description: Bytes uploaded by the action (only when O(bundle_src) was sent).
  returned: when the image was uploaded
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError, os_error_message
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_sysext import (
    Host, SysextError, present, query, rollback, unit_state)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["query", "present", "rollback"], default="present"),
            name=dict(type="str", required=True),
            sha256=dict(type="str"),
            size=dict(type="int"),
            architecture=dict(type="str", default=""),
            unit=dict(type="str"),
            bundle=dict(type="path"),
            bundle_src=dict(type="path"),
            bundle_members=dict(type="list", elements="dict"),
            store_dir=dict(type="path", default="/var/lib/fleetsplit-k0s/sysext"),
            extensions_dir=dict(type="path", default="/var/lib/extensions"),
            release_store_dir=dict(type="path", default="/var/lib/fleetsplit-k0s"),
            bin_dir=dict(type="path", default="/usr/bin"),
        ),
        mutually_exclusive=[("bundle", "bundle_src")],
        required_if=[("state", "query", ("sha256", "size")), ("state", "present", ("sha256", "size"))],
        supports_check_mode=True,
    )
    p = module.params
    host = Host(store_dir=p["store_dir"], extensions_dir=p["extensions_dir"], release_store=p["release_store_dir"],
                bin_dir=p["bin_dir"])
    image = {"name": p["name"], "sha256": (p["sha256"] or "").lower(), "size": p["size"],
             "architecture": p["architecture"]}
    members = p["bundle_members"]
    if p["bundle"] and (not members or len(members) != 1 or members[0].get("size") != p["size"]):
        module.fail_json(msg="bundle_members must be one member whose size is the image's size (%s)" % p["size"])
    try:
        if p["state"] == "query":
            result = query(host, image, p["unit"])
            result["changed"] = False
            result["service"] = unit_state(host, p["unit"]) if p["unit"] and not result["problems"] else None
        elif p["state"] == "present":
            result = present(host, image, p["unit"], p["bundle"], module.check_mode)
        else:
            result = rollback(host, p["name"], p["unit"], module.check_mode)
    except (SysextError, HostFsError) as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg=os_error_message(e))
    result.setdefault("steps", [])
    result.setdefault("removed", [])
    if module._diff and result["changed"]:
        link = host.link_path(p["name"])
        after = result["wanted"] + ("" if p["state"] == "rollback" else " (sha256 %s)" % image["sha256"])
        result["diff"] = {"before_header": link, "before": "%s\n" % (result.get("before") or "(none)"),
                          "after_header": link, "after": after + "\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
