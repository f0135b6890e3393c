"""The podman test hosts as controller-side test code uses them: one place for a shell line inside a host,
its eth0 receive counter, and the ssh key the byte-measuring runs log in with.

Used by extensions/molecule/shared/fleetlab.py and benchmarks/fleet_bench.py; tests/hostnet.py checks the
route before any of them connects over ssh. Standard library only.
"""
import os
import subprocess

RX_BYTES = "cat /sys/class/net/eth0/statistics/rx_bytes"
AUTHORIZE = ("install -d -m 0700 /root/.ssh && cat > /root/.ssh/authorized_keys"
             " && chmod 0600 /root/.ssh/authorized_keys")


def podman_exec(name, script, stdin=None, timeout=120):
    """`sh -c script` inside the container (no network involved); the caller judges the exit status."""
    argv = ["podman", "exec"] + (["-i"] if stdin is not None else []) + [name, "sh", "-c", script]
    return subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, check=False)


def rx_bytes(name):
    """Bytes eth0 of the host has received: what crossed the network to it."""
    p = podman_exec(name, RX_BYTES)
    if p.returncode != 0:
        raise RuntimeError("%s: reading rx_bytes failed (%d): %s" % (name, p.returncode, p.stderr.strip()))
    return int(p.stdout)


def ensure_key(path, comment):
    """An ed25519 key pair at path (made once), returns the public key text."""
    if not os.path.exists(path):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    with open(path + ".pub") as f:
        return f.read()


def authorize(name, public_key):
    """root's only authorized key in the host becomes public_key."""
    p = podman_exec(name, AUTHORIZE, stdin=public_key)
    if p.returncode != 0:
        raise RuntimeError("%s: installing the ssh key failed (%d): %s" % (name, p.returncode, p.stderr.strip()))
