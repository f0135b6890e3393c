"""k0s_arch: the architecture key (Go's spelling, as k0s names its release assets) of hosts and executables, and
which hosts of a mixed fleet no executable serves. Machines as hosts report them (uname -m, ansible_architecture)
and as payload_split reports a real executable's ELF header."""
import platform

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.fleetsplit.k0s.plugins.filter.k0s_architecture import FilterModule, k0s_goarch
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_arch
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import elf as payload_elf


# k0s's Makefile (HOST_ARCH from uname -m) maps these the same way.
@pytest.mark.parametrize("machine,key", [
    ("x86_64", "amd64"), ("amd64", "amd64"), ("EM_X86_64", "amd64"),
    ("aarch64", "arm64"), ("arm64", "arm64"), ("EM_AARCH64", "arm64"),
    ("armv7l", "arm"), ("armv6l", "arm"), ("armv8l", "arm"), ("armhf", "arm"), ("arm", "arm"), ("EM_ARM", "arm"),
])
def test_goarch_maps_host_and_elf_machines(machine, key):
    assert k0s_arch.goarch(machine) == key
    assert k0s_goarch(machine) == key


@pytest.mark.parametrize("machine", ["riscv64", "i686", "ppc64le", "", None, "x86-64"])
def test_goarch_refuses_an_unknown_machine_naming_it(machine):
    with pytest.raises(ValueError) as e:
        k0s_arch.goarch(machine)
    assert repr(machine) in str(e.value) and "amd64, arm64, arm" in str(e.value)
    with pytest.raises(AnsibleFilterError, match="unknown machine"):
        k0s_goarch(machine)
    assert k0s_goarch(machine, "?") == "?"


def test_this_machine_and_its_executables_share_a_key(fixtures):
    """What the host reports (uname -m) and what payload_split reads from a real k0s agree on the key."""
    here = k0s_arch.goarch(platform.machine())
    path = fixtures["k0s-small-zip"]["path"]
    with open(path, "rb") as f:
        machine = payload_elf.elf_machine(payload_elf.open_elf(f, path))
    assert k0s_arch.goarch(machine) == here == "amd64"


def test_host_keys_lists_every_host_without_an_executable():
    machines = {"c1": "x86_64", "w1": "aarch64", "w2": "armv7l", "w3": "riscv64", "w4": None}
    got = k0s_arch.host_keys(machines, ["amd64", "arm64"])
    assert got["by_host"] == {"c1": "amd64", "w1": "arm64"}
    assert got["missing"] == ["w2 (armv7l -> arm)", "w3 (riscv64 -> ?)", "w4 (unknown machine -> ?)"]


def test_host_keys_downloading_serves_every_shipped_key():
    got = k0s_arch.host_keys({"a": "x86_64", "b": "aarch64", "c": "armv6l", "d": "s390x"})
    assert got["by_host"] == {"a": "amd64", "b": "arm64", "c": "arm"}
    assert got["missing"] == ["d (s390x -> ?)"]


def test_filters_are_registered():
    filters = FilterModule().filters()
    assert filters["k0s_goarch"]("aarch64") == "arm64"
    assert filters["k0s_host_arches"]({"h": "x86_64"}, ["arm64"])["missing"] == ["h (x86_64 -> amd64)"]
    assert "k0s_systemd_architecture" in filters
