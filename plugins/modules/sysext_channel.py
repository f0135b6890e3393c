#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: sysext_channel
short_description: Keep a systemd-sysupdate channel of k0s sysext images (images, SHA256SUMS, transfer file)
version_added: "0.4.0"
description:
  - Maintains a directory meant to be served over HTTP as a systemd-sysupdate source for the k0s sysext
    images C(deploy_k0s) builds with C(k0s_overlay_format=sysext) (docs/sysext.md).
  - With O(image), copies it in as C(<name>-<version>-<arch>.raw) (flatcar/sysext-bakery's naming), only when
    the channel does not hold those bytes already (sha256), through a temporary file and a rename.
  - Writes C(SHA256SUMS) (C(<sha256>  <file>) per image of O(name), sorted; other files are not listed) and
    C(<name>.conf), a sysupdate.d transfer definition (C(Type=url-file) source, C(regular-file) target,
    C(InstancesMax), C(CurrentSymlink=/etc/extensions/<name>.raw)); systemd 257 and later also read it renamed to
    C(<name>.transfer). Each only when its content changes, through a temporary file and a rename.
  - Every check (name, URL, target directory, version, architecture, the directory) runs before the first write.
  - Runs on the controller (or wherever the channel directory is), standard library only.
options:
  dir:
    description: The channel directory (must exist, not a symlink).
    type: path
    required: true
  url:
    description:
      - The URL the directory is served at (C(http://) or C(https://), no whitespace, control characters, query
        or fragment); C(/) is appended when missing. Goes to the transfer file's C([Source] Path=).
    type: str
    required: true
  name:
    description: The extension name (the image's C(extension-release.<name>)).
    type: str
    default: k0s
  image:
    description: A sysext image to add to the channel.
    type: path
  version:
    description:
      - The k0s version of O(image), for example C(v1.36.3+k0s.0); required with O(image). It must be a valid
        sysupdate version (C(A-Za-z0-9.,_-+)).
    type: str
  architecture:
    description:
      - The architecture of O(image) in systemd's spelling (C(x86-64), C(arm64)) or as an ELF machine
        (C(x86_64), C(EM_AARCH64)); required with O(image).
    type: str
  target_dir:
    description:
      - Where systemd-sysupdate keeps the images on a host (C([Target] Path=)); not a directory systemd-sysext
        merges from, since the instances are named by version and only the C(CurrentSymlink) is merged.
    type: str
    default: /var/lib/extensions.d
  instances_max:
    description: How many images sysupdate keeps on a host (at least 2, the current one and one to roll back to).
    type: int
    default: 3
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be copied and written; writes nothing.
  diff_mode:
    support: full
    details: Before and after of SHA256SUMS and the transfer file.
  platform:
    platforms: posix
notes:
  - C(Verify=false) in the transfer file because C(SHA256SUMS) is not signed; sysupdate still checks every
    downloaded image against it. Sign it (C(SHA256SUMS.gpg)) and set C(Verify=true) for a trusted channel.
seealso:
  - name: sysupdate.d(5)
    description: The transfer definition format systemd-sysupdate reads.
    link: https://www.freedesktop.org/software/systemd/man/latest/sysupdate.d.html
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Publish the sysext in the channel
  fleetsplit.k0s.sysext_channel:
    dir: /srv/www/k0s-sysext
    url: https://images.example.com/k0s-sysext/
    image: out/k0s.raw
    version: v1.36.3+k0s.0
    architecture: x86-64
"""

RETURN = r"""
image_file:
  description: The image's name in the channel (null without O(image)).
  returned: success
  type: str
  sample: k0s-v1.36.3+k0s.0-x86-64.raw
image_sha256:
  description: sha256 of O(image).
  returned: when O(image) is given
  type: str
sha256sums:
  description: The content of C(SHA256SUMS).
  returned: success
  type: str
transfer:
  description: The content of the transfer file C(<name>.conf).
  returned: success
  type: str
written:
  description: The files (re)written (or that would be in check mode).
  returned: success
  type: list
  elements: str
  sample: [k0s-v1.36.3+k0s.0-x86-64.raw, SHA256SUMS, k0s.conf]
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.image_sysupdate import (
    SUMS, ChannelError, plan_channel, sha256sums)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import atomic_write, unlink_quietly
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import (
    file_sha256_if_regular, sha256_file, temp_path)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return ""


def copy_image(src, dest, digest):
    tmp = temp_path(dest)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        if sha256_file(tmp) != digest:
            raise ChannelError("%s changed while it was copied into the channel: re-run" % src)
        os.rename(tmp, dest)
    except BaseException:
        unlink_quietly(tmp)
        raise


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            url=dict(type="str", required=True),
            name=dict(type="str", default="k0s"),
            image=dict(type="path"),
            version=dict(type="str"),
            architecture=dict(type="str"),
            target_dir=dict(type="str", default="/var/lib/extensions.d"),
            instances_max=dict(type="int", default=3),
        ),
        required_by=dict(image=["version", "architecture"]),
        supports_check_mode=True,
    )
    p = module.params
    directory = os.path.abspath(p["dir"])
    try:
        plan = plan_channel(directory, p["name"], p["url"], p["target_dir"], p["instances_max"], p["image"],
                            p["version"], p["architecture"])
        written, planned = [], {}
        if plan["image_file"]:
            dest = os.path.join(directory, plan["image_file"])
            planned[plan["image_file"]] = plan["image_sha256"]
            if file_sha256_if_regular(dest) != plan["image_sha256"]:
                written.append(plan["image_file"])
                if not module.check_mode:
                    copy_image(p["image"], dest, plan["image_sha256"])
        files = [(SUMS, sha256sums(directory, plan["name"], planned)), (plan["name"] + ".conf", plan["conf"])]
        diffs = []
        for filename, text in files:
            path = os.path.join(directory, filename)
            before = read_text(path)
            if before != text or os.path.islink(path):
                written.append(filename)
                diffs.append(dict(before_header=path, after_header=path, before=before, after=text))
                if not module.check_mode:
                    atomic_write(path, text.encode("utf-8"), 0o644)
    except (ChannelError, PayloadError) as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg="%s: %s" % (getattr(e, "filename", None) or directory, e.strerror or e))
    module.exit_json(changed=bool(written), written=written, image_file=plan["image_file"],
                     image_sha256=plan["image_sha256"], sha256sums=files[0][1], transfer=files[1][1],
                     diff=diffs)


if __name__ == "__main__":
    main()
