# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_version_skew
short_description: The version skew rules an upgrade to a k0s version would break, one message each
version_added: "0.4.0"
description:
  - Compares the target k0s version with the version of each host's current release and returns what k0s does not
    support - a skipped minor version, a downgrade (a patch or hotfix downgrade too), a worker that would run a newer
    minor version than a controller, controllers more than one minor version apart. Empty when the upgrade is safe.
  - Each message names the host, both versions and what to do (upgrade one minor version at a time, include the
    controller in the run, or set C(k0s_upgrade_allow_version_skew=true)).
  - The rules are k0s's (C(docs/version-skew-policy.md) in k0sproject/k0s) and k0sctl's downgrade check
    (C(phase/validate_facts.go) in k0sproject/k0sctl). See docs/upgrade.md, "Version skew".
positional: _input, reads, run, controllers
options:
  _input:
    description: The target k0s version (C(k0s_split.k0s_version)); null when the executable carries none.
    type: str
    required: true
  reads:
    description:
      - Host name to the result of C(ansible.builtin.slurp) of C(<k0s_store_dir>/current/manifest.json) on that host.
        C(file not found) means no release (a fresh host); an unreachable or failed read is reported.
      - Or host name to a dict whose key C(query) holds C(current_release), C(current_k0s_version) and
        C(current_manifest_readable), the same facts as the C(fleetsplit.k0s.k0s_release) query reports them.
    type: dict
    required: true
  run:
    description: The hosts this run switches to the target.
    type: list
    elements: str
    required: true
  controllers:
    description: Every controller of the cluster, also those outside the run.
    type: list
    elements: str
    required: true
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Refuse an upgrade that skips a minor version
  ansible.builtin.fail:
    msg: "{{ problems | join(' ') }}"
  vars:
    problems: "{{ k0s_split.k0s_version | fleetsplit.k0s.k0s_version_skew(reads, ansible_play_hosts_all, groups['k0s_controllers']) }}"
  when: problems | length > 0
"""

RETURN = r"""
_value:
  description: One message per broken rule; empty when the upgrade keeps k0s's version skew rules.
  type: list
  elements: str
  sample:
    - "c1 runs k0s v1.34.2+k0s.0 and the target v1.36.3+k0s.0 skips minor version v1.35: ..."
"""

import base64
import json

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_versions import skew_problems


def _version_of(host, read):
    """(version or None, None) from a slurp result, or (None, why it could not be read)."""
    if not isinstance(read, dict):
        return None, "no manifest read for this host"
    if read.get("unreachable"):
        return None, "unreachable (%s)" % (read.get("msg") or "no connection")
    query = read.get("query")
    if isinstance(query, dict):   # the install role's query (k0s_release state=query) read the manifest already
        if not query.get("current_release"):
            return None, None     # no current release: a fresh host
        if not query.get("current_manifest_readable"):
            return None, "its current release's manifest.json could not be read"
        return query.get("current_k0s_version") or None, None
    if "content" in read:
        try:
            manifest = json.loads(base64.b64decode(read["content"]).decode("utf-8"))
        except (ValueError, TypeError) as e:
            return None, "its current release's manifest.json is not JSON (%s)" % e
        version = manifest.get("k0s_version") if isinstance(manifest, dict) else None
        return version or None, None
    msg = str(read.get("msg", ""))
    if msg.lower().startswith("file not found"):
        return None, None   # no current release: a fresh host
    return None, msg or "reading its current release's manifest.json failed"


def k0s_version_skew(target, reads, run, controllers):
    if not isinstance(reads, dict):
        raise AnsibleFilterError("k0s_version_skew: reads must be a dict of host -> slurp result")
    current, unreadable = {}, {}
    for host, read in reads.items():
        current[host], why = _version_of(host, read)
        if why:
            unreadable[host] = why
    return skew_problems(target, current, list(run), list(controllers), unreadable)


class FilterModule(object):
    def filters(self):
        return {"k0s_version_skew": k0s_version_skew}
