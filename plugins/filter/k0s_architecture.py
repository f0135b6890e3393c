# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)

# Three filters, documented beside this file (k0s_systemd_architecture.yml, k0s_goarch.yml, k0s_host_arches.yml).

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.module_utils.image_sysext import SysextError, systemd_architecture
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_arch import goarch, host_keys


def k0s_systemd_architecture(elf_machine):
    try:
        return systemd_architecture(elf_machine)
    except SysextError as e:
        raise AnsibleFilterError(str(e))


def k0s_goarch(machine, default=None):
    """Go's key (amd64, arm64, arm) of a host or ELF machine; ``default`` instead of an error when unknown."""
    try:
        return goarch(machine)
    except ValueError as e:
        if default is not None:
            return default
        raise AnsibleFilterError(str(e))


def k0s_host_arches(machines, configured=None):
    """{"by_host": {host: key}, "missing": ["host (machine -> key)", ...]} for {host: machine}."""
    return host_keys(machines, configured)


class FilterModule(object):
    def filters(self):
        return {"k0s_systemd_architecture": k0s_systemd_architecture, "k0s_goarch": k0s_goarch,
                "k0s_host_arches": k0s_host_arches}
