#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: stream_bundle
short_description: Concatenate the gzip streams a host lacks into one bundle file (controller side)
version_added: "0.1.0"
description:
  - Takes the result of M(fleetsplit.k0s.payload_split) (with C(streams_dest)) and a list of names, and writes
    C(<dest>/<id>.bundle), the gzip streams of those names concatenated in name order. One file means one
    transfer per host instead of one per stream, which saves Ansible's per-file cost.
  - With O(names_by_host) one run (C(run_once)) serves a whole play; each distinct set of names gets one bundle
    and RV(bundles) maps every host to its own. That is one controller-side module run per play instead of one
    per host, which matters for large fleets where the controller's CPU is the limit.
  - C(<id>) is a sha256 over the ordered (name, stream sha256, stream size) of the members, so hosts lacking the
    same set share one bundle and a bundle is never rebuilt for the same content. The bundle is written to a
    temporary name and renamed into place, so concurrent runs (one per host, C(delegate_to=localhost)) are safe.
  - Every member stream is hashed and must match its C(stream_sha256) in O(split) (the facts the split derived
    from the k0s executable in this run); a stream that differs fails the task naming the cache file. An existing
    bundle is reused only when it hashes to the concatenation of those verified streams, otherwise it is
    rewritten (a warning names it). The sidecar C(<id>.json) is for people and never trusted.
  - M(fleetsplit.k0s.k0s_release) takes the uploaded bundle (O(fleetsplit.k0s.k0s_release#module:bundle)) and
    RV(members) (O(fleetsplit.k0s.k0s_release#module:bundle_members)) and inflates each member in place,
    verifying size, CRC-32 and sha256 as for single streams.
options:
  split:
    description:
      - The M(fleetsplit.k0s.payload_split) result (the C(k0s_split) fact of the split role). Its C(files) items
        and C(stripped_executable) need C(stream) (an existing gzip file), C(stream_sha256) and C(name) (files only).
    type: dict
    required: true
  names:
    description:
      - Names to bundle, as M(fleetsplit.k0s.k0s_release) reports them in C(missing); C(k0s) is the stripped
        executable. Order does not matter. Unknown names are an error.
      - For a k3s split (C(format=k3s)) the names are the content sha256s of RV(fleetsplit.k0s.payload_split#module:files)
        and C(k3s), the whole executable (as M(fleetsplit.k0s.k3s_data) reports them in C(missing)).
      - Exactly one of O(names) and O(names_by_host) is required.
    type: list
    elements: str
  names_by_host:
    description:
      - "A mapping of host name to names for a whole play, for example built from every host's C(k0s_release)
        query. Hosts with an empty list get no bundle."
    type: dict
  dest:
    description: Directory for the bundles. Defaults to C(<split dir>/bundles) (the split directory holds C(streams/bin/k0s.gz)).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Computes id, size, sha256 and member table without writing anything.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Runs on the controller (C(delegate_to=localhost)); the bundles are a cache like the split directory and may be
    removed at any time.
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Bundle the streams this host lacks
  fleetsplit.k0s.stream_bundle:
    split: "{{ k0s_split }}"
    names: "{{ k0s_query.missing }}"
  delegate_to: localhost
  become: false
  register: bundle

- name: Upload it (the k0s_release action transfers bundle_src itself) and build the release from it
  fleetsplit.k0s.k0s_release:
    files: "{{ k0s_split.files }}"
    executable: "{{ k0s_split.stripped_executable }}"
    bundle_src: "{{ bundle.path }}"
    bundle_members: "{{ bundle.members }}"

- name: The same for every host of the play in one controller-side run
  fleetsplit.k0s.stream_bundle:
    split: "{{ k0s_split }}"
    names_by_host: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, ['k0s_query', 'missing']))) }}"
  run_once: true
  delegate_to: localhost
  register: bundles
"""

RETURN = r"""
bundles:
  description: With O(names_by_host), for every host that lacks something, its bundle as C(id), C(path), C(size), C(sha256) and C(members).
  returned: names_by_host given
  type: dict
