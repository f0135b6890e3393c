#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: image_output
short_description: Pack a staged image overlay into one reproducible file (tar, cpio newc or systemd-sysext image)
version_added: "0.5.0"
description:
  - Reads the directory tree O(root) (the overlay C(deploy_k0s) stages) and writes it as one file O(dest) in
    O(format). Every entry is owned by root (uid and gid 0); its permission bits are kept; every mtime is
    O(epoch) except the paths in O(keep_mtime), which keep their on-disk mtime in seconds (a legacy k0s re-uses
    a staged binary only when its mtime equals the executable's).
  - Reproducible. Entries are sorted by path bytes, directories before their content, and nothing of the build
    machine is recorded (no user names, inode numbers, other timestamps or paths), so two builds of the same
    tree are byte-identical wherever it lies and whatever its on-disk timestamps are.
  - The file is built under a temporary name beside O(dest) and renamed over it only when the bytes differ;
    otherwise the temporary file is removed and nothing changes.
  - V(tar) is POSIX pax (readable by every tar); V(cpio) is the newc format the Linux kernel unpacks as an
    initramfs; V(sysext) is a systemd system extension image built by the C(image_sysext) library.
  - Runs where the tree is, normally the controller. Standard library only for V(tar) and V(cpio).
options:
  root:
    description: The staged tree to pack (its own entry is not recorded, only what is below it).
    type: path
    required: true
  format:
    description: Output format.
    type: str
    choices: [tar, cpio, sysext]
    required: true
  dest:
    description:
      - The file to write. Its directory must exist; refused when it is a directory, a symlink, or lies inside
        O(root).
    type: path
    required: true
  epoch:
    description: The mtime of every entry not in O(keep_mtime), in seconds since 1970 (for example C(SOURCE_DATE_EPOCH)).
    type: int
    default: 0
  keep_mtime:
    description: Paths relative to O(root) (regular files, for example C(usr/bin/k0s)) that keep their on-disk mtime.
    type: list
    elements: str
    default: []
  mode:
    description:
      - Mode of O(dest). When the tree holds a file others may not read (the controller config C(k0s.yaml) and the
        unit's environment file are 0600, as they may carry tokens, passwords, C(k0s_env) secrets), the group and
        other bits are cleared (C(0644) becomes C(0600)), since whoever can read the image can extract them.
        RV(private_entries) names those files.
    type: raw
    default: '0644'
  sysext:
    description:
      - Options of the sysext image, passed to the C(image_sysext) library (C(name), C(os_id), C(version_id),
        C(sysext_level), C(architecture) or C(elf_machine), C(reload_manager), C(filesystem), C(compression));
        used only with O(format=sysext). O(epoch) is added as C(epoch).
    type: dict
    default: {}
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - V(tar) and V(cpio) compute the exact sha256 the file would have without writing anything and report
        whether O(dest) would change.
      - V(sysext) builds the image in a private temporary directory, compares its sha256 with O(dest) and
        removes it (the build tool leaves no other way to know the bytes).
  diff_mode:
    support: full
    details: Shows the sha256 and size of O(dest) before and after (not the content).
  platform:
    platforms: posix
seealso:
  - module: fleetsplit.k0s.payload_split
  - module: fleetsplit.k0s.image_root_paths
author:
  - fleetsplit.k0s contributors (@fleetsplit)
'''

EXAMPLES = r'''
- name: Pack the staged overlay as a tar archive
  fleetsplit.k0s.image_output:
    root: /tmp/k0s-staging
    format: tar
    dest: out/k0s.tar
    epoch: "{{ lookup('ansible.builtin.env', 'SOURCE_DATE_EPOCH') | default(0, true) | int }}"

- name: The same tree as an initramfs fragment (legacy k0s keeps its release files' mtime)
  fleetsplit.k0s.image_output:
    root: /tmp/k0s-staging
    format: cpio
    dest: out/k0s.cpio
    keep_mtime: [usr/bin/k0s, usr/libexec/k0s/kubelet]
'''

RETURN = r'''
format:
  description: The format written.
  returned: success
  type: str
  sample: tar
dest:
  description: The output file (absolute).
  returned: success
  type: str
sha256:
  description: sha256 of the output (in check mode, of the V(tar)/V(cpio) file that would be written; null for sysext).
  returned: success
  type: str
size:
  description: Size of the output in bytes (null for sysext in check mode).
  returned: success
  type: int
private_entries:
  description: Files in the image that others may not read (their presence makes O(dest) private, see O(mode)).
  returned: success
  type: list
  elements: str
mode:
  description: The mode O(dest) has (or would have in check mode).
  returned: success
  type: str
entries:
  description: Number of entries packed (directories, files and symlinks below O(root)).
  returned: success
  type: int
sysext:
  description: What the sysext library returned (image layout, extension-release, ...).
  returned: with O(format=sysext)
  type: dict
'''

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.image_archive import (
    check_dest, commit_file, write_archive)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.image_sysext import SysextError, build_sysext
from ansible_collections.fleetsplit.k0s.plugins.module_utils.image_tree import TreeError, scan
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import (
    remove_quietly, sha256_file, temp_path)


def _state(path):
    """'sha256 ... size ...' of an existing output, for the diff."""
    if not os.path.isfile(path):
        return ""
    return "sha256 %s\nsize %d\n" % (sha256_file(path), os.path.getsize(path))


def private_mode(mode, private):
    """Whoever reads the image reads every file in it: one file others may not read makes the image 0600-like."""
    return mode & ~0o077 if private else mode


def _sysext(module, entries, root, dest, options, mode, private):
    """The sysext image (image_sysext library). Check mode builds it in a private temp dir to compare, then
    removes it: the only way to know whether dest would change. Private files the image drops (OpenRC's conf.d)
    do not count."""
    if module.check_mode:
        scratch = tempfile.mkdtemp(prefix="fleetsplit-k0s-sysext-check.")
        try:
            built = build_sysext(entries, root, os.path.join(scratch, "image.raw"), options)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        tmp = temp_path(dest)   # a fresh name the library creates
        try:
            built = build_sysext(entries, root, tmp, options)
        except BaseException:
            remove_quietly(tmp)
            raise
    kept = [path for path in private if path in built["mapping"]]
    if module.check_mode:
        same = os.path.isfile(dest) and not os.path.islink(dest) and sha256_file(dest) == built["sha256"]
        result = dict(sha256=built["sha256"], size=built["size"], changed=not same)
    else:
        result = commit_file(tmp, dest, private_mode(mode, kept), digest=built["sha256"])
    result.update(sysext=built, private_entries=kept)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type='path', required=True),
            format=dict(type='str', required=True, choices=['tar', 'cpio', 'sysext']),
            dest=dict(type='path', required=True),
            epoch=dict(type='int', default=0),
            keep_mtime=dict(type='list', elements='str', default=[]),
            mode=dict(type='raw', default='0644'),
            sysext=dict(type='dict', default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        mode = int(p['mode'], 8) if isinstance(p['mode'], str) else int(p['mode'])
    except ValueError:
        module.fail_json(msg="mode must be an octal mode like '0644', got %r" % (p['mode'],))
    root = os.path.abspath(p['root'])
    if not os.path.isdir(root) or os.path.islink(root):
        module.fail_json(msg="root %s is not a directory (the staged overlay to pack)" % root)
    try:
        dest = check_dest(p['dest'], root)
        before = _state(dest) if module._diff else ""
        entries = scan(root, epoch=p['epoch'], keep_mtime=p['keep_mtime'])
        private = [e.path for e in entries if e.kind == 'file' and not e.mode & 0o004]
        if p['format'] == 'sysext':
            options = dict(p['sysext'], epoch=p['epoch'])
            result = _sysext(module, entries, root, dest, options, mode, private)
        else:
            result = write_archive(p['format'], entries, dest, private_mode(mode, private),
                                   write=not module.check_mode)
            result['private_entries'] = private
    except (PayloadError, TreeError, SysextError) as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg="writing %s (%s of %s) failed: %s" % (p['dest'], p['format'], root, e))

    changed = result.pop('changed')
    mode = private_mode(mode, result['private_entries'])
    if os.path.isfile(dest) and not (module.check_mode and changed):
        file_args = module.load_file_common_arguments(dict(path=dest, mode=mode))
        changed = module.set_fs_attributes_if_different(file_args, changed)
    result.update(format=p['format'], dest=dest, entries=len(entries), mode='%04o' % mode)
    if module._diff:
        after = "sha256 %s\nsize %d\n" % (result['sha256'], result['size'])
        result['diff'] = dict(before=before, after=after, before_header=dest, after_header=dest)
    module.exit_json(changed=changed, **result)


if __name__ == '__main__':
    main()
