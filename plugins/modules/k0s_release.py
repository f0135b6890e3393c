#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_release
short_description: Install a split k0s release (stripped k0s plus its binaries) on a host, atomically
version_added: "0.1.0"
description:
  - Keeps a release store on the host. Each release lives in C(<store_dir>/releases/<release_id>/) with
    C(bin/k0s) (the stripped k0s executable), C(libexec/<name>) (every embedded binary) and a C(manifest.json).
  - C(<store_dir>/current) is a symlink to the active release and is switched with one C(rename), so a host never
    shows a mix of two versions, even if the play dies at any moment. C(<store_dir>/previous) records the release
    that was active before.
  - C(<bin_dir>/k0s) is a symlink to C(<store_dir>/current/bin/k0s). C(<libexec_dir>) is a real directory with one
    symlink per binary, C(<libexec_dir>/<name>) -> C(<store_dir>/current/libexec/<name>); everything else in it
    (what k0s, the kubelet and CNI plugins write, for example C(kubelet-plugins/volume/exec/nodeagent~uds)) is not
    the module's and is kept across upgrades and rollbacks. A C(<libexec_dir>) that is still the symlink to
    C(<store_dir>/current/libexec) earlier versions made is replaced by that directory in one rename, with what
    k0s wrote into the current release's C(libexec/) moved into it (RV(runtime_moved)). With
    O(link_data_dir=true) every C(<data_dir>/bin/<name>) is a symlink to C(<libexec_dir>/<name>), which is how a
    stripped k0s finds its binaries (both payload formats); k0s's own entries there (its relative C(iptables*)
    links) are left alone.
  - An executable that is no longer the release's (C(<bin_dir>/k0s) replaced by a file, or other content renamed
    over the live release's C(bin/k0s) by k0s's autopilot) is reported in RV(drift); V(present) keeps it in
    C(<store_dir>/backup/) and restores the release's file.
  - A release is built from content already on the host (verified copies, never hard links, so a write into the
    live release cannot change another release; C(copy_file_range) shares the blocks on file systems with reflinks)
    and from gzip streams uploaded into O(streams_dir). Every file is checked against its size, CRC-32 (streams)
    and sha256. Files of the target release that still share an inode with another release (hard links made by
    earlier versions) get their own copy.
  - V(present) builds and verifies the release and puts the links in place, then switches C(current) as the last
    change that can fail the run. Pruning, removing used uploads and stale links come after the switch and only
    warn when they fail (the result's C(warnings)).
  - Every path parameter must be absolute and normal (no C(.), C(..), C(//), trailing C(/)) and free of control
    characters, and the paths must not contain each other (for example O(libexec_dir) = C(<data_dir>/bin), which
    would make every binary a symlink to itself). These checks also run for V(query).
  - Existing files at C(<bin_dir>/k0s) or C(<libexec_dir>/<name>) that this module did not create, and entries of a
    release that are not part of it, are moved into C(<store_dir>/backup/) (never deleted) and listed in
    RV(backups).
  - Runs on the managed host with the Python standard library only.
options:
  state:
    description:
      - V(query) reads the host and reports which contents are RV(missing); it never changes anything, also not
        outside check mode. It is a dry run of V(present), so it fails for the same reasons (for example a foreign
        symlink in C(<data_dir>/bin)) before anything is uploaded, and RV(changes) lists what V(present) would do.
      - V(present) builds (or repairs) the release, switches C(current) to it and ensures the links.
      - V(rollback) switches C(current) back to C(previous) and records the release it left as the new C(previous).
        Like V(present) it puts the links in place before the switch and only warns about what fails after it.
    type: str
    choices: [query, present, rollback]
    default: present
  release_id:
    description:
      - Name of the release directory. When omitted it is computed as
        C(<k0s_version or unknown>-<first 12 hex digits of a sha256>) over the sorted list of C(bin/k0s) and
        C(libexec/<name>) with their sha256 (plus the pinned mtime when O(pinned_mtime) is set, because files
        with another mtime are another release for a legacy k0s).
      - Letters, digits and C(._+-) only; must not start with a dot.
    type: str
  k0s_version:
    description: k0s version string (for example C(v1.36.3+k0s.0)), used in the computed O(release_id).
    type: str
  files:
    description:
      - The embedded binaries of the release, as returned by M(fleetsplit.k0s.payload_split) in
        RV(fleetsplit.k0s.payload_split#module:files).
      - Each item needs C(name), C(size), C(sha256) and C(crc32); other keys are ignored.
      - Names must be plain base names (no C(/), no C(..), no NUL, not starting with a dot, not C(k0s)).
      - Required with O(state=query) and O(state=present).
    type: list
    elements: dict
  executable:
    description:
      - The stripped k0s executable, as returned by M(fleetsplit.k0s.payload_split) in
        RV(fleetsplit.k0s.payload_split#module:stripped_executable). Needs C(size), C(sha256) and C(crc32).
      - Required with O(state=query) and O(state=present).
    type: dict
  streams_dir:
    description:
      - Directory holding the uploaded gzip streams C(<name>.gz) and C(k0s.gz). Only the streams for the names
        RV(missing) reports are needed. Used streams are removed after a successful V(present).
      - Defaults to C(<store_dir>/incoming).
    type: path
  bundle:
    description:
      - An uploaded stream bundle written by M(fleetsplit.k0s.stream_bundle), that is gzip streams concatenated and
        cut by O(bundle_members). Members are inflated straight from the bundle and verified like single streams; a member
        takes precedence over a C(<name>.gz) in O(streams_dir). Removed after a successful V(present).
      - The bundle must be exactly as long as the member table says (a truncated upload fails before anything is
        built or switched). Ignored by V(query) and V(rollback); in check mode a missing bundle is not an error.
    type: path
  bundle_src:
    description:
      - A stream bundle on the B(controller) (the RV(fleetsplit.k0s.stream_bundle#module:path) result). The action
        uploads it into the task's remote temporary directory with one plain transfer (no extra module runs on
        the host), uses it as O(bundle) and removes it afterwards. Mutually exclusive with O(bundle).
      - Nothing is uploaded in check mode.
    type: path
  bundle_members:
    description:
      - The member table of O(bundle), RV(fleetsplit.k0s.stream_bundle#module:members), C([{name, offset, size}]).
        Members must tile the bundle without gaps; every name must be C(k0s) or one of O(files).
      - Required with O(bundle).
    type: list
    elements: dict
  switch:
    description:
      - With V(false), V(present) only builds (or repairs) the target release in the store, from host content and
        the uploaded streams, and does not switch C(current), the links or prune. A later V(present) with
        V(true) then switches in a moment, with nothing to upload or inflate. The upgrade role stages this way
        before it stops k0s, so the service is down only for the switch.
    type: bool
    default: true
  store_dir:
    description: Release store. Must be on one filesystem (releases are switched by renaming symlinks).
    type: path
    default: /var/lib/fleetsplit-k0s
  bin_dir:
    description: Directory that gets the C(k0s) symlink.
    type: path
    default: /usr/bin
  libexec_dir:
    description: Directory that gets one symlink per binary into the current release's C(libexec) directory.
    type: path
    default: /usr/libexec/k0s
  data_dir:
    description: The k0s data directory (k0s C(--data-dir)); only C(<data_dir>/bin) is touched.
    type: path
    default: /var/lib/k0s
  link_data_dir:
    description:
      - Create C(<data_dir>/bin/<name>) symlinks to C(<libexec_dir>/<name>). Regular files there with one of the
        release's names (copies staged by a full k0s) and stale links of this module are replaced and reported.
        A symlink there that points elsewhere is an error.
    type: bool
    default: true
  pinned_mtime:
    description:
      - When set (seconds since the epoch), every file of the release including C(bin/k0s) gets exactly this
        mtime (nanoseconds zero). A legacy (bindata) k0s only accepts staged files whose mtime equals its own.
      - Leave unset for zip-format k0s so unchanged binaries can be shared between releases by hard links.
    type: int
  keep_releases:
    description:
      - Number of old releases kept besides the current one (the previous release is always kept), newest first.
      - Releases built with O(switch=false) and never switched to count like the others, so abandoned stages
        cannot pile up; the release being staged is never removed.
    type: int
    default: 2
  keep_backups:
    description:
      - Number of backup sets kept in C(<store_dir>/backup/) (one per run that moved something aside), newest
        first; the set of the current run is always kept. At least 1.
    type: int
    default: 3
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
  - fleetsplit.k0s.mirror
  - fleetsplit.k0s.release_store
attributes:
  action:
    support: full
    details:
      - The action uploads O(bundle_src) from the controller; everything else runs on the host.
      - The action validates the arguments on the controller and runs the module's logic on the host through the
        collection's compact module transport (no ansible-core code is sent; the C(k0s_module_transport) variable
        in docs/distribution.md).
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: V(query) runs normally in check mode (it is read-only); the other states report what would change.
  diff_mode:
    support: full
    details: Before and after list one line per file (its name and sha256) of the current and the target release.
  platform:
    platforms: posix
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Which contents does this host still need?
  fleetsplit.k0s.k0s_release:
    state: query
    k0s_version: "{{ k0s_split.k0s_version }}"
    files: "{{ k0s_split.files }}"
    executable: "{{ k0s_split.stripped_executable }}"
  register: k0s_query
  check_mode: false

- name: Install the release and switch to it
  fleetsplit.k0s.k0s_release:
    state: present
    k0s_version: "{{ k0s_split.k0s_version }}"
    files: "{{ k0s_split.files }}"
    executable: "{{ k0s_split.stripped_executable }}"
    pinned_mtime: "{{ k0s_split.pinned_mtime if k0s_split.format == 'legacy' else omit }}"
    streams_dir: /var/lib/fleetsplit-k0s/incoming

- name: Install from one uploaded bundle (see fleetsplit.k0s.stream_bundle)
  fleetsplit.k0s.k0s_release:
    state: present
    files: "{{ k0s_split.files }}"
    executable: "{{ k0s_split.stripped_executable }}"
    bundle: "/var/lib/fleetsplit-k0s/incoming/{{ k0s_bundle.id }}.bundle"
    bundle_members: "{{ k0s_bundle.members }}"

- name: Go back to the release that was active before
  fleetsplit.k0s.k0s_release:
    state: rollback
"""

RETURN = r"""
release_id:
  description: The target release (for V(rollback) the release switched to).
  returned: always
  type: str
  sample: v1.36.3+k0s.0-3f2a9c1d0b7e
current_release:
  description: Release C(current) points to after the run (before it in check mode), or null.
  returned: always
  type: str
current_k0s_version:
  description:
    - The k0s version recorded in the manifest of the release C(current) points to (as the run found it before any
      switch for V(query) and in check mode), or null (no current release, or none recorded). The version skew
      check of deploy_k0s reads it from the query.
  returned: always
  type: str
  sample: v1.36.3+k0s.0
current_manifest_readable:
  description: Whether the current release's C(manifest.json) could be read; null when there is no current release.
  returned: always
  type: bool
previous_release:
  description: Release C(previous) points to after the run, or null.
  returned: always
  type: str
current_executable:
  description:
    - Real path C(<bin_dir>/k0s) resolves to after the run (before it in check mode and for V(query)), or null.
      A k0s process whose C(/proc/<pid>/exe) differs does not run the current release and needs a restart.
  returned: always
  type: str
  sample: /var/lib/fleetsplit-k0s/releases/v1.36.3+k0s.0-3f2a9c1d0b7e/bin/k0s
releases:
  description: Release directories in the store after the run.
  returned: always
  type: list
  elements: str
missing:
  description:
    - Names (C(k0s) for the executable) whose exact content is on the host neither in the target release nor in
      any kept release, so their stream must be uploaded.
  returned: state is query or present
  type: list
  elements: str
  sample: [k0s, runc]
up_to_date:
  description:
    - The target release was already current, with intact files, owners, modes and all links in place, and
      nothing was left to clean up, before this run. For V(query) this means V(present) would change nothing
      (V(query) runs V(present) as a dry run), so callers may skip it.
  returned: state is query or present
  type: bool
host:
  description:
    - Facts about the host the roles need, so a play does not have to gather facts.
    - C(architecture) as C(uname -m) prints it; C(service_mgr) is V(systemd), V(openrc) or the name of PID 1.
    - C(node_name) is the lowercased host name (k0s's default node name).
    - C(k0s_cluster) says what O(data_dir) tells about cluster membership, by k0s's own rules -
      C(controller_ca_sha256) (sha256 of C(pki/ca.crt) when it and C(pki/ca.key) exist, else null),
      C(etcd_member), C(kubelet_conf), C(kubelet_bootstrap_conf) (booleans), C(kubelet_ca_sha256) (sha256 of
      the CA C(kubelet.conf) embeds), and C(controller_joined) / C(worker_joined) (k0s would start without a
      token in that role). No key or token is read into the result.
  returned: state is query
  type: dict
  sample:
    architecture: x86_64
    service_mgr: systemd
    node_name: worker-1
    k0s_cluster:
      controller_ca_sha256: null
      etcd_member: false
      kubelet_conf: true
      kubelet_bootstrap_conf: false
      kubelet_ca_sha256: 5d41402abc4b2a76b9719d911017c592ae2d2b9e1c3b4f0d1f2a0f6e1a2b3c4d
      controller_joined: false
      worker_joined: true
binaries_changed:
  description: The executable or a binary the host runs changed (switched release or repaired file).
  returned: always
  type: bool
rolled_back_from:
  description: The release that was current before the rollback (also on a re-run that found it already done).
  returned: state is rollback
  type: str
built:
  description: The release directory was newly built.
  returned: state is present
  type: bool
sources:
  description: Where each file of a newly built or repaired release came from (C(copy) of content on the host or
    C(stream)).
  returned: state is present
  type: dict
  sample: {k0s: stream, runc: copy}
repaired:
  description: Files of an existing target release that were damaged or missing and got replaced, with the reason.
  returned: state is present
  type: dict
  sample: {runc: sha256 mismatch}
corrupt:
  description: Files of the target release that fail their check (query only reports them).
  returned: state is query or present
  type: dict
drift:
  description: Executables that are no longer the release's (path -> why), for example C(<bin_dir>/k0s) replaced
    by a copy or the live release's C(bin/k0s) replaced by k0s's autopilot; V(present) moves them to RV(backups).
  returned: state is query or present
  type: dict
  sample: {/usr/bin/k0s: a regular file replaced the symlink to /var/lib/fleetsplit-k0s/current/bin/k0s}
runtime_moved:
  description: Entries k0s wrote into the current release's C(libexec/) through the old C(<libexec_dir>) symlink,
    moved into the real C(<libexec_dir>) directory.
  returned: when C(<libexec_dir>) was migrated
  type: list
  elements: str
backups:
  description: Paths that were in the way and were moved into C(<store_dir>/backup/) (original -> backup).
  returned: state is present or rollback
  type: dict
replaced_staged:
  description: Regular files in C(<data_dir>/bin) (copies staged by a full k0s) replaced by links.
  returned: state is present or rollback
  type: list
  elements: str
links_changed:
  description: Links created or replaced.
  returned: state is present or rollback
  type: list
  elements: str
pruned:
  description: Old releases removed because of O(keep_releases).
  returned: state is present or rollback
  type: list
  elements: str
pruned_backups:
  description: Old backup sets removed because of O(keep_backups).
  returned: state is present or rollback
  type: list
  elements: str
cleaned:
  description: Leftovers of killed runs that were removed.
  returned: state is present or rollback
  type: list
  elements: str
selinux_relabeled:
  description: Files relabelled with C(container_runtime_exec_t).
  returned: state is present
  type: list
  elements: str
mirror:
  description: With O(mirror_url), what was fetched from the mirror - C(fetched) (names), C(requests), C(bytes), C(url).
  returned: state is present and O(mirror_url) is set, not in check mode
  type: dict
  sample: {fetched: [k0s, runc], requests: 2, bytes: 10772880, url: "https://mirror.example/k0s"}
changes:
  description: One line per change made (or that would be made in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_build import SPEC, run


def main():
    run(AnsibleModule(supports_check_mode=True, **SPEC))


if __name__ == "__main__":
    main()
