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
  - C(<bin_dir>/k0s) is a symlink to C(<store_dir>/current/bin/k0s) and C(<libexec_dir>) is a symlink to
    C(<store_dir>/current/libexec). With O(link_data_dir=true) every C(<data_dir>/bin/<name>) is a symlink to
    C(<libexec_dir>/<name>), which is how a stripped k0s finds its binaries (both payload formats).
  - A release is built from content already on the host (hard links between releases when the mtime allows it,
    otherwise verified copies) and from gzip streams uploaded into O(streams_dir). Every file is checked against
    its size, CRC-32 (streams) and sha256.
  - Existing files or directories at C(<bin_dir>/k0s) or C(<libexec_dir>) that this module did not create are moved
    into C(<store_dir>/backup/) (never deleted) and listed in RV(backups).
  - Runs on the managed host with the Python standard library only.
options:
  state:
    description:
      - V(query) reads the host and reports which contents are RV(missing); it never changes anything, also not
        outside check mode. It is a dry run of V(present), so it fails for the same reasons (for example a foreign
        symlink in C(<data_dir>/bin)) before anything is uploaded, and RV(changes) lists what V(present) would do.
      - V(present) builds (or repairs) the release, switches C(current) to it and ensures the links.
      - V(rollback) switches C(current) back to C(previous) and records the release it left as the new C(previous).
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
    description: Path that becomes a symlink to the current release's C(libexec) directory.
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
    description: Number of old releases kept besides the current one (the previous release is always kept).
    type: int
    default: 2
  verify:
    description:
      - Re-hash every file of the target release. By default a file whose size and mtime match its
        C(manifest.json) record is trusted and only changed files are re-hashed, which keeps re-runs fast.
    type: bool
    default: false
  selinux_relabel:
    description:
      - When SELinux is enabled (C(selinuxenabled) exits 0), label C(containerd), C(containerd-shim-runc-v2)
        and C(runc) with C(container_runtime_exec_t) as k0s does. Silently skipped otherwise.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
    details: The action uploads O(bundle_src) from the controller; everything else runs on the host.
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
notes:
  - Security checks. Every directory written into, and each of its parents, must be owned by root (or the
    user running the module) and must not be world-writable unless it is owned by root and has the sticky bit.
    Symlinks along these paths must be owned by root (or that user). Directories inside the store must be real
    directories. Violations fail with a message naming the path.
  - All files are written to a temporary name and renamed into place; files are C(root:root 0755) when run as root.
  - A store-wide lock (C(<store_dir>/.lock)) serialises concurrent runs on one host.
  - Killed runs leave only temporary names (C(.<id>.tmp-*), C(.*.fleetsplit-tmp-*)); the next V(present) removes them.
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
previous_release:
  description: Release C(previous) points to after the run, or null.
  returned: always
  type: str
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
  returned: state is query
  type: dict
  sample: {architecture: x86_64, service_mgr: systemd}
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
  description: Where each file of a newly built or repaired release came from (C(link), C(copy) or C(stream)).
  returned: state is present
  type: dict
  sample: {k0s: stream, runc: link}
repaired:
  description: Files of an existing target release that were damaged or missing and got replaced, with the reason.
  returned: state is present
  type: dict
  sample: {runc: sha256 mismatch}
corrupt:
  description: Files of the target release that fail their check (query only reports them).
  returned: state is query or present
  type: dict
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
changes:
  description: One line per change made (or that would be made in check mode).
  returned: always
  type: list
  elements: str
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    TMP_MARK,
    HostFsError,
    atomic_symlink,
    atomic_write,
    check_dir_chain,
    check_dir_stat,
    fsync_dir,
    lstat_or_none,
    os_error_message,
    set_owner_mode,
    tmp_name,
    unlink_quietly,
)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import (
    PayloadError,
    check_bundle_members,
    inflate_gzip_member,
    sha256_file,
)

EXE = "k0s"             # display name of the executable in `missing`, `sources`, diffs
EXE_REL = "bin/k0s"
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
SELINUX_NAMES = ("containerd", "containerd-shim-runc-v2", "runc")
CHUNK = 1 << 20


class ReleaseError(HostFsError):
    pass


# --------------------------------------------------------------------------- small file-system helpers

