"""tests/hostnet.py, the check every ssh-based test makes before connecting to a test host.

Runs against the real podman network of scripts/prepare-test-hosts (skipped, saying so, where it does not exist).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hostnet  # noqa: E402


def _network_exists():
    return shutil.which("podman") and subprocess.run(
        ["podman", "network", "exists", hostnet.NETWORK], check=False).returncode == 0


pytestmark = pytest.mark.skipif(not _network_exists(),
                                reason="podman network %s missing (make test-hosts)" % hostnet.NETWORK)


@pytest.mark.parametrize("address", ["192.0.2.10", "10.89.78.5", "8.8.8.8", "127.0.0.1"])
def test_addresses_outside_the_project_network_are_refused(address):
    with pytest.raises(hostnet.RouteRefused, match="not a test host address"):
        hostnet.ensure_routes([address], log=lambda m: None)


def test_the_gateway_itself_is_not_a_host():
    dummy, dummy, gateway = hostnet.network_info()
    with pytest.raises(hostnet.RouteRefused, match="not a test host address"):
        hostnet.ensure_routes([str(gateway)], log=lambda m: None)


def test_cli_refuses_with_exit_1_and_names_the_address():
    p = subprocess.run([sys.executable, str(Path(hostnet.__file__)), "203.0.113.7"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert p.returncode == 1
    assert "refused" in p.stderr and "203.0.113.7" in p.stderr


def test_a_host_address_routes_to_the_bridge_once_the_bridge_exists():
    bridge, subnet, dummy = hostnet.network_info()
    if hostnet.bridge_addresses(bridge) is None:
        pytest.skip("bridge %s not created yet (no test host has been started)" % bridge)
    address = str(subnet.network_address + 250)
    assert hostnet.ensure_routes([address], log=lambda m: None) == bridge
    assert hostnet.route_device(address) == bridge


def test_the_bridge_mac_is_pinned():
    """A container leaving the network must not change the controller's MAC under live connections."""
    bridge, subnet, dummy = hostnet.network_info()
    if hostnet.bridge_addresses(bridge) is None:
        pytest.skip("bridge %s not created yet (no test host has been started)" % bridge)
    hostnet.ensure_routes([str(subnet.network_address + 250)], log=lambda m: None)
    assert Path("/sys/class/net/%s/addr_assign_type" % bridge).read_text().strip() == "3"
