#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: k0s_backup_store
short_description: The controller's store of age-encrypted k0s backups - check, record with retention, verify and decrypt
version_added: "0.5.0"
description:
  - Runs on the controller (delegate it to C(localhost)). Logic in C(plugins/module_utils/k0s_backup.py) and
    C(k0s_age.py); layout and key handling in C(docs/backup.md).
  - O(state=check) refuses an empty or malformed O(recipients) (age X25519 public keys C(age1...)) and creates or
    repairs O(dir) (0700) and its C(.incoming/); returns the recipients' fingerprints.
  - O(state=present) takes a backup fetched into C(<dir>/.incoming/) (O(src)); its sha256 must equal O(host_sha256)
    (what the host computed) and it must carry the age header; it is renamed to
    C(k0s-backup-<UTC time>-<host>-<sha256[:12]>.tar.gz.age) (0600) beside C(<name>.sha256), recorded in C(index.json)
    (time, k0s version, host, sha256, size, recipients' fingerprints) and only the newest O(keep) backups are kept.
  - O(state=verify) picks O(name) (a file name in O(dir), or C(latest)) and checks size and sha256 against the index
    and the C(.sha256) file. O(state=decrypted) does the same, then decrypts it with the identities of
    O(identity_file) into O(dest_dir) (a private directory); a wrong identity, a changed header or payload (each age
    chunk's authentication tag) or a truncated file fails with its own message and leaves no plaintext.
options:
  state:
    description: What to do.
    type: str
    choices: [check, present, verify, decrypted]
    default: check
  dir:
    description: The backup store on the controller (created 0700 by O(state=check)).
    type: path
    required: true
  recipients:
    description: The age public keys (C(age1...)) backups are encrypted to (O(state=check), O(state=present)).
    type: list
    elements: str
    default: []
  src:
    description: The fetched file in C(<dir>/.incoming/) (O(state=present)).
    type: path
  host:
    description: The inventory name of the host the backup was taken on (O(state=present)).
    type: str
  host_sha256:
    description: The sha256 the host computed of the encrypted file (O(state=present)).
    type: str
  k0s_version:
    description: The version of the k0s that took the backup (O(state=present)).
    type: str
  keep:
    description: Backups kept (the newest); older ones in the index are removed (O(state=present)).
    type: int
    default: 5
  name:
    description: File name of a backup in O(dir), or C(latest) (O(state=verify), O(state=decrypted)).
    type: str
    default: latest
  identity_file:
    description:
      - An age identity file on the controller (C(AGE-SECRET-KEY-1...) lines, as age-keygen writes; mode 0600).
        Never copied anywhere, never logged (O(state=decrypted)).
    type: path
  dest_dir:
    description: A private (0700) directory for the plaintext archive (O(state=decrypted)).
    type: path
requirements:
  - cryptography (ansible-core's own dependency) in the Python that runs the module on the controller
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: O(state=check) and O(state=verify) report what they would create or find; O(state=present) and
      O(state=decrypted) write nothing in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - name: The age format
    description: The file format the hosts' C(age) writes and this module reads.
    link: https://age-encryption.org/v1
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Check the recipients and create the store
  fleetsplit.k0s.k0s_backup_store:
    state: check
    dir: /srv/k0s-backups
    recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
  delegate_to: localhost
  run_once: true

- name: Verify and decrypt the newest backup
  fleetsplit.k0s.k0s_backup_store:
    state: decrypted
    dir: /srv/k0s-backups
    name: latest
    identity_file: /root/.config/age/k0s-backup.key
    dest_dir: "{{ private_tmp.path }}"
  delegate_to: localhost
"""

RETURN = r"""
fingerprints:
  description: The recipients' fingerprints (sha256 of the key string, 16 hex digits).
  returned: state=check or state=present
  type: list
  elements: str
backup:
  description: The index entry (name, time, host, k0s_version, sha256, size, recipients).
  returned: state=present, verify, decrypted
  type: dict
removed:
  description: Backups removed by retention.
  returned: state=present
  type: list
  elements: str
path:
  description: The plaintext archive (state=decrypted) or the encrypted file (state=verify).
  returned: state=verify, decrypted
  type: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_backup
    IMPORT_ERROR = None
except ImportError:  # pragma: no cover
    IMPORT_ERROR = traceback.format_exc()


def run(module):
    p = module.params
    state, store = p["state"], p["dir"]
    if state == "check":
        fingerprints = k0s_backup.check_recipients(p["recipients"])
        changed = k0s_backup.ensure_store(store, module.check_mode)
        return dict(changed=changed, fingerprints=fingerprints)
    if state == "present":
        for key in ("src", "host", "host_sha256", "k0s_version"):
            if not p[key]:
                module.fail_json(msg="state=present needs %s" % key)
        fingerprints = k0s_backup.check_recipients(p["recipients"])
        if module.check_mode:
            return dict(changed=True, fingerprints=fingerprints, removed=[])
        k0s_backup.ensure_store(store)
        entry, removed = k0s_backup.record(store, p["src"], p["host"], p["k0s_version"], p["host_sha256"],
                                           fingerprints, p["keep"])
        return dict(changed=True, fingerprints=fingerprints, backup=entry, removed=removed)
    entry = k0s_backup.select(store, p["name"])
    if state == "verify" or module.check_mode:
        return dict(changed=False, backup=entry, path=k0s_backup.verify(store, entry))
    if not p["identity_file"] or not p["dest_dir"]:
        module.fail_json(msg="state=decrypted needs identity_file and dest_dir")
    path = k0s_backup.decrypt_to(store, entry, p["identity_file"], p["dest_dir"])
    return dict(changed=True, backup=entry, path=path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="check", choices=["check", "present", "verify", "decrypted"]),
            dir=dict(type="path", required=True),
            recipients=dict(type="list", elements="str", default=[]),
            src=dict(type="path"),
            host=dict(type="str"),
            host_sha256=dict(type="str"),
            k0s_version=dict(type="str"),
            keep=dict(type="int", default=5),
            name=dict(type="str", default="latest"),
            identity_file=dict(type="path", no_log=False),
            dest_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="fleetsplit.k0s module_utils k0s_backup could not be imported", exception=IMPORT_ERROR)
    try:
        module.exit_json(**run(module))
    except k0s_backup.BackupError as exc:
        module.fail_json(msg=str(exc))
    except ImportError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
