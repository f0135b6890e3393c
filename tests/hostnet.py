"""Keep test traffic on this machine: check the route to a test host before connecting to it.

The ssh-based tests (molecule's byte and upgrade scenarios, fleetlab.py, the fleet benchmark) connect to
the podman test hosts' addresses on the project's internal network (scripts/prepare-test-hosts). Where
that works depends on the network backend a machine has: netavark gives the bridge its gateway address,
but a fresh Debian 12 `apt-get install podman` brings the CNI backend, whose internal network leaves
the bridge without an address. The kernel then routes the hosts' addresses through the default route:
connections leave the machine (docs/testing.md, "Test traffic stays here").

`ensure_routes(addresses)` therefore
1. refuses an address outside the project network's subnet,
2. gives the network's bridge its gateway address when the backend left it without one (the bridge
   exists once a container is attached, so call this after the hosts are up),
3. pins the bridge's MAC address: a Linux bridge whose address nobody set takes the lowest MAC of its ports,
   so a container leaving or joining the network (the pull scenario's mirror going away mid-run) can change the
   controller's MAC under the hosts' ARP caches, and every live ssh connection stalls until ARP notices
   (measured: two minutes). Setting it to its current value keeps it (addr_assign_type 3 = set);
4. asks the kernel (`ip route get`) where each address goes and refuses unless it is that bridge.

    python3 tests/hostnet.py 10.89.77.31 10.89.77.32     # exit 0: every route is the bridge; 1: refused

Standard library only; needs root for step 2.
"""
import ipaddress
import json
import subprocess
import sys

NETWORK = "fleetsplit-test"


class RouteRefused(Exception):
    pass


def _run(argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if p.returncode != 0:
        raise RouteRefused("`%s` failed (%d): %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p.stdout


def network_info(network=NETWORK):
    """(bridge interface, subnet, gateway) of the podman network; refuses a network that is not internal."""
    data = json.loads(_run(["podman", "network", "inspect", network]))[0]
    if not data.get("internal"):
        raise RouteRefused("podman network %s is not --internal; recreate it with scripts/prepare-test-hosts" % network)
    subnets = data.get("subnets") or []
    if len(subnets) != 1 or not data.get("network_interface"):
        raise RouteRefused("podman network %s: expected one subnet and a bridge interface, got %r" % (network, data))
    subnet = ipaddress.ip_network(subnets[0]["subnet"])
    gateway = ipaddress.ip_address(subnets[0]["gateway"])
    return data["network_interface"], subnet, gateway


def bridge_addresses(bridge):
    """IPv4 addresses on the bridge, or None when the bridge does not exist (no container attached yet)."""
    p = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", bridge],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if p.returncode != 0:
        return None
    links = json.loads(p.stdout or "[]")
    return [ipaddress.ip_address(a["local"]) for link in links for a in link.get("addr_info", [])]


def pin_bridge_mac(bridge, log=print):
    """Keep the bridge's MAC from following its ports (see the module docstring); a no-op once set."""
    base = "/sys/class/net/%s/" % bridge
    with open(base + "addr_assign_type") as f:
        if f.read().strip() == "3":   # NET_ADDR_SET: already fixed
            return
    with open(base + "address") as f:
        mac = f.read().strip()
    _run(["ip", "link", "set", "dev", bridge, "address", mac])
    log("hostnet: pinned bridge %s to its MAC %s (a container leaving would change it under live connections)"
        % (bridge, mac))


def route_device(address):
    routes = json.loads(_run(["ip", "-j", "route", "get", str(address)]))
    return routes[0].get("dev") if routes else None


def ensure_routes(addresses, network=NETWORK, log=print):
    bridge, subnet, gateway = network_info(network)
    targets = [ipaddress.ip_address(a) for a in addresses]
    outside = [str(a) for a in targets if a not in subnet or a == gateway]
    if outside:
        raise RouteRefused("not a test host address of %s (%s): %s" % (network, subnet, ", ".join(outside)))
    have = bridge_addresses(bridge)
    if have is None:
        raise RouteRefused("bridge %s of %s does not exist: start the hosts before connecting" % (bridge, network))
    if gateway not in have:
        _run(["ip", "addr", "add", "%s/%d" % (gateway, subnet.prefixlen), "dev", bridge])
        log("hostnet: gave bridge %s its gateway address %s/%d (the network backend left it without one)"
            % (bridge, gateway, subnet.prefixlen))
    pin_bridge_mac(bridge, log)
    wrong = ["%s -> %s" % (a, dev) for a, dev in ((a, route_device(a)) for a in targets) if dev != bridge]
    if wrong:
        raise RouteRefused("route does not go to the project bridge %s, refusing to connect: %s"
                           % (bridge, "; ".join(wrong)))
    return bridge


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        bridge = ensure_routes(argv)
    except RouteRefused as e:
        print("hostnet: refused: %s" % e, file=sys.stderr)
        return 1
    print("hostnet: %d address(es) route to bridge %s of %s" % (len(argv), bridge, NETWORK))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
