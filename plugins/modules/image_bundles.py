#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: image_bundles
short_description: Compress airgap image bundles into the controller cache and bundle what each host lacks
version_added: "0.4.0"
description:
  - With O(bundles) (tar files on the controller) each tar is hashed (size, CRC-32, sha256) and compressed once
    into C(<cache_dir>/<sha256>/image.tar.gz) (private directories, mode 0700); RV(images) is what
    M(fleetsplit.k0s.k0s_images) takes as C(images). The C(keep) most recently used entries stay.
  - With O(images) (an earlier RV(images)) and O(names_by_host) (each host's C(missing) from
    M(fleetsplit.k0s.k0s_images) C(state=query)) it writes one bundle per distinct set of names with
    C(write_bundle), the same content-addressed, one-file-per-host path as binaries (M(fleetsplit.k0s.stream_bundle)).
    Every cached stream is hashed and must match the sha256 recorded when it was compressed in this run or earlier.
  - Names must be plain base names ending in C(.tar); anything else is refused naming the file.
options:
  bundles:
    description: Tar files on the controller, in the order given. Their base names become the names in C(images/).
    type: list
    elements: path
  images:
    description: The RV(images) of an earlier run of this module (with O(names_by_host)).
    type: list
    elements: dict
  names_by_host:
    description: Host name to the names it lacks. Hosts with an empty list get no bundle.
    type: dict
  cache_dir:
    description: The controller cache for image streams and bundles (made private, mode 0700).
    type: path
    required: true
  keep:
    description:
      - How many unused cache entries to keep besides the ones used now; V(0) keeps all.
      - With O(bundles), compressed images; with O(names_by_host), per-host bundle files (the ones this run made always stay).
    type: int
    default: 2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Hashes the tars and reports what would be compressed; nothing is written.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Runs on the controller (C(delegate_to=localhost), C(run_once)).
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Compress the bundles once
  fleetsplit.k0s.image_bundles:
    bundles: [/srv/airgap/k0s-airgap-bundle-v1.36.1+k0s.0-linux-amd64.tar]
    cache_dir: ~/.cache/fleetsplit-k0s/images
  run_once: true
  delegate_to: localhost
  register: images

- name: One bundle per distinct set of missing names
  fleetsplit.k0s.image_bundles:
    images: "{{ images.images }}"
    names_by_host: "{{ {'worker1': ['k0s-airgap-bundle-v1.36.1+k0s.0-linux-amd64.tar']} }}"
    cache_dir: ~/.cache/fleetsplit-k0s/images
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
images:
  description: Each bundle as C(name), C(size), C(crc32), C(sha256) (of the tar), C(stream), C(stream_size), C(stream_sha256).
  returned: with O(bundles)
  type: list
  elements: dict
bundles:
  description: With O(names_by_host), every host that lacks something to its bundle (C(id), C(path), C(size), C(sha256), C(members)).
  returned: with O(names_by_host)
  type: dict
pruned:
  description: Cache entries (compressed images, or bundle files with O(names_by_host)) removed.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_images import ImageError, check_image_name
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import write_bundle
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import ensure_private_dir
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.image_cache import (
    image_stream,
    prune,
    prune_bundles,
)


def compress(module, p):
    seen = set()
    for src in p["bundles"]:
        name = check_image_name(os.path.basename(src), "k0s_airgap_bundles item %s" % src)
        if name in seen:
            raise ImageError("k0s_airgap_bundles: two files are named %s (each lands in images/ under its base "
                             "name); rename one" % name)
        seen.add(name)
        if not os.path.isfile(src):
            raise ImageError("k0s_airgap_bundles item %s is not a file on the controller" % src)
    write = not module.check_mode
    ensure_private_dir(p["cache_dir"], write=write)
    images = [image_stream(src, p["cache_dir"], write=write) for src in p["bundles"]]
    pruned = prune(p["cache_dir"], set(i["sha256"] for i in images), p["keep"] + len(images)) \
        if write and p["keep"] > 0 and os.path.isdir(p["cache_dir"]) else []
    module.exit_json(changed=any(i["changed"] for i in images), images=images, pruned=pruned)


def bundle(module, p):
    by_name = dict((i.get("name"), i) for i in p["images"] if isinstance(i, dict))
    made, out = {}, {}
    dest = os.path.join(p["cache_dir"], "bundles")
    for host, names in sorted(p["names_by_host"].items()):
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ImageError("names_by_host[%r] must be a list of names, got %r" % (host, names))
        key = tuple(sorted(set(names)))
        if not key:
            continue
        for n in key:
            if n not in by_name or not by_name[n].get("stream_sha256"):
                raise ImageError("%s lacks %s, which is not in images (with a stream): pass the images result of "
                                 "this module's run with bundles" % (host, n))
        if key not in made:
            made[key] = write_bundle([(n, by_name[n]["stream"], by_name[n]["stream_sha256"]) for n in key], dest,
                                     write=not module.check_mode)
        out[host] = made[key]
    pruned = prune_bundles(dest, set(b["id"] for b in made.values()), p["keep"]) \
        if not module.check_mode and p["keep"] > 0 else []
    module.exit_json(changed=any(b["changed"] for b in made.values()), bundles=out, pruned=pruned)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            bundles=dict(type="list", elements="path"),
            images=dict(type="list", elements="dict"),
            names_by_host=dict(type="dict"),
            cache_dir=dict(type="path", required=True),
            keep=dict(type="int", default=2),
        ),
        required_one_of=[("bundles", "images")],
        mutually_exclusive=[("bundles", "images")],
        required_together=[("images", "names_by_host")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["bundles"] is not None:
            compress(module, p)
        bundle(module, p)
    except (ImageError, PayloadError) as e:
        module.fail_json(msg=str(e))
    except (IOError, OSError) as e:
        module.fail_json(msg="%s: %s" % (getattr(e, "filename", None) or p["cache_dir"], e.strerror or e))


if __name__ == "__main__":
    main()
