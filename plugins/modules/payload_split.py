#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: payload_split
short_description: Split a k0s executable into its embedded binaries and a stripped executable
version_added: 0.1.0
description:
  - Reads a k0s executable, detects its payload format (appended zip, k0s v1.36.1 and later, or legacy appended
    gzip members, k0s v1.35 and earlier) and writes every embedded binary (kubelet, containerd, runc, etcd, ...)
    as a separate file into O(dest).
  - Optionally writes the stripped executable (the bytes before the payload, byte for byte the bare k0s build) and
    a directory of per-binary gzip streams built from the payload's own compressed bytes, for shipping to hosts.
  - Every entry is inflated with bounded memory and verified (size, CRC-32) before anything is renamed into place;
    a damaged payload leaves O(dest) as it was.
  - Compares first and writes only what differs (size and sha256 against the facts derived from O(src)); a run
    where nothing differs writes nothing, not even a temporary file.
  - Zip entries C(bin/<name>) (the next k0s layout) are binaries like C(<name>); C(images/<name>) are image
    bundles, listed in RV(images) and written only to O(images_dest); any other path in the zip is refused.
  - Runs where the executable is, normally on the controller (C(delegate_to=localhost)).
  - A B(k3s) executable (C(format=k3s)) carries a zstd tar embedded in its Go image. It ships whole (RV(stripped_executable)
    is all of it); RV(members) lists the archive, RV(files) one item per distinct file content (C(name) is its
    sha256) with C(streams_dest/k3s/<sha256>.gz); O(dest) is then a k3s data dir that receives C(data/<hash>/) laid
    out as k3s extracts it, so k3s does not extract again (docs/k3s.md).
