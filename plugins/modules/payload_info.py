#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: payload_info
short_description: Inspect the binaries embedded in a k0s executable
version_added: 0.1.0
description:
  - Reports the payload format of a k0s executable (appended zip, legacy appended gzip members, or none),
    every embedded binary with its size, sha256, CRC-32 and compressed size, the stripped executable's size and
    sha256, the k0s version and, for Go programs, their build info (Go version, main module path and version).
  - Inflates and verifies every entry (nothing is written outside a private temporary directory), so a damaged
    payload fails with a message naming the problem.
  - A k3s executable is reported as C(format=k3s), with its embedded C(embed/<sha256>.tar.zst) (located through Go's
    embed.FS table, its name checked against its sha256), the k3s version and every tar member, streamed with
    bounded memory and checked by k3s's extraction rules (docs/k3s.md).
options:
  src:
    description: Path of the k0s executable.
    type: path
    required: true
  build_info:
    description: Read Go build info of each embedded binary and of the executable itself (C(.go.buildinfo)).
    type: bool
    default: true
  require_payload:
    description: Fail when the executable carries no payload instead of reporting C(format=bare).
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - pyelftools >= 0.26, in the Python that runs the module (normally the controller's)
  - zstandard >= 0.25, only for k3s executables
seealso:
  - module: fleetsplit.k0s.payload_split
author:
  - fleetsplit.k0s contributors (@fleetsplit)
'''

EXAMPLES = r'''
- name: What is inside this k0s?
  fleetsplit.k0s.payload_info:
    src: /srv/k0s/k0s-v1.36.3+k0s.0-amd64
  delegate_to: localhost
  register: k0s_info

- name: Show kubelet's Go version
  ansible.builtin.debug:
    msg: "{{ (k0s_info.files | selectattr('name', 'eq', 'kubelet') | first).go_build_info.go_version }}"
'''

RETURN = r'''
format:
  description: C(zip), C(legacy), C(bare), or C(k3s) (a k3s executable; docs/k3s.md).
  returned: success
  type: str
k3s_version:
  description: k3s version, or null.
  returned: when format is k3s
  type: str
data_hash:
  description: The archive's sha256, the directory name under C(<data-dir>/data/).
  returned: when format is k3s
  type: str
archive:
  description: The embedded C(embed/<sha256>.tar.zst) (C(name), C(offset), C(length), C(sha256)), verified.
  returned: when format is k3s
  type: dict
members:
  description: The archive's tar members (C(path), C(type), C(mode), C(size), C(sha256), C(target)), sorted by path.
  returned: when format is k3s
  type: list
  elements: dict
payload_offset:
  description: Offset of the payload (size of the stripped executable).
  returned: success
  type: int
payload_size:
  description: Bytes of payload.
  returned: success
  type: int
k0s_version:
  description: k0s version compiled into the program, or null.
  returned: success
  type: str
elf_machine:
  description: Architecture, spelled like C(uname -m).
  returned: success
  type: str
pinned_mtime_ns:
  description: The executable's mtime in nanoseconds (what a stripped legacy k0s requires of staged binaries).
  returned: success
  type: int
deflate_engine:
  description:
    - The deflate engine that inflated (and compressed) on the controller, C(name) (C(isal), C(zlib-ng) or
      C(zlib)) and C(version). The fastest installed is used; the environment variable
      C(FLEETSPLIT_DEFLATE_ENGINE) (C(auto), C(isal), C(zlib-ng), C(zlib)) overrides it. Results are the same
      with any engine; hosts always use the standard library's zlib.
  returned: success
  type: dict
  sample: {name: isal, version: 1.9.1}
files:
  description: One item per embedded binary.
  returned: success
  type: list
  elements: dict
  contains:
    name: {description: Base name., type: str}
    size: {description: Inflated size., type: int}
    sha256: {description: sha256 of the inflated binary., type: str}
    crc32: {description: CRC-32., type: int}
    compressed_size: {description: Raw compressed stream size., type: int}
    data_offset: {description: Absolute offset of the raw compressed stream., type: int}
    method: {description: C(deflate) or C(store)., type: str}
    go_build_info:
      description: Go version and main module, or null for non-Go binaries.
      type: dict
      returned: with O(build_info)
images:
  description:
    - Image bundles the payload carries (zip entries C(images/<name>), the next k0s layout), never binaries.
    - Verified (size, CRC-32) and hashed without being written.
  returned: success
  type: list
  elements: dict
  contains:
    name: {description: Base name (C(images/) removed)., type: str}
    size: {description: Size in bytes., type: int}
    sha256: {description: sha256., type: str}
    crc32: {description: CRC-32 recorded in the payload., type: int}
    compressed_size: {description: Size of its data in the payload., type: int}
    data_offset: {description: Offset of its data in the executable., type: int}
    method: {description: C(deflate) or C(store)., type: str}
stripped_executable:
  description: Size, sha256 and Go build info of the executable without payload.
  returned: success
  type: dict
'''

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import (
    FORMAT_BARE, FORMAT_K3S, HAS_PYELFTOOLS, PYELFTOOLS_IMPORT_ERROR, PayloadError, describe, extract, go_build_info, inspect,
    stripped_digest, write_stripped)


def _k3s_executable(payload, build_info):
    """The k3s executable (shipped whole): size, sha256, crc32 and its Go build info."""
    stripped = stripped_digest(payload)
    stripped.pop('path', None)
    stripped.pop('changed', None)
    if build_info:
        stripped['go_build_info'] = go_build_info(payload.path)
    return stripped


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type='path', required=True),
            build_info=dict(type='bool', default=True),
            require_payload=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    if not HAS_PYELFTOOLS:
        module.fail_json(msg=missing_required_lib('pyelftools'), exception=PYELFTOOLS_IMPORT_ERROR)
    p = module.params
    try:
        payload = inspect(p['src'], reference_elf=True)   # pyelftools, the reference parser (the split has its own)
        if payload.format == FORMAT_BARE and p['require_payload']:
            module.fail_json(msg="%s has no embedded payload (the ELF image ends at end of file)" % p['src'])
        result = describe(payload)
        if payload.format == FORMAT_K3S:   # one item per distinct content; members in the result
            return module.exit_json(changed=False, stripped_executable=_k3s_executable(payload, p['build_info']),
                                    images=[], **result)
        offsets = dict((e.name, e) for e in payload.entries)
        files = []
        images = extract(payload, None, write=False, entries=payload.images) if payload.images else []
        for item in images:
            entry = [e for e in payload.images if e.name == item['name']][0]
            item.update(data_offset=entry.data_offset, method=entry.method)
            item.pop('path', None)
            item.pop('changed', None)
        if not p['build_info']:
            stripped = stripped_digest(payload)
            if payload.format != FORMAT_BARE:
                files = extract(payload, None, write=False)
        else:
            # Build info needs the inflated ELF on disk for pyelftools; a private temp dir keeps memory bounded.
            work = tempfile.mkdtemp(prefix='fleetsplit-info-')
            try:
                stripped = write_stripped(payload, os.path.join(work, 'k0s'))
                stripped['go_build_info'] = go_build_info(stripped['path'])
                if payload.format != FORMAT_BARE:
                    files = extract(payload, os.path.join(work, 'bin'))
                    for item in files:
                        item['go_build_info'] = go_build_info(item['path'])
            finally:
                shutil.rmtree(work, ignore_errors=True)
        for item in files:
            item.pop('path', None)
            item.pop('changed', None)
            item['data_offset'] = offsets[item['name']].data_offset
            item['method'] = offsets[item['name']].method
        stripped.pop('path', None)
        stripped.pop('changed', None)
    except PayloadError as e:
        module.fail_json(msg=str(e))
    result.update(files=files, images=images, stripped_executable=stripped)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
