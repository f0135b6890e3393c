#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k3s_data
short_description: Pre-stage k3s's data tree and install the k3s executable, shipping only what the host lacks
version_added: "0.5.0"
description:
  - k3s extracts the archive it embeds into C(<data-dir>/data/<hash>/) on start unless C(<that>/bin/k3s) exists
    (C(cmd/k3s/main.go), C(extract), in k3s). This module builds that tree exactly as k3s would (same temporary name
    C(<hash>-tmp) under k3s's own lock C(data/.lock), file modes from the archive, directories 0755, symlinks, k3s's
    C(bin/.sha256sums) and C(bin/.links) check, the rename, the C(data/cni) links, C(current) and C(previous)), so
    k3s finds it and does not extract again.
  - Contents the host already has in a verified tree C(data/<hash>/) are copied (never hard linked); the others
    come inflated from one uploaded bundle (M(fleetsplit.k0s.stream_bundle)), each checked for size, CRC-32 and
    sha256. The k3s executable ships whole (it cannot run without its own archive), replaced by temporary file and
    rename, mode 0755, and kept by content in C(<store_dir>/executables/) for O(state=rollback).
  - V(query) changes nothing and reports RV(missing) (bundle member names the host lacks), RV(tampered) and RV(changes).
  - A tree C(data/<hash>) that is not as listed is never used; it is rebuilt and moved aside to
    C(<data_dir>/data/.fleetsplit-backup/).
  - All checks run before the first change. Nothing changes when everything matches.
  - The action plugin uploads O(bundle_src) from the controller with one C(put_file) (like M(fleetsplit.k0s.k0s_release)).