options:
  src:
    description:
      - Path of the k0s executable to split. Required unless only O(private_dirs) are to be prepared.
      - Every fact in the result (each file's, stream's and the stripped executable's sha256, size, CRC-32) is
        derived from it in every run, never read back from earlier outputs; existing outputs are compared with
        those facts and any that differs is rewritten from O(src) (see RV(healed)).
    type: path
  dest:
    description:
      - Directory that receives one file per embedded binary, named as in the payload (C(runc), C(kubelet), ...).
      - Created if missing. Refused if it is a symlink or a world-writable directory owned by another user.
      - For k3s, a k3s data dir (C(--data-dir), for image builders) that receives C(data/<hash>/), C(data/cni/) links and
        C(data/current)/C(previous) as k3s's own extraction leaves them; a differing C(data/<hash>) is rebuilt.
    type: path
  stripped_executable:
    description: Path for the executable without its payload.
    type: path
  streams_dest:
    description:
      - Directory that receives C(libexec/<name>.gz), one gzip member per embedded binary made from the payload's
        compressed bytes without recompression, C(bin/k0s.gz), the stripped executable gzip-compressed, and
        C(manifest.json), this module's result.
      - Hosts inflate and verify these with the Python standard library (see M(fleetsplit.k0s.k0s_release)).
    type: path
  images_dest:
    description:
      - Directory that receives the image bundles the payload carries (zip entries C(images/<name>), mode 0644),
        verified like binaries. Without it they are only listed in RV(images); they never go to O(dest) or
        O(streams_dest).
    type: path
  pin_mtime:
    description:
      - Give every written binary and the stripped executable the source executable's modification time.
      - Required for legacy-format k0s, which re-uses a staged binary only when its size and mtime (to the
        nanosecond) equal the executable's. Harmless for the zip format.
      - A binary or stripped executable whose content is right but whose mtime is not the source's is re-timed
        (content untouched) and reported changed, in check mode as would-change (RV(retimed)).
    type: bool
    default: true
  reuse_manifest:
    description:
      - Deprecated and ignored (a warning says so). It trusted an earlier C(manifest.json) by the source's size and
        mtime, so whoever could write the cache decided what hosts were told to expect. Every run now derives
        the facts from O(src) and verifies the outputs against them (about 0.5 s for a 56 MB zip-format k0s).
    type: bool
    default: false
  private_dirs:
    description:
      - Directories that must be private to the user running the module, checked (and created, mode 0700,
        independent of the umask) before anything else, like ssh checks a private key.
      - Refused when one is a symlink, not a directory, owned by another user or group/world-writable; one that
        is only group/world-readable is tightened to 0700 with a warning. The split role passes its
        C(split/) and C(downloads/) directories.
    type: list
    elements: path
  retain:
    description:
      - With O(streams_dest) in a cache entry C(<cache>/split/<sha256>/streams), mark the entry used and keep
        only the O(retain) most recently used entries of C(<cache>/split/) (this one always), removing the
        others and the C(<cache>/downloads/<version>/) release each of them was split from. C(0) keeps all.
    type: int
    default: 0
  workers:
    description: Threads that inflate entries in parallel.
    type: int
    default: 2
  mode:
    description: Mode of the binaries and the stripped executable.
    type: raw
    default: '0755'
  owner:
    description: Owner of the written files.
    type: str
  group:
    description: Group of the written files.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Inflates and verifies everything, reports what would change, writes nothing.
  diff_mode:
    support: full
    details: Shows per binary C(name sha256) before and after.
  platform:
    platforms: posix
requirements:
  - zstandard >= 0.25, only for k3s executables
notes:
  - A stripped B(legacy) k0s (v1.35 and earlier) has no fallback to C(PATH); it only works when each
    C(<data-dir>/bin/<name>) (following symlinks) has exactly the embedded size and exactly the executable's mtime.
    Keep O(pin_mtime) on and give the installed executable the same mtime (RV(pinned_mtime_ns)).
  - A stripped B(zip-format) k0s uses an existing C(<data-dir>/bin/<name>) or finds the binary on C(PATH).
  - At least one of O(dest), O(stripped_executable) or O(streams_dest) is required; use M(fleetsplit.k0s.payload_info)
    to only look.
seealso:
  - module: fleetsplit.k0s.payload_info
  - module: fleetsplit.k0s.k0s_release
author:
  - fleetsplit.k0s contributors (@fleetsplit)
'''

EXAMPLES = r'''
- name: Split k0s on the controller
  fleetsplit.k0s.payload_split:
    src: /srv/k0s/k0s-v1.36.3+k0s.0-amd64
    dest: /srv/k0s/split/libexec
    stripped_executable: /srv/k0s/split/bin/k0s
  delegate_to: localhost
  run_once: true
  register: k0s_split

- name: Also prepare compressed streams for hosts
  fleetsplit.k0s.payload_split:
    src: ./k0s
    stripped_executable: ./out/k0s
    streams_dest: ./out/streams
'''

RETURN = r'''
format:
  description: Payload format (C(zip), C(legacy), or C(k3s)).
  returned: success
  type: str
  sample: zip
k3s_version:
  description: k3s version (from the recorded C(-ldflags), else the read-only data), or null.
  returned: when format is k3s
  type: str
  sample: v1.31.4+k3s1
data_hash:
  description: The archive's sha256, the directory name k3s uses under C(<data-dir>/data/).
  returned: when format is k3s
  type: str
archive:
  description: The embedded C(embed/<sha256>.tar.zst) (C(name), C(offset), C(length), C(sha256)), verified.
  returned: when format is k3s
  type: dict
members:
  description:
    - Every tar member of a k3s archive, sorted by C(path) (C(./) removed), with C(type) (C(file), C(dir),
      C(symlink)), C(mode), C(size) and C(sha256) (files), C(target) (symlinks).
  returned: when format is k3s
  type: list
  elements: dict
data_dir:
  description: With O(dest) for k3s, C(path) of C(data/<hash>) and whether it, its links or C(current) C(changed).
  returned: when format is k3s and O(dest) is set
  type: dict
payload_offset:
  description: Offset where the payload starts, equal to the stripped executable's size.
  returned: success
  type: int
  sample: 98234368
payload_size:
  description: Bytes of payload after the ELF image.
  returned: success
  type: int
k0s_version:
  description: k0s version string found in the program, or null.
  returned: success
  type: str
  sample: v1.36.3+k0s.0
elf_machine:
  description: Architecture of the executable, spelled like C(uname -m) (C(x86_64), C(aarch64), ...).
  returned: success
  type: str
pinned_mtime:
  description: The source executable's mtime in seconds; legacy k0s needs its staged binaries to carry it.
  returned: success
  type: int
pinned_mtime_ns:
  description: The same, in nanoseconds.
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
    size: {description: Inflated size in bytes., type: int}
    sha256: {description: sha256 of the inflated binary., type: str}
    crc32: {description: CRC-32 recorded in the payload and verified., type: int}
    compressed_size: {description: Size of the raw compressed stream in the payload., type: int}
    path: {description: "Written file, or null without O(dest).", type: str}
    stream: {description: "Gzip stream file, with O(streams_dest).", type: str}
    stream_size: {description: Size of the gzip stream file., type: int}
    stream_sha256: {description: sha256 of the gzip stream file (derived from O(src) in this run)., type: str}
    changed: {description: Whether this binary (or its stream) was written or re-timed., type: bool}
images:
  description: One item per image bundle (zip entries C(images/<name>)); empty for payloads without any.
  returned: success
  type: list
  elements: dict
  contains:
    name: {description: Base name (C(images/) removed)., type: str}
    size: {description: Size in bytes., type: int}
    sha256: {description: sha256 (derived from O(src) in this run)., type: str}
    crc32: {description: CRC-32 recorded in the payload and verified., type: int}
    compressed_size: {description: Size of its data in the payload., type: int}
    path: {description: "Written file in O(images_dest), or null without it.", type: str}
    changed: {description: Whether it was (or would be) written., type: bool}
stripped_executable:
  description: The executable without payload.
  returned: success
  type: dict
  contains:
    path: {description: Written file or null., type: str}
    size: {description: Size in bytes., type: int}
    sha256: {description: sha256., type: str}
    crc32: {description: CRC-32., type: int}
    stream: {description: C(bin/k0s.gz) with O(streams_dest)., type: str}
    stream_size: {description: Its size., type: int}
    stream_sha256: {description: Its sha256., type: str}
legacy_note:
  description: For the legacy format, what a stripped executable needs at run time.
  returned: when format is legacy
  type: str
manifest:
  description: Path of C(manifest.json) in O(streams_dest).
  returned: with O(streams_dest)
  type: str
healed:
  description:
    - Outputs that existed with other bytes than O(src) gives (a damaged or edited cache entry) and were rewritten
      from O(src) (in check mode, would be). A warning names them.
  returned: success
  type: list
  elements: str
retimed:
  description: Outputs whose content was right but whose mtime was not the pinned one; re-timed (check mode, would be).
  returned: success
  type: list
  elements: str
private_dirs:
  description: What was done to each of O(private_dirs) (C(created), C(tightened) or C(ok)).
  returned: with O(private_dirs)
  type: dict
pruned:
  description: Cache entries (and downloads) removed by O(retain).
  returned: with O(retain)
  type: list
  elements: str
'''

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import (
    FORMAT_LEGACY, PayloadError, check_output_file, ensure_private_dir,
    inspect, mark_used, prune_cache, sha256_file, split)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import atomic_write

LEGACY_NOTE = ("legacy payload: the stripped k0s re-uses <data-dir>/bin/<name> only when its size and mtime equal the "
               "executable's exactly (there is no PATH fallback); give all binaries and the executable pinned_mtime_ns")


def _before(paths):
    """sha256 of what is on disk now, for the diff."""
    state = {}
    for name, path in paths:
        if path and os.path.isfile(path) and not os.path.islink(path):
            state[name] = sha256_file(path)
    return state


def _lines(state):
    return "".join("%s %s\n" % (name, digest) for name, digest in sorted(state.items()))


def _private_dirs(module, dirs):
    """Each of ``dirs`` private to us (created 0700, tightened or refused); one warning for all tightened."""
    done = {}
    try:
        for path in dirs:
            done[path] = ensure_private_dir(path, write=not module.check_mode) or "ok"
    except PayloadError as e:
        module.fail_json(msg=str(e), private_dirs=done)
    except OSError as e:
        module.fail_json(msg="cannot prepare controller cache directory %s: %s" % (e.filename, e.strerror))
    tightened = sorted(p for p, what in done.items() if what == "tightened")
    if tightened:
        plural = len(tightened) > 1
        module.warn("controller cache director%s %s %s readable by other users; tightened to mode 0700 (the cache "
                    "decides what every host installs as root)%s"
                    % ("ies" if plural else "y", ", ".join(tightened), "were" if plural else "was",
                       " (check mode: not yet)" if module.check_mode else ""))
    return done


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type='path'),
            dest=dict(type='path'),
            stripped_executable=dict(type='path'),
            streams_dest=dict(type='path'),
            images_dest=dict(type='path'),
            pin_mtime=dict(type='bool', default=True),
            reuse_manifest=dict(type='bool', default=False),
            private_dirs=dict(type='list', elements='path'),
            retain=dict(type='int', default=0),
            workers=dict(type='int', default=2),
            mode=dict(type='raw', default='0755'),
            owner=dict(type='str'),
            group=dict(type='str'),
        ),
        required_by={'dest': 'src', 'stripped_executable': 'src', 'streams_dest': 'src', 'images_dest': 'src'},
        supports_check_mode=True,
    )
    p = module.params
    if p['workers'] < 1:
        module.fail_json(msg="workers must be at least 1, got %d" % p['workers'])
    if p['retain'] < 0 or (p['retain'] and not p['streams_dest']):
        module.fail_json(msg="retain must be 0 (keep all) or more and needs streams_dest (in <cache>/split/<sha256>/), "
                         "got %d" % p['retain'])
    mode = int(p['mode'], 8) if isinstance(p['mode'], str) else int(p['mode'])
    if p['reuse_manifest']:
        module.warn("payload_split reuse_manifest is deprecated and ignored: every run derives the facts from src "
                    "and verifies the outputs against them")
    dirs = _private_dirs(module, p['private_dirs']) if p['private_dirs'] else None
    if p['src'] is None:
        if not dirs:
            module.fail_json(msg="src is required (or private_dirs alone, to only prepare the cache directories)")
        module.exit_json(changed=any(v != "ok" for v in dirs.values()), private_dirs=dirs)
    if not (p['dest'] or p['stripped_executable'] or p['streams_dest'] or p['images_dest']):
        module.fail_json(msg="one of the following is required: dest, stripped_executable, streams_dest, images_dest")

    try:
        names = [e.name for e in inspect(p['src']).entries] if module._diff else []
        watched = [(n, os.path.join(p['dest'], n) if p['dest'] else None) for n in names]
        watched.append(('k0s (stripped)', p['stripped_executable']))
        before = _before(watched) if module._diff else {}
        result = split(p['src'], dest=p['dest'], stripped_executable=p['stripped_executable'],
                       streams_dest=p['streams_dest'], mode=mode, workers=p['workers'],
                       write=not module.check_mode, pin_mtime=p['pin_mtime'], images_dest=p['images_dest'])
    except PayloadError as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg="splitting %s failed: %s" % (p['src'], e))

    changed = any(f['changed'] for f in result['files'] + result['images']) or result['stripped_executable']['changed'] \
        or result.get('data_dir', {}).get('changed', False)
    outputs = [f['path'] for f in result['files'] if f['path']]
    if p['stripped_executable']:
        outputs.append(p['stripped_executable'])
    if not module.check_mode or not changed:
        for path in outputs:
            if os.path.exists(path):
                file_args = module.load_file_common_arguments(dict(path=path, mode=mode, owner=p['owner'],
                                                                   group=p['group']))
                changed = module.set_fs_attributes_if_different(file_args, changed)

    if result['format'] == FORMAT_LEGACY:
        result['legacy_note'] = LEGACY_NOTE
    if p['streams_dest'] and not module.check_mode:
        manifest = os.path.join(p['streams_dest'], 'manifest.json')
        # Written for people and tools; never read back as a source of facts. Per-run flags (and the engine
        # this run used: any engine gives the same files) stay out.
        stable = dict((k, v) for k, v in result.items() if k not in ('healed', 'retimed', 'deflate_engine', 'data_dir'))
        stable.update(files=[dict((k, v) for k, v in f.items() if k != 'changed') for f in result['files']],
                      images=[dict((k, v) for k, v in i.items() if k != 'changed') for i in result['images']],
                      stripped_executable=dict((k, v) for k, v in result['stripped_executable'].items()
                                               if k != 'changed'))
        body = json.dumps(stable, indent=2, sort_keys=True) + "\n"
        try:
            if check_output_file(manifest) is None or sha256_file(manifest) != hashlib.sha256(body.encode()).hexdigest():
                atomic_write(manifest, body.encode())
                changed = True
        except (PayloadError, OSError) as e:
            module.fail_json(msg="cannot write %s: %s" % (manifest, e))
        result['manifest'] = manifest
    if result['healed']:
        module.warn("existing outputs did not match %s (damaged or edited since they were written): %s %s rewritten "
                    "from the executable" % (p['src'], ", ".join(result['healed']),
                                             "would be" if module.check_mode else "were"))
    if p['retain'] and not module.check_mode:
        entry = os.path.dirname(os.path.abspath(p['streams_dest']))
        # The split itself succeeded: a pruning problem is worth a warning, not a failed play.
        result['pruned'] = []
        try:
            mark_used(entry, p['src'])
            result['pruned'] = prune_cache(entry, p['retain'])
        except (PayloadError, OSError) as e:
            module.warn("controller cache retention in %s did not complete: %s" % (os.path.dirname(entry), e))
        changed = changed or bool(result['pruned'])
    if dirs is not None:
        result['private_dirs'] = dirs
        changed = changed or any(v != "ok" for v in dirs.values())
    if module._diff:
        after = dict((f['name'], f['sha256']) for f in result['files'] if p['dest'])
        if p['stripped_executable']:
            after['k0s (stripped)'] = result['stripped_executable']['sha256']
        result['diff'] = dict(before=_lines(before), after=_lines(after),
                              before_header=p['dest'] or p['src'], after_header=p['dest'] or p['src'])
    module.exit_json(changed=changed, **result)


if __name__ == '__main__':
    main()