id:
  description: Content id of the bundle (sha256 hex over the members' names, stream sha256 and sizes).
  returned: names given
  type: str
path:
  description: The bundle on the controller.
  returned: names given
  type: str
  sample: ~/.cache/fleetsplit-k0s/split/<sha256>/bundles/<id>.bundle
size:
  description: Bundle size in bytes (the sum of the member streams).
  returned: names given
  type: int
sha256:
  description: sha256 of the bundle file.
  returned: names given
  type: str
healed:
  description: True when a cached bundle with other content was rewritten.
  returned: names given
  type: bool
members:
  description: The member table, in bundle order.
  returned: names given
  type: list
  elements: dict
  contains:
    name: {description: "Name (C(k0s) for the executable; for a k3s split, C(k3s)).", type: str}
    offset: {description: Byte offset of the member's gzip stream in the bundle., type: int}
    size: {description: Size of that gzip stream., type: int}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import PayloadError, write_bundle


def streams_for(split, names):
    """[(name, stream path)] for ``names`` from a payload_split result; raises ValueError with a clear message."""
    if not isinstance(split, dict) or not isinstance(split.get("files"), list) \
            or not isinstance(split.get("stripped_executable"), dict):
        raise ValueError("split must be a payload_split result with files and stripped_executable")
    known = {}
    for f in split["files"]:
        if isinstance(f, dict) and f.get("name"):
            known[f["name"]] = f
    # The executable's member: "k3s" for a k3s split (it ships whole), "k0s" (stripped) otherwise.
    known["k3s" if split.get("format") == "k3s" else "k0s"] = split["stripped_executable"]
    out = []
    for name in sorted(set(names)):
        if name not in known:
            raise ValueError("%r is not in the split result (known: %s)" % (name, ", ".join(sorted(known))))
        if not known[name].get("stream"):
            raise ValueError("the split result has no stream for %r: run payload_split with streams_dest" % name)
        # Each member is checked against the facts the split derived from the executable in this run.
        if not known[name].get("stream_sha256"):
            raise ValueError("the split result has no stream_sha256 for %r (made by an older payload_split): run "
                             "the fleetsplit.k0s.split role again" % name)
        out.append((name, known[name]["stream"], known[name]["stream_sha256"]))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            split=dict(type="dict", required=True),
            names=dict(type="list", elements="str"),
            names_by_host=dict(type="dict"),
            dest=dict(type="path"),
        ),
        required_one_of=[("names", "names_by_host")],
        mutually_exclusive=[("names", "names_by_host")],
        supports_check_mode=True,
    )
    p = module.params
    if p["names"] is not None:
        wanted = {None: p["names"]}
        if not p["names"]:
            module.fail_json(msg="names is empty: nothing to bundle (skip this task when the host lacks nothing)")
    else:
        wanted = p["names_by_host"]
        for host, names in wanted.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                module.fail_json(msg="names_by_host[%r] must be a list of names, got %r" % (host, names))
    # <split dir>/streams/bin/k0s.gz -> <split dir>/bundles
    exe_stream = (p["split"].get("stripped_executable") or {}).get("stream") or ""
    dest = p["dest"] or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(exe_stream))), "bundles")
    made = {}   # one bundle per distinct set of names
    bundles = {}
    try:
        for host, names in sorted(wanted.items(), key=lambda kv: str(kv[0])):
            key = tuple(sorted(set(names)))
            if not key:
                continue
            if key not in made:
                made[key] = write_bundle(streams_for(p["split"], key), dest, write=not module.check_mode)
            bundles[host] = made[key]
    except ValueError as e:
        module.fail_json(msg=str(e))
    except PayloadError as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg="%s: %s" % (getattr(e, "filename", None) or dest, e.strerror or e))
    healed = sorted(set(b["path"] for b in made.values() if b.get("healed")))
    if healed:
        module.warn("cached bundle%s %s did not match the streams verified against the split facts; rewritten"
                    % ("s" if len(healed) > 1 else "", ", ".join(healed)))
    if p["names"] is not None:
        module.exit_json(**bundles[None])
    module.exit_json(changed=any(b.get("changed") for b in made.values()), bundles=bundles)


if __name__ == "__main__":
    main()
