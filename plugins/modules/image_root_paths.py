#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: image_root_paths
short_description: Prove that the paths an image overlay writes stay inside its root, before anything is written
version_added: "0.3.0"
description:
  - Checks every path an image overlay is about to write below O(root) (as the image sees it, for example
    C(/usr/libexec/k0s/runc)) and returns where each lands on this machine. Nothing is written.
  - Each path is resolved twice, one component at a time. Once as C(openat2(2)) with C(RESOLVE_IN_ROOT) resolves
    it (absolute symlink targets and C(..) stay inside O(root), as after C(chroot)), once as a plain C(open()) on
    this machine resolves it. The path is refused when the plain resolution leaves O(root) at any step or ends
    somewhere else, as through an absolute symlink on the way (C(etc -> /etc)), or a relative one climbing above the root
    (C(etc/systemd -> ../../..)). The message names the path and the symlink that leads out.
  - Relative symlinks that stay inside the root are followed (merged C(/usr) images, C(bin -> usr/bin),
    C(var/run -> ../run)); the returned RV(host_paths) are the resolved paths the writers should be given.
  - Also refused, all before the first write, every problem in one message; root C(/) or a symlink chain that
    resolves to it; path values (O(variables) and O(paths)) that are not absolute and normalised, have C(.) or
    C(..) components or control characters; symlink loops; dangling symlinks on the way; a symlink, directory
    or other non-file where a regular file is written; anything but a symlink where a link is made.
  - Runs where the overlay is written (the controller, or the image build machine), standard library only.
options:
  root:
    description:
      - The overlay root, an absolute path. Its own symlinks are followed (it is the directory the user named);
        it must not resolve to C(/). It may not exist yet.
    type: str
    required: true
  paths:
    description: Every path the overlay writes, as the image sees it.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute, normalised path inside the image.
        type: str
        required: true
      kind:
        description:
          - V(dir) a directory created or written into (followed to the end); V(file) a regular file replaced by
            rename (the name itself must not be a symlink); V(link) a symlink the overlay makes (the name itself is
            not followed and must be absent or a symlink).
        type: str
        choices: [dir, file, link]
        default: file
      origin:
        description: The variable or role the path comes from, named in messages.
        type: str
      names:
        description:
          - The entry stands for one path per name, C(<path>/<name>), each of O(paths[].kind); names are single
            components (for example the embedded binaries below C(k0s_libexec_dir)).
        type: list
        elements: str
  variables:
    description:
      - Path variables (name and value) to check before the paths, so a message names the variable, for example
        C(k0s_libexec_dir=/../x).
    type: dict
    default: {}
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
notes:
  - The tree is checked, not locked. A tree that changes between this check and the writes is not covered, nor
    are mount points or hard links inside the root.
seealso:
  - name: openat2(2), RESOLVE_IN_ROOT
    description: The kernel's confinement this module emulates.
    link: https://man7.org/linux/man-pages/man2/openat2.2.html
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Check every path before writing the overlay
  fleetsplit.k0s.image_root_paths:
    root: /srv/images/edge/overlay
    variables:
      k0s_libexec_dir: "{{ k0s_libexec_dir }}"
    paths:
      - {path: "{{ k0s_libexec_dir }}", kind: dir, origin: k0s_libexec_dir}
      - {path: /etc/systemd/system/k0scontroller.service, kind: file, origin: fleetsplit.k0s.service}
      - {path: /etc/systemd/system/multi-user.target.wants/k0scontroller.service, kind: link}
  register: overlay_paths

- name: Write into the directory the check resolved
  ansible.builtin.copy:
    content: "hello\n"
    dest: "{{ overlay_paths.host_paths[k0s_libexec_dir] }}/README"
    mode: "0644"
"""

RETURN = r"""
root:
  description: The root's canonical path on this machine.
  returned: success
  type: str
  sample: /srv/images/edge/overlay
paths:
  description: One item per checked path, in the order given.
  returned: success
  type: list
  elements: dict
  contains:
    path: {description: The path inside the image., type: str}
    kind: {description: "V(dir), V(file) or V(link).", type: str}
    host_path: {description: "Where it lands on this machine (inside RV(root), relative links inside resolved).", type: str}
    exists: {description: Whether it exists already., type: bool}
    origin: {description: As given., type: str}
host_paths:
  description: The same as a mapping from the path inside the image to its host path.
  returned: success
  type: dict
  sample: {"/usr/bin/k0s": "/srv/images/edge/overlay/usr/bin/k0s"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_rootfs import RootfsError, check_write_paths


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="str", required=True),
            paths=dict(type="list", elements="dict", required=True, options=dict(
                path=dict(type="str", required=True),
                kind=dict(type="str", choices=["dir", "file", "link"], default="file"),
                origin=dict(type="str"),
                names=dict(type="list", elements="str"),
            )),
            variables=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        root, checked = check_write_paths(p["root"], p["paths"], p["variables"])
    except RootfsError as e:
        module.fail_json(msg=str(e))
    except OSError as e:   # e.g. a directory of the tree that cannot be read
        module.fail_json(msg="%s: %s" % (e.filename or p["root"], e.strerror or e))
    module.exit_json(changed=False, root=root, paths=checked,
                     host_paths=dict((c["path"], c["host_path"]) for c in checked))


if __name__ == "__main__":
    main()
