"""Run one ansible-playbook against the upgrade scenario's hosts and measure around it.

Prints JSON: rc, wall seconds, bytes each host received on eth0 (read with `podman exec`,
which itself does not touch eth0), each host's release/k0s pid/version before and after,
the PLAY RECAP per host, the order in which the upgrade role announced hosts, and the
messages of failed tasks. The full output goes to <logdir>/<step>.log.
Usage: measure.py STEP LOGDIR HOSTS(comma) -- ansible-playbook-args...
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import hostlab  # noqa: E402  (tests/hostlab.py: exec in a test host, its eth0 counter)

SNAP = (hostlab.RX_BYTES + "; "
        "readlink /var/lib/fleetsplit-k0s/current || echo none; "
        "echo \"pid=$(/usr/bin/k0s status 2>/dev/null | sed -n 's/^Process ID: //p')\"; "
        "/usr/bin/k0s version 2>/dev/null || echo none")


def snapshot(hosts):
    out = {}
    for h in hosts:
        p = hostlab.podman_exec(h, SNAP)
        if p.returncode != 0:
            raise SystemExit("%s: snapshot failed (%d): %s" % (h, p.returncode, p.stderr.strip()))
        lines = p.stdout.splitlines()
        out[h] = {"rx": int(lines[0]), "release": os.path.basename(lines[1]),
                  "pid": lines[2].split("=", 1)[1], "version": lines[3]}
    return out


def main():
    step, logdir, hosts = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    cmd = sys.argv[sys.argv.index("--") + 1:]
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    before = snapshot(hosts)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = round(time.monotonic() - t0, 1)
    after = snapshot(hosts)
    out = p.stdout + p.stderr
    log = os.path.join(logdir, step + ".log")
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n" + out)
    recap = {}
    for m in re.finditer(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M):
        recap[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)),
                             "unreachable": int(m.group(4)), "failed": int(m.group(5))}
    res = {
        "step": step, "rc": p.returncode, "seconds": seconds, "log": log,
        "rx": {h: after[h]["rx"] - before[h]["rx"] for h in hosts},
        "before": before, "after": after, "recap": recap,
        # the upgrade role's "Say what happens to this host" line, one per host as it is reached
        "order": re.findall(r'"msg": "(\S+) \((?:controller|worker|controller\+worker),', out),
        "said": re.findall(r'"msg": "(\S+ \((?:controller|worker|controller\+worker),[^"]*)"', out),
        "plays": re.findall(r"^PLAY \[(.*)\]", out, re.M),
        "fail_msgs": re.findall(r'"msg": "(k0s (?:upgrade|rollback) stopped at [^"]*)"', out),
        "restarts": sorted(h for h in hosts if before[h]["pid"] != after[h]["pid"]),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
