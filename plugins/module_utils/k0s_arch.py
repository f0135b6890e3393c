# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Architecture keys of a mixed fleet: Go's spelling (amd64, arm64, arm), the one k0s names its release
assets with (k0s-<version>-<key>). Hosts report a machine in uname spelling (ansible_facts.architecture,
the release query's host.architecture); payload_split reports the executable's ELF machine in the same
spelling (or pyelftools' EM_*). k0s's own Makefile maps uname -m the same way (aarch64/arm64 -> arm64,
armv8l/armv7l/arm -> arm, x86_64/amd64 -> amd64).

Pure Python, no Ansible import: parses on Python 3.6."""

# The architectures k0s ships release assets for, in a fixed order for messages.
KEYS = ("amd64", "arm64", "arm")

_MACHINES = {
    "x86_64": "amd64", "amd64": "amd64", "EM_X86_64": "amd64",
    "aarch64": "arm64", "arm64": "arm64", "EM_AARCH64": "arm64",
    # armv8l: a 32-bit userland on a 64-bit ARM core runs the 32-bit build.
    "armv7l": "arm", "armv6l": "arm", "armv8l": "arm", "armhf": "arm", "arm": "arm", "EM_ARM": "arm",
}


def goarch(machine):
    """The architecture key (amd64, arm64, arm) of a host or ELF machine; ValueError naming it when unknown."""
    key = _MACHINES.get(str(machine).strip()) if machine is not None else None
    if key is None:
        raise ValueError("unknown machine %r: k0s ships %s only (machines %s)"
                         % (machine, ", ".join(KEYS), ", ".join(sorted(_MACHINES))))
    return key


def host_keys(machines, configured=None):
    """Each host's key, and the hosts no executable serves.

    ``machines``: {host: machine or None (not known)}. ``configured``: the keys with an executable
    (k0s_executables' keys), or None when any key k0s ships can be downloaded.
    Returns {"by_host": {host: key}, "missing": ["host (machine -> key)", ...]} (missing sorted by host;
    a host whose machine is unknown or unmapped is missing with key "?")."""
    available = set(KEYS if configured is None else configured)
    keys = {}
    missing = []
    for host in sorted(machines):
        machine = machines[host]
        try:
            key = goarch(machine)
        except ValueError:
            key = None
        if key is not None and key in available:
            keys[host] = key
        else:
            missing.append("%s (%s -> %s)" % (host, machine if machine else "unknown machine", key or "?"))
    return {"by_host": keys, "missing": missing}