def ensure_real_dir(path, check_mode, changes, mode=0o755):
    """A directory the store owns: must be a real directory, never a symlink."""
    st = lstat_or_none(path)
    if st is None:
        if not check_mode:
            os.makedirs(path, mode)
            os.chmod(path, mode)
        changes.append("created directory %s" % path)
        return
    if stat.S_ISLNK(st.st_mode):
        raise ReleaseError("refusing to write through %s: it is a symlink fleetsplit did not create "
                           "(the store only holds real directories)" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise ReleaseError("%s is in the way: expected a directory" % path)
    check_dir_stat(path, st)


def copy_verified(src, dst, size, sha256, mtime_ns):
    """Copy ``src`` to the new file ``dst`` and prove the copy has the expected size and sha256."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    ok = False
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while True:
                block = inp.read(CHUNK)
                if not block:
                    break
                h.update(block)
                n += len(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if n != size or h.hexdigest() != sha256:
            return False
        set_owner_mode(dst)
        if mtime_ns is not None:
            os.utime(dst, ns=(mtime_ns, mtime_ns))
        ok = True
        return True
    finally:
        if not ok:
            unlink_quietly(dst)


def remove_tree_or_file(path):
    st = lstat_or_none(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# --------------------------------------------------------------------------- the release description

class Item(object):
    """One file of a release: ``rel`` is ``bin/k0s`` or ``libexec/<name>``."""

    def __init__(self, name, rel, size, sha256, crc32):
        self.name, self.rel, self.size, self.sha256, self.crc32 = name, rel, size, sha256, crc32

    @property
    def stream(self):
        return "%s.gz" % self.name


def _int_field(d, key, what):
    v = d.get(key)
    if isinstance(v, bool) or v is None:
        raise ReleaseError("%s: %s must be an integer" % (what, key))
    try:
        v = int(v)
    except (TypeError, ValueError):
        raise ReleaseError("%s: %s must be an integer, got %r" % (what, key, v))
    if v < 0:
        raise ReleaseError("%s: %s must not be negative" % (what, key))
    return v


def _item_from(d, name, rel, what):
    if not isinstance(d, dict):
        raise ReleaseError("%s must be a dict with size, sha256 and crc32" % what)
    sha = str(d.get("sha256") or "").lower()
    if not SHA_RE.match(sha):
        raise ReleaseError("%s: sha256 must be 64 hex digits" % what)
    return Item(name, rel, _int_field(d, "size", what), sha, _int_field(d, "crc32", what))


def check_name(name):
    if not isinstance(name, str) or not name:
        raise ReleaseError("file name must be a non-empty string, got %r" % (name,))
    if "\x00" in name or "/" in name or name in (".", "..") or ".." in name.split("/"):
        raise ReleaseError("refusing file name %r: names must be plain base names (no '/', '..' or NUL)" % name)
    if not NAME_RE.match(name):
        raise ReleaseError("refusing file name %r: only letters, digits and ._+- are allowed, "
                           "and it must not start with a dot" % name)
    if name == EXE:
        raise ReleaseError("refusing embedded file name 'k0s': it would collide with the executable")
    return name


def build_items(files, executable):
    items = {}
    items[EXE_REL] = _item_from(executable, EXE, EXE_REL, "executable")
    for i, f in enumerate(files or []):
        if not isinstance(f, dict):
            raise ReleaseError("files[%d] must be a dict with name, size, sha256 and crc32" % i)
        name = check_name(f.get("name"))
        rel = "libexec/" + name
        if rel in items:
            raise ReleaseError("file name %r is listed twice" % name)
        items[rel] = _item_from(f, name, rel, "files[%d] (%s)" % (i, name))
    return items


def compute_release_id(items, k0s_version, pinned_mtime):
    h = hashlib.sha256()
    for rel in sorted(items):
        h.update(("%s %s\n" % (rel, items[rel].sha256)).encode())
    if pinned_mtime is not None:
        h.update(("mtime %d\n" % pinned_mtime).encode())
    version = k0s_version or "unknown"
    version = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    return "%s-%s" % (version, h.hexdigest()[:12])


def check_release_id(rid):
    if not rid or not NAME_RE.match(rid) or rid in (".", ".."):
        raise ReleaseError("invalid release_id %r: letters, digits and ._+- only, not starting with a dot" % (rid,))
    return rid


# --------------------------------------------------------------------------- the store

class Store(object):

    def __init__(self, p):
        self.root = p["store_dir"]
        self.releases = os.path.join(self.root, "releases")
        self.backup = os.path.join(self.root, "backup")
        self.current_link = os.path.join(self.root, "current")
        self.previous_link = os.path.join(self.root, "previous")
        self.rollback_record = os.path.join(self.root, "rolled-back.json")
        self.bin_dir = p["bin_dir"]
        self.libexec_dir = p["libexec_dir"]
        self.data_bin = os.path.join(p["data_dir"], "bin")
        self.streams_dir = p["streams_dir"] or os.path.join(self.root, "incoming")
        self.exe_link = os.path.join(self.bin_dir, EXE)
        self.exe_link_target = os.path.join(self.current_link, EXE_REL)
        self.libexec_link_target = os.path.join(self.current_link, "libexec")

    def release_dir(self, rid):
        return os.path.join(self.releases, rid)

    def pointer(self, link):
        """Release id a store pointer (current/previous) names, or None."""
        st = lstat_or_none(link)
        if st is None:
            return None
        if not stat.S_ISLNK(st.st_mode):
            raise ReleaseError("%s should be a symlink made by fleetsplit, found something else; "
                               "move it away" % link)
        target = os.readlink(link)
        parts = target.split("/")
        if len(parts) != 2 or parts[0] != "releases" or not NAME_RE.match(parts[1]):
            raise ReleaseError("%s points to %r, which fleetsplit did not write; move it away" % (link, target))
        return parts[1]

    def list_releases(self):
        if lstat_or_none(self.releases) is None:
            return []
        out = []
        for e in sorted(os.listdir(self.releases)):
            if e.startswith("."):
                continue
            st = lstat_or_none(os.path.join(self.releases, e))
            if st is not None and stat.S_ISDIR(st.st_mode):
                out.append(e)
        return out

    def manifest(self, rid):
        path = os.path.join(self.release_dir(rid), MANIFEST)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                return data
        except (OSError, ValueError):
            pass
        return None


def file_state(path, expect_size, expect_sha, record, verify, mtime_ns=None):
    """None when ``path`` holds the expected content, else a short reason.

    Trusts a ``manifest.json`` record when size and mtime match it (fast re-runs); otherwise hashes.
    """
    st = lstat_or_none(path)
    if st is None:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size != expect_size:
        return "size %d, expected %d" % (st.st_size, expect_size)
    if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
        return "mtime %d ns, expected %d ns" % (st.st_mtime_ns, mtime_ns)
    trusted = (not verify and record is not None and record.get("sha256") == expect_sha
               and record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns)
    if not trusted and sha256_file(path) != expect_sha:
        return "sha256 mismatch"
    return None


class Planner(object):
    """Works out what a host has and needs. Reads only."""

    def __init__(self, store, items, rid, pinned_mtime, verify, link_data_dir):
        self.s = store
        self.items = items
        self.rid = rid
        self.mtime_ns = None if pinned_mtime is None else pinned_mtime * 1000000000
        self.verify = verify
        self.link_data_dir = link_data_dir
        self.manifests = dict((r, self.s.manifest(r)) for r in self.s.list_releases())
        self._hash_cache = {}
        self.bundle = None   # (path, {name: (offset, size)}) once checked by Runner.check_bundle

    def target_exists(self):
        # A release directory without a readable manifest still counts: its files get hashed.
        return self.rid in self.manifests

    def target_problems(self):
        """{rel: reason} for files of an existing target release that are not right."""
        rdir = self.s.release_dir(self.rid)
        man = self.manifests.get(self.rid) or {"files": {}}
        out = {}
        for rel, it in sorted(self.items.items()):
            reason = file_state(os.path.join(rdir, rel), it.size, it.sha256,
                                man["files"].get(rel), self.verify, self.mtime_ns)
            if reason:
                out[rel] = reason
        return out

    def target_perm_problems(self):
        rdir = self.s.release_dir(self.rid)
        out = []
        for rel in sorted(self.items):
            st = lstat_or_none(os.path.join(rdir, rel))
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) != 0o755 or (os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0)):
                out.append(rel)
        return out

    def target_extras(self):
        rdir = self.s.release_dir(self.rid)
        out = []
        for sub in ("bin", "libexec"):
            d = os.path.join(rdir, sub)
            if lstat_or_none(d) is None:
                continue
            for e in sorted(os.listdir(d)):
                if "%s/%s" % (sub, e) not in self.items:
                    out.append("%s/%s" % (sub, e))
        return out

    def _hash(self, path):
        if path not in self._hash_cache:
            self._hash_cache[path] = sha256_file(path)
        return self._hash_cache[path]

    def host_sources(self, it, exclude_target=False):
        """Verified-enough paths on the host that hold ``it``'s content: [(path, can_link)]."""
        out = []
        for rid, man in sorted(self.manifests.items()):
            if man is None or (exclude_target and rid == self.rid):
                continue
            for rel, rec in sorted(man["files"].items()):
                if not isinstance(rec, dict) or rec.get("sha256") != it.sha256:
                    continue
                path = os.path.join(self.s.release_dir(rid), rel)
                if file_state(path, it.size, it.sha256, rec, self.verify) is None:
                    st = os.lstat(path)
                    can_link = self.mtime_ns is None or st.st_mtime_ns == self.mtime_ns
                    out.append((path, can_link))
        # Copies k0s staged itself, or an earlier install by other means: copy only (not ours to link).
        foreign = []
        if it.rel == EXE_REL:
            foreign.append(self.s.exe_link)
        else:
            foreign.append(os.path.join(self.s.data_bin, it.name))
            foreign.append(os.path.join(self.s.libexec_dir, it.name))
        for path in foreign:
            st = lstat_or_none(path)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != it.size:
                continue
            parent = lstat_or_none(os.path.dirname(path))
            if parent is None or not stat.S_ISDIR(parent.st_mode):
                continue   # e.g. <libexec_dir>/x when libexec_dir is our symlink: already covered above
            try:
                if self._hash(path) == it.sha256:
                    out.append((path, False))
            except OSError:
                pass
        return out

    def stream_path(self, it):
        """Where ``it``'s gzip stream is: (path, offset, length or None), or None."""
        if self.bundle is not None and it.name in self.bundle[1]:
            offset, length = self.bundle[1][it.name]
            return (self.bundle[0], offset, length)
        p = os.path.join(self.s.streams_dir, it.stream)
        st = lstat_or_none(p)
        return (p, 0, None) if st is not None and stat.S_ISREG(st.st_mode) else None

    def missing(self):
        """Names whose content is nowhere on the host (their streams must be uploaded)."""
        problems = self.target_problems() if self.target_exists() else dict((r, "new") for r in self.items)
        out = []
        for rel, it in sorted(self.items.items(), key=lambda kv: kv[1].name):
            if rel in problems and not self.host_sources(it, exclude_target=True):
                out.append(it.name)
        return problems, sorted(out)

    def link_plan(self):
        """[(kind, path, target, action)] for links that are not right; raises for foreign links we must not touch."""
        plan = []
        st = lstat_or_none(self.s.exe_link)
        plan += self._leaf_plan(self.s.exe_link, self.s.exe_link_target, st)
        st = lstat_or_none(self.s.libexec_dir)
        plan += self._leaf_plan(self.s.libexec_dir, self.s.libexec_link_target, st)
        if self.link_data_dir:
            names = set(it.name for it in self.items.values() if it.rel != EXE_REL)
            prefix = self.s.libexec_dir.rstrip("/") + "/"
            for name in sorted(names):
                path = os.path.join(self.s.data_bin, name)
                target = prefix + name
                st = lstat_or_none(path)
                if st is None:
                    plan.append(("data", path, target, "create"))
                elif stat.S_ISLNK(st.st_mode):
                    cur = os.readlink(path)
                    if cur == target:
                        continue
                    if not cur.startswith(prefix):
                        raise ReleaseError(
                            "%s is a symlink to %s, which fleetsplit did not create; remove it (or set "
                            "link_data_dir: false) so k0s uses the installed %s" % (path, cur, name))
                    plan.append(("data", path, target, "replace stale link"))
                elif stat.S_ISREG(st.st_mode):
                    plan.append(("data", path, target, "replace staged file"))
                else:
                    raise ReleaseError("%s is in the way (not a file or symlink); remove it" % path)
            # Our links to names this release no longer has.
            if lstat_or_none(self.s.data_bin) is not None and os.path.isdir(self.s.data_bin):
                for e in sorted(os.listdir(self.s.data_bin)):
                    path = os.path.join(self.s.data_bin, e)
                    if e in names or TMP_MARK in e:
                        continue
                    st = lstat_or_none(path)
                    if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(path).startswith(prefix):
                        plan.append(("data", path, None, "remove stale link"))
        return plan

    @staticmethod
    def _leaf_plan(path, target, st):
        if st is None:
            return [("leaf", path, target, "create")]
        if stat.S_ISLNK(st.st_mode) and os.readlink(path) == target:
            return []
        return [("leaf", path, target, "move aside and replace")]


def service_manager():
    """The host's init system, decided like Ansible's service_mgr fact for the two k0s supports."""
    if os.path.isdir("/run/systemd/system"):
        return "systemd"
    if os.path.exists("/run/openrc/softlevel") or os.path.exists("/sbin/openrc-run"):
        return "openrc"
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def host_facts():
    """What the roles need to know about the host, so plays need no fact gathering (a `setup` call
    costs more bytes than this whole module)."""
    return dict(architecture=os.uname().machine, service_mgr=service_manager())


# --------------------------------------------------------------------------- actions

class Runner(object):

    def __init__(self, module):
        self.m = module
        p = module.params
        self.p = p
        self.check = module.check_mode
        self.s = Store(p)
        self.changes = []
        self.result = dict(changed=False, changes=self.changes, binaries_changed=False, backups={},
                           replaced_staged=[], links_changed=[], pruned=[], cleaned=[])
        self._lock_fd = None
        self._backup_root = None
        self.stale_manifest = False

    # ----- guards
    def check_paths(self, writing):
        dirs = [self.s.root, self.s.bin_dir, os.path.dirname(self.s.libexec_dir.rstrip("/"))]
        if self.p["link_data_dir"]:
            dirs.append(self.s.data_bin)
        if writing:
            dirs.append(self.s.streams_dir)
        for d in dirs:
            check_dir_chain(d)
        for d in (self.s.releases, self.s.backup):
            st = lstat_or_none(d)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise ReleaseError("refusing to write through %s: it is %s, not a directory fleetsplit created"
                                   % (d, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"))
        for rid in self.s.list_releases():
            for sub in ("bin", "libexec"):
                d = os.path.join(self.s.release_dir(rid), sub)
                st = lstat_or_none(d)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    raise ReleaseError("refusing to use %s: it is not a real directory" % d)
        if lstat_or_none(self.s.releases) is not None:
            # symlinked release directories are filtered out by list_releases; name them.
            for e in os.listdir(self.s.releases):
                st = lstat_or_none(os.path.join(self.s.releases, e))
                if st is not None and stat.S_ISLNK(st.st_mode) and not e.startswith("."):
                    raise ReleaseError("refusing to use %s: it is a symlink fleetsplit did not create"
                                       % os.path.join(self.s.releases, e))

    def lock(self):
        if self.check:
            return
        if lstat_or_none(self.s.root) is None:
            os.makedirs(self.s.root, 0o755)
        fd = os.open(os.path.join(self.s.root, ".lock"),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    # ----- cleanup of killed runs
    def cleanup(self):
        found = []
        if lstat_or_none(self.s.releases) is not None:
            for e in os.listdir(self.s.releases):
                if e.startswith(".") and (".tmp-" in e):
                    found.append(os.path.join(self.s.releases, e))
            for rid in self.s.list_releases():
                for sub in ("", "bin", "libexec"):
                    d = os.path.join(self.s.release_dir(rid), sub)
                    if os.path.isdir(d):
                        found += [os.path.join(d, e) for e in os.listdir(d) if TMP_MARK in e]
        dirs = [self.s.root, self.s.bin_dir, os.path.dirname(self.s.libexec_dir.rstrip("/")), self.s.data_bin]
        for d in dirs:
            if os.path.isdir(d):
                for e in os.listdir(d):
                    if e.startswith(".") and TMP_MARK in e:
                        p = os.path.join(d, e)
                        st = lstat_or_none(p)
                        if st is not None and (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                            found.append(p)
        for p in sorted(set(found)):
            if not self.check:
                remove_tree_or_file(p)
            self.result["cleaned"].append(p)
            self.changes.append("removed leftover of an interrupted run: %s" % p)

    # ----- building files
    def materialize(self, it, dst, sources, stream, mtime_ns):
        for path, can_link in sources:
            if can_link:
                try:
                    os.link(path, dst, follow_symlinks=False)
                    return "link"
                except OSError:
                    pass   # other filesystem, hard link protection: copy instead
            try:
                if copy_verified(path, dst, it.size, it.sha256, mtime_ns):
                    return "copy"
            except OSError:
                pass
        if stream is None:
            raise ReleaseError("no source for %s: its content is not on the host and %s does not exist"
                               % (it.name, os.path.join(self.s.streams_dir, it.stream)))
        path, offset, length = stream
        try:
            inflate_gzip_member(path, dst, it.size, it.crc32, it.sha256, mode=0o755, mtime_ns=mtime_ns,
                                offset=offset, length=length)
        except PayloadError as e:
            raise ReleaseError("stream for %s is unusable: %s" % (it.name, e))
        set_owner_mode(dst)
        if mtime_ns is not None:
            os.utime(dst, ns=(mtime_ns, mtime_ns))
        return "stream"

    def selinux(self, named_paths):
        """Label container runtime binaries like k0s does; ``named_paths`` is [(name, path)]."""
        paths = [(n, p) for n, p in named_paths if n in SELINUX_NAMES]
        if not self.p["selinux_relabel"] or not paths:
            return []
        tool = self.m.get_bin_path("selinuxenabled")
        chcon = self.m.get_bin_path("chcon")
        if not tool or not chcon or subprocess.call([tool]) != 0:
            return []
        rc, out, err = self.m.run_command([chcon, "-t", "container_runtime_exec_t"] + [p for n, p in paths])
        if rc != 0:
            raise ReleaseError("chcon failed on %s: %s" % (", ".join(p for n, p in paths), err.strip()))
        return [n for n, p in paths]

    def write_manifest(self, rdir, rid, items, pinned):
        files = {}
        for rel, it in sorted(items.items()):
            st = os.lstat(os.path.join(rdir, rel))
            files[rel] = dict(name=it.name, size=it.size, sha256=it.sha256, crc32=it.crc32, mtime_ns=st.st_mtime_ns)
        data = dict(format=1, release_id=rid, k0s_version=self.p["k0s_version"], pinned_mtime=pinned, files=files)
        atomic_write(os.path.join(rdir, MANIFEST), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def build(self, pl, rid, items, pinned, sources_out):
        mtime_ns = pl.mtime_ns
        tmp = os.path.join(self.s.releases, ".%s.tmp-%s" % (rid, secrets.token_hex(6)))
        os.mkdir(tmp, 0o755)
        try:
            for sub in ("bin", "libexec"):
                os.mkdir(os.path.join(tmp, sub), 0o755)
                set_owner_mode(os.path.join(tmp, sub))
            for rel, it in sorted(items.items()):
                sources_out[it.name] = self.materialize(it, os.path.join(tmp, rel), pl.host_sources(it),
                                                        pl.stream_path(it), mtime_ns)
            self.result["selinux_relabeled"] = self.selinux(
                [(it.name, os.path.join(tmp, rel)) for rel, it in items.items()])
            self.write_manifest(tmp, rid, items, pinned)
            for sub in ("bin", "libexec"):
                fsync_dir(os.path.join(tmp, sub))
            set_owner_mode(tmp)
            fsync_dir(tmp)
            os.rename(tmp, self.s.release_dir(rid))
            fsync_dir(self.s.releases)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def repair(self, pl, rid, items, problems, pinned, sources_out):
        rdir = self.s.release_dir(rid)
        for rel, reason in sorted(problems.items()):
            it = items[rel]
            d = os.path.join(rdir, os.path.dirname(rel))
            if lstat_or_none(d) is None:
                os.mkdir(d, 0o755)
                set_owner_mode(d)
            tmp = tmp_name(d, it.name)
            bad = os.path.join(rdir, rel)
            srcs = [(p, c) for p, c in pl.host_sources(it) if p != bad]
            sources_out[it.name] = self.materialize(it, tmp, srcs, pl.stream_path(it), pl.mtime_ns)
            self.result["selinux_relabeled"] += self.selinux([(it.name, tmp)])
            st = lstat_or_none(bad)
            if st is not None and stat.S_ISDIR(st.st_mode):
                shutil.rmtree(bad)
            os.rename(tmp, bad)
            fsync_dir(d)

    # ----- links
    def backup_path(self, path):
        if self._backup_root is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self._backup_root = os.path.join(self.s.backup, "%s-%s" % (stamp, secrets.token_hex(3)))
        return os.path.join(self._backup_root, path.lstrip("/"))

    def move_aside(self, path):
        """Move something that is not ours into the store's backup directory; returns where it went."""
        dest = self.backup_path(path)
        if not self.check:
            ensure_real_dir(self.s.backup, False, [], 0o700)
            os.makedirs(os.path.dirname(dest), 0o700, exist_ok=True)
            try:
                os.rename(path, dest)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                # Other filesystem: copy, then remove the original only after the copy is complete.
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    shutil.copytree(path, dest, symlinks=True)
                    shutil.rmtree(path)
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(path), dest)
                    os.unlink(path)
                else:
                    shutil.copy2(path, dest)
                    os.unlink(path)
        self.result["backups"][path] = dest
        self.changes.append("moved %s (not created by fleetsplit) to %s" % (path, dest))
        return dest

    def apply_links(self, plan):
        for kind, path, target, action in plan:
            if action == "remove stale link":
                if not self.check:
                    os.unlink(path)
                    fsync_dir(os.path.dirname(path))
                self.changes.append("removed stale link %s" % path)
                self.result["links_changed"].append(path)
                continue
            if not self.check:
                os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            if action == "move aside and replace":
                # A file, directory or foreign symlink: keep it in the backup, never delete it.
                self.move_aside(path)
            elif action == "replace staged file":
                self.result["replaced_staged"].append(path)
            if not self.check:
                atomic_symlink(target, path)
            self.changes.append("%s %s -> %s" % ("link" if action == "create" else action + ":", path, target))
            self.result["links_changed"].append(path)

    def switch(self, rid, old_current):
        """previous := old current, then current := rid (each one rename)."""
        if old_current == rid:
            return False
        if old_current is not None:
            if not self.check:
                atomic_symlink("releases/" + old_current, self.s.previous_link)
        if not self.check:
            atomic_symlink("releases/" + rid, self.s.current_link)
            os.utime(self.s.release_dir(rid))   # activation time orders releases for pruning
        self.changes.append("current: %s -> %s" % (old_current, rid))
        return True

    def prune(self, keep, cur, prev):
        """Remove old releases beyond ``keep`` (current and previous are never removed)."""
        protected = set(x for x in (cur, prev) if x)
        others = [r for r in self.s.list_releases() if r not in protected]
        others.sort(key=lambda r: os.lstat(self.s.release_dir(r)).st_mtime_ns, reverse=True)
        room = max(0, keep - (1 if prev and prev != cur else 0))
        for r in others[room:]:
            if not self.check:
                shutil.rmtree(self.s.release_dir(r))
            self.result["pruned"].append(r)
            self.changes.append("pruned old release %s" % r)

    # ----- states
    def common_result(self):
        cur = self.s.pointer(self.s.current_link)
        self.result.update(current_release=cur, previous_release=self.s.pointer(self.s.previous_link),
                           releases=self.s.list_releases())

    def diff(self, before_rid, after):
        before = {}
        if before_rid:
            man = self.s.manifest(before_rid) or {"files": {}}
            for rel, rec in man["files"].items():
                before[rec.get("name", rel)] = rec.get("sha256")

        def lines(d):
            return "".join("%s: %s\n" % (k, d[k]) for k in sorted(d))

        return dict(before=lines(before), after=lines(after),
                    before_header="release %s" % (before_rid or "(none)"),
                    after_header="release %s" % self.result.get("release_id"))

    def items_and_id(self):
        p = self.p
        if p["executable"] is None or p["files"] is None:
            raise ReleaseError("state=%s needs files and executable (the payload_split result)" % p["state"])
        items = build_items(p["files"], p["executable"])
        rid = p["release_id"] or compute_release_id(items, p["k0s_version"], p["pinned_mtime"])
        return items, check_release_id(rid)

    def run_query(self):
        # A dry run of present: `up_to_date` then means exactly "present would change nothing", so
        # callers may skip it (one module call less per host and run).
        self.check = True
        self.p["switch"] = True
        self.run_present()
        if lstat_or_none(self.s.rollback_record) is not None or self.stale_manifest:
            # present ends a rollback by removing its record, and refreshes a stale manifest.json,
            # even when nothing else changes.
            self.result["up_to_date"] = False
        self.result["host"] = host_facts()
        self.result.pop("diff", None)

    def run_present(self):
        items, rid = self.items_and_id()
        self.result["release_id"] = rid
        self.check_paths(writing=True)
        self.lock()
        if lstat_or_none(self.s.root) is None:
            self.changes.append("created directory %s" % self.s.root)
        ensure_real_dir(self.s.releases, self.check, self.changes)
        self.cleanup()
        pl = Planner(self.s, items, rid, self.p["pinned_mtime"], self.p["verify"], self.p["link_data_dir"])
        old_cur = self.s.pointer(self.s.current_link)
        problems, missing = pl.missing()
        self.result["corrupt"] = dict((items[r].name, why) for r, why in problems.items() if why != "new")
        links = pl.link_plan()   # raises on foreign data-dir links before anything is built
        pl.bundle = self.check_bundle(items)
        # Everything needed must be available before anything is switched.
        unavailable = [n for n in missing if pl.stream_path(self._by_name(items, n)) is None]
        if unavailable and not self.check:
            raise ReleaseError(
                "cannot install release %s: no content on the host and no stream in %s for: %s "
                "(expected %s%s); nothing was switched"
                % (rid, self.s.streams_dir, ", ".join(unavailable),
                   ", ".join(os.path.join(self.s.streams_dir, n + ".gz") for n in unavailable),
                   "" if pl.bundle is None else ", or a member of the bundle %s" % self.p["bundle"]))
        self.result["missing"] = missing
        sources = {}
        self.result.update(built=False, repaired={}, sources=sources, selinux_relabeled=[])
        pinned = self.p["pinned_mtime"]
        if not pl.target_exists():
            if not self.check:
                self.build(pl, rid, items, pinned, sources)
            else:
                for it in items.values():
                    sources[it.name] = "link/copy" if pl.host_sources(it) else "stream"
            self.result["built"] = True
            self.changes.append("built release %s (%d files)" % (rid, len(items)))
        else:
            if problems:
                if not self.check:
                    self.repair(pl, rid, items, problems, pinned, sources)
                for rel, why in sorted(problems.items()):
                    self.result["repaired"][items[rel].name] = why
                    self.changes.append("repaired %s in release %s (%s)" % (items[rel].name, rid, why))
            for rel in pl.target_perm_problems():
                if not self.check:
                    set_owner_mode(os.path.join(self.s.release_dir(rid), rel))
                self.changes.append("fixed owner/mode of %s in release %s" % (rel, rid))
            for rel in pl.target_extras():
                if not self.check:
                    remove_tree_or_file(os.path.join(self.s.release_dir(rid), rel))
                self.changes.append("removed %s from release %s: not part of it" % (rel, rid))
            if problems or self._manifest_stale(pl, rid, items):
                if self.check:
                    # Not a change anyone sees, but without the refresh every run re-hashes those files.
                    self.stale_manifest = True
                else:
                    self.write_manifest(self.s.release_dir(rid), rid, items, pinned)
        old_prev = self.s.pointer(self.s.previous_link)
        switched = False
        if self.p["switch"]:
            switched = self.switch(rid, old_cur)
            self.apply_links(links)
            if not self.check:
                unlink_quietly(self.s.rollback_record)   # an explicit install ends a rollback
            self.prune(self.p["keep_releases"], rid, old_cur if switched and old_cur else old_prev)
        self.result["binaries_changed"] = bool(switched or self.result["repaired"])
        self.remove_streams(items)
        self.result["up_to_date"] = not self.changes
        if self.m._diff and self.p["state"] == "present":
            self.result["diff"] = self.diff(old_cur, dict((it.name, it.sha256) for it in items.values()))
        self.common_result()
        if self.check:
            self.result["current_release"] = old_cur

    def check_bundle(self, items):
        """The uploaded bundle as (path, {name: (offset, size)}), or None; refuses a bundle that does not
        match its member table before anything is built."""
        path = self.p["bundle"]
        if path is None:
            return None
        try:
            table = check_bundle_members(self.p["bundle_members"])
        except PayloadError as e:
            raise ReleaseError("bundle_members: %s; nothing was switched" % e)
        names = set(it.name for it in items.values())
        extra = sorted(set(table) - names)
        if extra:
            raise ReleaseError("bundle %s has members that are not part of release %s: %s (member table from "
                               "another split?); nothing was switched"
                               % (path, self.result.get("release_id"), ", ".join(extra)))
        st = lstat_or_none(path)
        if st is None:
            if self.check:
                return None
            raise ReleaseError("bundle %s does not exist (upload it first); nothing was switched" % path)
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError("bundle %s is not a regular file; nothing was switched" % path)
        try:
            check_bundle_members(self.p["bundle_members"], st.st_size)
        except PayloadError as e:
            raise ReleaseError("bundle %s does not match its member table: %s; nothing was switched" % (path, e))
        return (path, table)

    @staticmethod
    def _by_name(items, name):
        for it in items.values():
            if it.name == name:
                return it
        raise KeyError(name)

    def _manifest_stale(self, pl, rid, items):
        man = pl.manifests.get(rid)
        if man is None:
            return True
        for rel in items:
            rec = man["files"].get(rel) or {}
            st = lstat_or_none(os.path.join(self.s.release_dir(rid), rel))
            if st is None or rec.get("mtime_ns") != st.st_mtime_ns or rec.get("size") != st.st_size:
                return True
        return False

    def remove_streams(self, items):
        b = self.p["bundle"]
        if b is not None:
            st = lstat_or_none(b)
            if st is not None and stat.S_ISREG(st.st_mode):
                if not self.check:
                    os.unlink(b)
                self.changes.append("removed used bundle %s" % b)
        for it in items.values():
            p = os.path.join(self.s.streams_dir, it.stream)
            st = lstat_or_none(p)
            if st is not None and stat.S_ISREG(st.st_mode):
                if not self.check:
                    os.unlink(p)
                self.changes.append("removed used stream %s" % p)

    def _read_rollback_record(self):
        try:
            with open(self.s.rollback_record, "rb") as f:
                rec = json.loads(f.read().decode("utf-8"))
            return rec if isinstance(rec, dict) else None
        except (OSError, ValueError):
            return None

    def run_rollback(self):
        self.check_paths(writing=True)
        self.lock()
        self.cleanup()
        cur = self.s.pointer(self.s.current_link)
        prev = self.s.pointer(self.s.previous_link)
        rec = self._read_rollback_record()
        if rec and cur and rec.get("to") == cur:
            # Already rolled back by an earlier run: a re-run must not flip back again.
            left = rec.get("from")
            if left and left != prev and left in self.s.list_releases():
                # That run was killed between its two renames: finish recording what it left.
                if not self.check:
                    atomic_symlink("releases/" + left, self.s.previous_link)
                self.changes.append("previous: %s -> %s (finishing an interrupted rollback)" % (prev, left))
            self.result.update(release_id=cur, rolled_back_from=left)
            self.common_result()
            return
        if prev is None or prev == cur:
            raise ReleaseError("nothing to roll back to: %s records no previous release%s"
                               % (self.s.previous_link, "" if cur is None else " (current is %s)" % cur))
        man = self.s.manifest(prev)
        if man is None or lstat_or_none(self.s.release_dir(prev)) is None:
            raise ReleaseError("previous release %s is gone or has no manifest.json; cannot roll back" % prev)
        items = {}
        for rel, r in man["files"].items():
            items[rel] = Item(r.get("name"), rel, r.get("size"), r.get("sha256"), r.get("crc32"))
        pl = Planner(self.s, items, prev, man.get("pinned_mtime"), self.p["verify"], self.p["link_data_dir"])
        problems = pl.target_problems()
        if problems:
            raise ReleaseError("previous release %s is damaged (%s); not switching to it. Install it again "
                               "with state=present instead" % (prev, ", ".join(
                                   "%s: %s" % (items[r].name, w) for r, w in sorted(problems.items()))))
        links = pl.link_plan()
        self.result.update(release_id=prev, rolled_back_from=cur)
        # current := previous first (what matters for running hosts), then previous := the release we left.
        if not self.check:
            # The record goes first, so a run killed between the renames below is finished by the next one.
            atomic_write(self.s.rollback_record, (json.dumps({"from": cur, "to": prev}) + "\n").encode())
            atomic_symlink("releases/" + prev, self.s.current_link)
            if cur:
                atomic_symlink("releases/" + cur, self.s.previous_link)
            os.utime(self.s.release_dir(prev))
        self.changes.append("rolled back: current %s -> %s" % (cur, prev))
        self.apply_links(links)
        self.result["binaries_changed"] = True
        if self.m._diff:
            self.result["diff"] = self.diff(cur, dict((it.name, it.sha256) for it in items.values()))
        self.common_result()
        if self.check:
            self.result.update(current_release=cur, previous_release=prev)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["query", "present", "rollback"]),
            release_id=dict(type="str"),
            k0s_version=dict(type="str"),
            files=dict(type="list", elements="dict"),
            executable=dict(type="dict"),
            streams_dir=dict(type="path"),
            bundle=dict(type="path"),
            bundle_members=dict(type="list", elements="dict"),
            bundle_src=dict(type="path"),   # consumed by the action plugin; never reaches the host set
            switch=dict(type="bool", default=True),
            store_dir=dict(type="path", default="/var/lib/fleetsplit-k0s"),
            bin_dir=dict(type="path", default="/usr/bin"),
            libexec_dir=dict(type="path", default="/usr/libexec/k0s"),
            data_dir=dict(type="path", default="/var/lib/k0s"),
            link_data_dir=dict(type="bool", default=True),
            pinned_mtime=dict(type="int"),
            keep_releases=dict(type="int", default=2),
            verify=dict(type="bool", default=False),
            selinux_relabel=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ("files", "executable")), ("state", "query", ("files", "executable"))],
        required_together=[("bundle", "bundle_members")],
        supports_check_mode=True,
    )
    p = module.params
    for key in ("store_dir", "bin_dir", "libexec_dir", "data_dir", "streams_dir", "bundle"):
        if p[key] is not None:
            if not os.path.isabs(p[key]):
                module.fail_json(msg="%s must be an absolute path, got %r" % (key, p[key]))
            if "\x00" in p[key]:
                module.fail_json(msg="%s contains a NUL byte" % key)
            p[key] = os.path.normpath(p[key])
    if p["keep_releases"] < 1:
        module.fail_json(msg="keep_releases must be at least 1 (the previous release is always kept), got %d"
                         % p["keep_releases"])
    if p["pinned_mtime"] is not None and p["pinned_mtime"] < 0:
        module.fail_json(msg="pinned_mtime must be a non-negative number of seconds")
    r = Runner(module)
    try:
        getattr(r, "run_" + p["state"])()
    except (HostFsError, PayloadError) as e:
        module.fail_json(msg=str(e), changes=r.changes)
    except OSError as e:
        module.fail_json(msg=os_error_message(e), changes=r.changes)
    res = r.result
    res["changed"] = bool(r.changes) and p["state"] != "query"
    if p["state"] == "query":
        for k in ("backups", "replaced_staged", "links_changed", "pruned", "cleaned"):
            res.pop(k, None)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
