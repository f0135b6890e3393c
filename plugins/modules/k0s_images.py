#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_images
short_description: Put airgap image bundles into a k0s worker's images directory, with a stable mtime
version_added: "0.4.0"
description:
  - k0s's worker imports every file in C(<data-dir>/images) into containerd, remembers each by path and mtime
    (a changed mtime means a new import) and unpins the images of a file that disappeared
    (C(pkg/component/worker/ocibundle.go) in k0s). This module makes O(images_dir) hold the bundles in O(images).
  - V(query) changes nothing and reports RV(missing) (absent, or size, sha256 or mtime differ),
    RV(stale) (placed by this module earlier and no longer wanted) and RV(foreign) (never placed by this module; kept).
  - V(present) writes each missing bundle from O(bundle) (one file with a gzip stream per member, see
    M(fleetsplit.k0s.image_bundles)) to a temporary name, verifies size, CRC-32 and sha256, sets the stable mtime
    (derived from the content, so k0s does not re-import the same content) and renames it into place; then it
    removes the stale ones, so k0s unpins their images. The names placed are kept in
    C(<data-dir>/.fleetsplit-images.json); temporary files are written in the data dir too, never in
    O(images_dir) (k0s tries to import every file in it).
  - All checks (names, directories on the way, the record, the bundle's member table) run before the first change.
  - The action plugin uploads O(bundle_src) from the controller with one C(put_file) (like M(fleetsplit.k0s.k0s_release)).
options:
  images_dir:
    description: The images directory, C(<k0s data dir>/images).
    type: path
    default: /var/lib/k0s/images
  images:
    description: The bundles wanted, each with C(name) (a plain base name ending in C(.tar)), C(size), C(sha256) and C(crc32).
    type: list
    elements: dict
    required: true
  state:
    description: V(query) reads only; V(present) makes it so.
    type: str
    choices: [query, present]
    default: present
  bundle:
    description: A bundle already on the host holding the missing names. Mutually exclusive with O(bundle_src).
    type: path
  bundle_src:
    description: A bundle on the controller; the action uploads it (one C(put_file)) and passes it as O(bundle).
    type: path
  bundle_members:
    description: The bundle's member table C([{name, offset, size}]).
    type: list
    elements: dict
  verify:
    description: Hash every present bundle instead of trusting the record when size and mtime match it.
    type: bool
    default: false
  keep_stale:
    description:
      - Place what is missing but keep the bundles fleetsplit placed that are no longer wanted (and their record).
      - The install role sets it while it stages a release without switching (an upgrade), so a host rolled back
        to its previous release still has that release's images pinned; the next run without it removes them.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The names in C(images/) placed by this module before and after.
  platform:
    platforms: posix
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: What does the worker lack?
  fleetsplit.k0s.k0s_images:
    images: "{{ images.images }}"
    state: query
  register: q

- name: Send it in one transfer
  fleetsplit.k0s.k0s_images:
    images: "{{ images.images }}"
    bundle_src: "{{ bundles.bundles[inventory_hostname].path }}"
    bundle_members: "{{ bundles.bundles[inventory_hostname].members }}"
  when: q.missing or q.stale
"""

RETURN = r"""
missing:
  description: Wanted names that are absent or differ (written by V(present)).
  returned: always
  type: list
  elements: str
present:
  description: Wanted names already right.
  returned: always
  type: list
  elements: str
stale:
  description: Names this module placed earlier that are no longer wanted (removed by V(present)).
  returned: always
  type: list
  elements: str
kept_stale:
  description: With O(keep_stale), the names that V(present) would otherwise have removed (still placed, still recorded).
  returned: with O(keep_stale) and O(state=present)
  type: list
  elements: str
foreign:
  description: Other files in the directory; never touched.
  returned: always
  type: list
  elements: str
reasons:
  description: Why each missing name is missing.
  returned: always
  type: dict
up_to_date:
  description: Nothing to write, remove or record.
  returned: always
  type: bool
bundle_bytes:
  description: Bytes uploaded by the action (only when O(bundle_src) was sent).
  returned: when a bundle was uploaded
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import HostFsError, os_error_message
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_images import ImageError, apply, query


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images_dir=dict(type="path", default="/var/lib/k0s/images"),
            images=dict(type="list", elements="dict", required=True),
            state=dict(type="str", choices=["query", "present"], default="present"),
            bundle=dict(type="path"),
            bundle_src=dict(type="path"),
            bundle_members=dict(type="list", elements="dict"),
            verify=dict(type="bool", default=False),
            keep_stale=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("bundle", "bundle_src")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] == "query":
            result = query(p["images_dir"], p["images"], p["verify"])
            result["changed"] = False
        else:
            result = apply(p["images_dir"], p["images"], p["bundle"], p["bundle_members"], p["verify"],
                           module.check_mode, p["keep_stale"])
    except (ImageError, HostFsError) as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg=os_error_message(e))
    if module._diff and result["changed"]:
        # Replaced files show with the reason they differ; the record is not a bundle and not shown.
        before = sorted(set(result["present"]) | set(result["stale"])
                        | set("%s (%s)" % (n, r) for n, r in result["reasons"].items() if r != "missing"))
        after = sorted(set(result["present"]) | set(result["missing"]) | set(result.get("kept_stale", [])))
        result["diff"] = {"before_header": "%s (placed by fleetsplit)" % p["images_dir"], "before": "\n".join(before) + "\n",
                          "after_header": p["images_dir"], "after": "\n".join(after) + "\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
