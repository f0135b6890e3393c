# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

DOCUMENTATION = r"""
name: k0s_systemd_architecture
short_description: systemd's name of an ELF machine (x86-64, arm64, ...)
version_added: "0.4.0"
description:
  - Takes the C(elf_machine) that M(fleetsplit.k0s.payload_split) reports (C(x86_64), C(aarch64), or pyelftools'
    C(EM_X86_64)) and returns the spelling systemd uses in C(ARCHITECTURE=) and sysupdate's C(%a)
    (systemd src/basic/architecture.c), the one the sysext image and its update channel are named with.
  - An unknown machine is an error naming it.
positional: _input
options:
  _input:
    description: The ELF machine.
    type: str
    required: true
author:
  - fleetsplit.k0s maintainers (@fleetsplit)
"""

EXAMPLES = r"""
- name: Name a sysext image like its update channel does
  ansible.builtin.debug:
    msg: "k0s-{{ version }}-{{ 'x86_64' | fleetsplit.k0s.k0s_systemd_architecture }}.raw"   # k0s-...-x86-64.raw
"""

RETURN = r"""
_value:
  description: The architecture in systemd's spelling.
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.image_sysext import SysextError, systemd_architecture


def k0s_systemd_architecture(elf_machine):
    try:
        return systemd_architecture(elf_machine)
    except SysextError as e:
        raise AnsibleFilterError(str(e))


class FilterModule(object):
    def filters(self):
        return {"k0s_systemd_architecture": k0s_systemd_architecture}