options:
  state:
    description:
      - V(query) reads only; V(present) makes it so; V(rollback) swaps C(data/current) and C(data/previous) and puts
        back the executable kept for the previous tree (running it again swaps back).
    type: str
    choices: [query, present, rollback]
    default: present
  data_dir:
    description: k3s's data dir (its C(--data-dir)).
    type: path
    default: /var/lib/rancher/k3s
  bin_dir:
    description: Where the executable goes (k3s-install's C(BIN_DIR)), and the CLI links.
    type: path
    default: /usr/local/bin
  store_dir:
    description: The executables kept by content for rollback (C(executables/<sha256>)) and their record; mode 0700.
    type: path
    default: /var/lib/fleetsplit-k0s/k3s
  data_hash:
    description: The data tree's name (payload_split's C(data_hash)). Required unless V(rollback).
    type: str
  k3s_version:
    description: The version (payload_split's C(k3s_version)), reported back.
    type: str
  members:
    description: payload_split's C(members) (C(path), C(type), C(mode), C(size), C(sha256), C(target)). Required unless V(rollback).
    type: list
    elements: dict
  executable:
    description: payload_split's C(stripped_executable) (the whole k3s; C(size), C(sha256), C(crc32)). Required unless V(rollback).
    type: dict
  bundle:
    description: A bundle already on the host. Mutually exclusive with O(bundle_src).
    type: path
  bundle_src:
    description: A bundle on the controller; the action uploads it (one C(put_file)) and passes it as O(bundle).
    type: path
  bundle_members:
    description: The bundle's member table C([{name, offset, size}]); names are content sha256s, and C(k3s) for the executable.
    type: list
    elements: dict
  cli_links:
    description:
      - Symlinks C(<bin_dir>/<name>) -> C(k3s), as k3s-install makes them. A file or a link to something else already
        there is never replaced (reported in RV(skipped_links)).
    type: list
    elements: str
    default: [kubectl, crictl, ctr]
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: C(data/current) and C(data/previous) before and after, then the changes (paths and reasons); never file contents.
  platform:
    platforms: posix
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: What does the host lack?
  fleetsplit.k0s.k3s_data:
    state: query
    data_hash: "{{ split.data_hash }}"
    members: "{{ split.members }}"
    executable: "{{ split.stripped_executable }}"
  register: q

- name: Send it in one transfer and pre-stage the tree
  fleetsplit.k0s.k3s_data:
    data_hash: "{{ split.data_hash }}"
    k3s_version: "{{ split.k3s_version }}"
    members: "{{ split.members }}"
    executable: "{{ split.stripped_executable }}"
    bundle_src: "{{ bundle.path | default(omit) }}"
    bundle_members: "{{ bundle.members | default(omit) }}"
"""

RETURN = r"""
missing:
  description: Bundle member names the host lacks (content sha256s of files in no verified tree, C(k3s) for the executable).
  returned: always
  type: list
  elements: str
tampered:
  description: Paths in the existing C(data/<hash>) that are not as listed (rebuilt by V(present)).
  returned: unless rollback
  type: list
  elements: str
tampered_reasons:
  description: Why each tampered path is.
  returned: unless rollback
  type: dict
current:
  description: The data hash C(data/current) names (after the change, except in check mode).
  returned: always
  type: str
previous:
  description: The data hash C(data/previous) names.
  returned: always
  type: str
changes:
  description: What V(present) or V(rollback) changes (or would).
  returned: always
  type: list
  elements: str
up_to_date:
  description: Nothing to change.
  returned: unless rollback
  type: bool
skipped_links:
  description: CLI link names left alone because something else is there.
  returned: unless rollback
  type: list
  elements: str
executable_changed:
  description: C(<bin_dir>/k3s) was (or in check mode would be) replaced; a running k3s needs a restart.
  returned: unless query
  type: bool
current_changed:
  description: C(data/current) was (or would be) switched to another tree; a running k3s needs a restart.
  returned: unless query
  type: bool
backup:
  description: Where a tampered tree was moved.
  returned: when a tampered tree was moved aside
  type: str
k3s_version:
  description: O(k3s_version) as given.
  returned: always
  type: str
bundle_bytes:
  description: Bytes uploaded by the action (only when O(bundle_src) was sent).
  returned: when a bundle was uploaded
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError, os_error_message
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k3s_data import present, query, result, rollback


def _diff(before, after, changes):
    def text(r):
        return "".join("%s: %s\n" % (k, r.get(k)) for k in ("current", "previous"))
    return {"before_header": "data/current, data/previous", "before": text(before),
            "after_header": "data/current, data/previous", "after": text(after) + "".join("%s\n" % c for c in changes)}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["query", "present", "rollback"], default="present"),
            data_dir=dict(type="path", default="/var/lib/rancher/k3s"),
            bin_dir=dict(type="path", default="/usr/local/bin"),
            store_dir=dict(type="path", default="/var/lib/fleetsplit-k0s/k3s"),
            data_hash=dict(type="str"),
            k3s_version=dict(type="str"),
            members=dict(type="list", elements="dict"),
            executable=dict(type="dict"),
            bundle=dict(type="path"),
            bundle_src=dict(type="path"),
            bundle_members=dict(type="list", elements="dict"),
            cli_links=dict(type="list", elements="str", default=["kubectl", "crictl", "ctr"]),
        ),
        required_if=[("state", "query", ("data_hash", "members", "executable")),
                     ("state", "present", ("data_hash", "members", "executable"))],
        mutually_exclusive=[("bundle", "bundle_src")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] == "query":
            out = result(query(p, p["members"], p["executable"], p["data_hash"]))
            out["changed"] = False
        elif p["state"] == "present":
            out = present(p, p["members"], p["executable"], p["data_hash"], p["bundle"], p["bundle_members"],
                          module.check_mode)
        else:
            out = rollback(p, module.check_mode)
    except HostFsError as e:   # K3sDataError too
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg=os_error_message(e))
    out["k3s_version"] = p["k3s_version"]
    before, after = out.pop("before", None), out.pop("after", None)
    if module._diff and out["changed"]:
        out["diff"] = _diff(before, after, out["changes"])
    module.exit_json(**out)


if __name__ == "__main__":
    main()
