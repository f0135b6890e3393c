#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: mirror_publish
short_description: Publish split k0s releases as a content-addressed tree a mirror serves (controller side)
version_added: "0.1.0"
description:
  - Writes the static tree that pull distribution (the install role's C(k0s_distribution=pull),
    O(fleetsplit.k0s.k0s_release#module:mirror_url)) fetches from, C(<dest>/blobs/sha256/<stream sha256>) (every gzip
    stream of the split, mode 0644), C(<dest>/releases/<id>.json) (the split's manifest - names, sizes, sha256, CRC-32,
    stream sha256 and size - where C(<id>) is the stripped executable's sha256) and C(<dest>/index.json) (the releases
    the tree holds, with C(id), C(k0s_version), C(goarch), sorted). Any HTTP server or object store can serve it
    (docs/distribution.md).
  - Each blob is hashed while it is copied from the controller cache and renamed into place only when it has the
    C(stream_sha256) the split derived from the k0s executable in this run; a blob already there is kept only when
    it hashes right, otherwise it is replaced (RV(replaced), and a warning). Index files are deterministic JSON
    (sorted keys), written to a temporary name and renamed, so a re-publish changes nothing.
  - The tree holds no secret and nothing a host trusts. Hosts check every stream against the sha256 their own
    controller computed from the executable in that run.
options:
  split:
    description:
      - One M(fleetsplit.k0s.payload_split) result with C(streams_dest) (the C(k0s_split) fact of the
        C(fleetsplit.k0s.split) role). Exactly one of O(split) and O(splits).
    type: dict
  splits:
    description: Several such results (for example the values of the split role's C(k0s_splits), one per architecture).
    type: list
    elements: dict
  dest:
    description:
      - The tree's directory on the controller (created 0755). It and C(blobs/), C(blobs/sha256/), C(releases/)
        must be real directories, not symlinks.
    type: path
    required: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Verifies the source streams and reports what would be written, without writing.
  diff_mode:
    support: full
    details: Before and after list the tree's paths this run is about (blobs, release index, C(index.json)).
  platform:
    platforms: posix
notes:
  - Runs on the controller (C(delegate_to=localhost)). To copy the tree to a server or bucket, run a sync tool
    after it (the C(fleetsplit.k0s.publish_k0s) playbook's C(k0s_publish_sync_command)).
  - k3s splits are refused (pull serves k0s releases only).
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Publish the split of this run into a directory nginx serves
  fleetsplit.k0s.mirror_publish:
    split: "{{ k0s_split }}"
    dest: /srv/k0s-mirror
  delegate_to: localhost
  run_once: true

- name: Publish every architecture of a mixed fleet
  fleetsplit.k0s.mirror_publish:
    splits: "{{ k0s_splits.values() | map(attribute='split') | list }}"
    dest: /srv/k0s-mirror
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
release_ids:
  description: The release index ids (stripped executable sha256) of the published splits.
  returned: success
  type: list
  elements: str
blobs:
  description: Stream sha256s written (or that would be written in check mode).
  returned: success
  type: list
  elements: str
replaced:
  description: Blobs that were there with other bytes and got replaced (a subset of RV(blobs)).
  returned: success
  type: list
  elements: str
kept:
  description: Blobs already there with the right bytes.
  returned: success
  type: list
  elements: str
releases:
  description: Release index files written (ids).
  returned: success
  type: list
  elements: str
index_changed:
  description: C(index.json) was (or would be) rewritten.
  returned: success
  type: bool
dest:
  description: The tree's directory.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.mirror_tree import MirrorTreeError, publish
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            split=dict(type="dict"),
            splits=dict(type="list", elements="dict"),
            dest=dict(type="path", required=True),
        ),
        required_one_of=[("split", "splits")],
        mutually_exclusive=[("split", "splits")],
        supports_check_mode=True,
    )
    p = module.params
    splits = [p["split"]] if p["split"] is not None else p["splits"]
    if not splits:
        module.fail_json(msg="splits is empty: nothing to publish")
    try:
        res = publish(splits, p["dest"], write=not module.check_mode)
    except (MirrorTreeError, PayloadError) as e:
        module.fail_json(msg=str(e))
    except OSError as e:
        module.fail_json(msg="%s: %s" % (getattr(e, "filename", None) or p["dest"], e.strerror or e))
    for w in res.pop("warnings"):
        module.warn(w)
    before, after = res.pop("before"), res.pop("after")
    if module._diff:
        res["diff"] = dict(before="".join(x + "\n" for x in before), after="".join(x + "\n" for x in after),
                           before_header=p["dest"], after_header=p["dest"])
    module.exit_json(dest=p["dest"], **res)


if __name__ == "__main__":
    main()
