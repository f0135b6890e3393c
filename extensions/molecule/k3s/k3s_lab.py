"""deploy_k3s on real hosts (issue 15; the k3s scenario's verify, after converge and idempotence).

Over ssh to each container, with eth0's rx_bytes read inside it (podman exec) before and after each run:

1. after converge (fixture `k3s`): each service runs the fixture k3s (/usr/local/bin/k3s, the fixture's
   sha256) from data/<hash> (current -> it, the dir the fixture itself says it used), and the fixture's
   extraction log does not exist (k3s took the pre-staged tree, nothing extracted); the env file is 0600 and
   holds the token, the unit does not;
2. the same again, under -vvv: changed=0, nothing uploaded, the token in no output;
3. upgrade to `k3s-v2` (bin/runc changed, so .sha256sums too): per host the bytes received, against the
   whole k3s-v2 and the streams sent (the executable plus the changed members only); current -> the new
   hash, previous -> the old one, k3s restarted onto k3s-v2, still no extraction;
4. k3s-v2 again: changed=0, nothing sent;
5. k3s_rollback=true: current/previous swapped back, the executable is k3s again, k3s restarted.

    .venv/bin/python extensions/molecule/k3s/k3s_lab.py --server-url https://10.89.77.97:6443 \
        --hosts fs-k3s-1=10.89.77.97:server fs-k3s-2=10.89.77.98:agent      (token in $FS_K3S_TOKEN)
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from fleetlab import (FIXTURES, REPO, VENV_BIN, Failure, ansible_env, failures, log, setup_ssh,  # noqa: E402
                      HOST_SHA, rx_run, sha256_file, split_manifest, write_inventory)
import hostlab  # noqa: E402  (tests/hostlab.py, on the path fleetlab set)

K3S_GROUPS = (("k3s_servers", "server"), ("k3s_agents", "agent"))

DATA = "/var/lib/rancher/k3s"
BIN = "/usr/local/bin"
QUERY = "Find out which contents the host lacks"
PRESENT = "Build the data dir tree and install k3s"   # the task name goes on with the version
BUNDLE = "Bundle the streams each host lacks (on the controller, once for the play)"

# Runs inside a host: what k3s and its service look like, nothing trusted (files hashed, links read).
STATE = HOST_SHA + r"""
import hashlib, json, os, subprocess, sys
data, bindir, unit, mgr = sys.argv[1:5]
def read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError:
        return None
d = os.path.join(data, "data")
out = dict((n, os.readlink(os.path.join(d, n)) if os.path.islink(os.path.join(d, n)) else None)
           for n in ("current", "previous"))
out["entries"] = sorted(os.listdir(d)) if os.path.isdir(d) else []
out["extractions"] = read(os.path.join(data, "fixture-extractions.log"))
out["status"] = json.loads(read(os.path.join(data, "fixture-status.json")) or "null")
out["k3s"] = sha(os.path.join(bindir, "k3s")) if os.path.exists(os.path.join(bindir, "k3s")) else None
out["links"] = dict((n, os.readlink(os.path.join(bindir, n))) for n in ("kubectl", "crictl", "ctr")
                    if os.path.islink(os.path.join(bindir, n)))
if mgr == "systemd":
    run = lambda *a: subprocess.run(a, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    out["pid"] = run("systemctl", "show", "-p", "MainPID", "--value", unit + ".service")
    out["active"] = run("systemctl", "is-active", unit + ".service") == "active"
    env, unit_file = "/etc/systemd/system/%s.service.env" % unit, "/etc/systemd/system/%s.service" % unit
else:
    out["pid"] = (read("/run/openrc/options/%s/child_pid" % unit) or "").strip()
    out["active"] = subprocess.run(["rc-service", unit, "status"], stdout=subprocess.DEVNULL).returncode == 0
    env, unit_file = "/etc/rancher/k3s/%s.env" % unit, "/etc/init.d/%s" % unit
try:
    out["exe"] = os.readlink("/proc/%s/exe" % out["pid"])
except OSError:
    out["exe"] = None
st = os.stat(env) if os.path.exists(env) else None
out["env_mode"] = None if st is None else "%o" % (st.st_mode & 0o7777)
text = read(env) or ""
tok = [l.split("=", 1)[1] for l in text.splitlines() if l.startswith("K3S_TOKEN=")]
out["env_token_sha256"] = hashlib.sha256(tok[0].strip("'").encode()).hexdigest() if tok else None
out["env_url"] = [l.split("=", 1)[1].strip("'") for l in text.splitlines() if l.startswith("K3S_URL=")]
out["unit_has_token"] = "K3S_TOKEN" in (read(unit_file) or "")
out["unit"] = read(unit_file)
print(json.dumps(out))
"""


class Host(object):
    def __init__(self, spec):
        name, rest = spec.split("=", 1)
        self.name = name
        self.address, self.role = rest.split(":", 1)
        self.unit = "k3s" if self.role == "server" else "k3s-agent"

    def sh(self, script, stdin=None):
        p = hostlab.podman_exec(self.name, script, stdin=stdin)
        if p.returncode != 0:
            raise Failure("%s: `%s` failed (%d): %s" % (self.name, script[:80], p.returncode, p.stderr.strip()))
        return p.stdout

    def manager(self):
        if not hasattr(self, "_mgr"):
            self._mgr = "systemd" if self.sh("[ -d /run/systemd/system ] && echo systemd || echo openrc").strip() == "systemd" else "openrc"
        return self._mgr

    def state(self):
        return json.loads(self.sh("python3 - %s %s %s %s" % (DATA, BIN, self.unit, self.manager()), stdin=STATE))

    def running(self, want_sha, old_pid=None, timeout=60):
        """The state once the service runs want_sha (a new pid when old_pid is given) and the fixture wrote
        its status for that pid."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            ok = (st["active"] and st["pid"] and st["pid"] != "0" and st["pid"] != old_pid and st["exe"]
                  and not st["exe"].endswith(" (deleted)") and st["k3s"] == want_sha and st["status"]
                  and str(st["status"].get("pid")) == st["pid"])
            if ok or time.monotonic() > deadline:
                return st
            time.sleep(1)


def run(hosts, inv, executable, extra=(), json_out=True):
    """One deploy_k3s run: (parsed JSON or text, rx bytes per host, seconds)."""
    env = ansible_env()
    if not json_out:
        env.pop("ANSIBLE_STDOUT_CALLBACK")
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(REPO / "playbooks" / "deploy_k3s.yml"),
            "-e", "k3s_executable=%s" % executable] + list(extra)
    p, rx, secs = rx_run(hosts, argv, env)
    if not json_out:
        if p.returncode != 0:
            raise Failure("ansible-playbook failed (rc %d): %s" % (p.returncode, (p.stdout + p.stderr)[-3000:]))
        return p.stdout + p.stderr, rx, secs
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise Failure("ansible-playbook printed no JSON (rc %d):\n%s\n%s" % (p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    if p.returncode != 0:
        raise Failure("ansible-playbook failed (rc %d): %s" % (p.returncode, json.dumps(failures(out), indent=1)[:4000]))
    return out, rx, secs


def sent(out, host):
    """Member names of the bundle the k3s_data action uploaded to ``host`` ([] when none)."""
    res = {}
    for play in out.get("plays", []):
        for task in play.get("tasks", []):
            if PRESENT in task["task"]["name"]:
                res = task["hosts"].get(host, res)
    if not res or res.get("skipped") or not res.get("bundle_bytes"):
        return []
    # run_once per batch (k3s_serial): the batch's one result carries every host of that batch.
    for play in out.get("plays", []):
        for task in play.get("tasks", []):
            if task["task"]["name"].endswith(BUNDLE):
                for r in task["hosts"].values():
                    if host in r.get("bundles", {}):
                        return sorted(m["name"] for m in r["bundles"][host]["members"])
    return []


def stream_sizes(manifest):
    sizes = dict((f["name"], f["stream_size"]) for f in manifest["files"])
    sizes["k3s"] = manifest["stripped_executable"]["stream_size"]
    return sizes


def check_running(h, st, fixture, manifest, token_sha, server_url, problems, label):
    want_dir = "%s/data/%s" % (DATA, manifest["data_hash"])
    checks = [
        (st["active"], "service %s not active" % h.unit),
        (st["k3s"] == sha256_file(fixture), "%s/k3s is not %s" % (BIN, fixture.name)),
        (st["exe"] == BIN + "/k3s", "k3s runs %s, not %s/k3s" % (st["exe"], BIN)),
        (st["current"] == want_dir, "data/current -> %s, not %s" % (st["current"], want_dir)),
        (st["status"] and st["status"].get("version") == manifest["k3s_version"],
         "the fixture reports %s" % (st["status"],)),
        (st["status"] and st["status"].get("role") == h.role, "the fixture runs as %s" % (st["status"] or {}).get("role")),
        (st["status"] and os.path.normpath(str(st["status"].get("dir"))) in (want_dir, DATA),
         "the fixture used %s" % (st["status"] or {}).get("dir")),
        (st["extractions"] is None, "k3s extracted its archive itself: %r" % st["extractions"]),
        (st["env_mode"] == "600", "env file mode %s" % st["env_mode"]),
        (st["env_token_sha256"] == token_sha, "the env file lacks the token"),
        (h.role != "agent" or st["env_url"] == [server_url], "K3S_URL in the env file: %s" % st["env_url"]),
        (not st["unit_has_token"], "the unit names K3S_TOKEN"),
        (st["links"] == {"kubectl": "k3s", "crictl": "k3s", "ctr": "k3s"}, "CLI links %s" % st["links"]),
    ]
    for ok, msg in checks:
        if not ok:
            problems.append("%s (%s): %s" % (h.name, label, msg))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", nargs="+", required=True, help="name=address:server|agent")
    ap.add_argument("--server-url", required=True)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    token = os.environ.get("FS_K3S_TOKEN", "")
    if not token:
        log("FAILED: FS_K3S_TOKEN is empty")
        return 1
    token_sha = hashlib.sha256(token.encode()).hexdigest()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="k3s-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    hosts = [Host(s) for s in args.hosts]
    v1, v2 = FIXTURES / "k3s", FIXTURES / "k3s-v2"
    problems, report = [], []
    try:
        # The token is read from the environment by the inventory itself: it never lands in a file here.
        inv = write_inventory(hosts, workdir, "ssh", setup_ssh(hosts, workdir), groups=K3S_GROUPS, extra_vars=(
            "k3s_server_url: %s" % args.server_url, "k3s_token: \"{{ lookup('ansible.builtin.env', 'FS_K3S_TOKEN') }}\""))
        m1 = split_manifest(v1)
        s1 = dict((h.name, h.running(sha256_file(v1))) for h in hosts)
        for h in hosts:
            check_running(h, s1[h.name], v1, m1, token_sha, args.server_url, problems, "after converge")
            report.append("%-9s %-7s %s: %s, data/current -> %s, no extraction: %s"
                          % (h.name, h.manager(), h.unit, s1[h.name]["status"], s1[h.name]["current"],
                             s1[h.name]["extractions"] is None))

        # 2. No change, under -vvv: nothing sent, nothing changed, the token nowhere in the output.
        text, rerun, secs = run(hosts, inv, v1, ("-vvv",), json_out=False)
        rx = rerun
        (workdir / "rerun-vvv.log").write_text(text)
        for h in hosts:
            report.append("%-34s %-9s rx %10d bytes (wall %.1f s)" % ("re-run k3s (no change, -vvv)", h.name, rx[h.name], secs))
            if not any(line.startswith(h.name) and "changed=0" in line and "failed=0" in line
                       for line in text.splitlines()):
                problems.append("%s: the no-change re-run changed something (see %s)" % (h.name, workdir / "rerun-vvv.log"))
        if token in text:
            problems.append("the token appears in the -vvv output (%s)" % (workdir / "rerun-vvv.log"))

        # 3a. The upgrade in --check --diff: nothing sent, nothing switched or restarted.
        out, rx, secs = run(hosts, inv, v2, ("--check", "--diff"))
        for h in hosts:
            st = h.state()
            report.append("%-34s %-9s rx %10d bytes (wall %.1f s)" % ("upgrade in --check", h.name, rx[h.name], secs))
            if st["current"] != s1[h.name]["current"] or st["pid"] != s1[h.name]["pid"] or sent(out, h.name):
                problems.append("%s: --check changed the host: current %s, pid %s -> %s, sent %s"
                                % (h.name, st["current"], s1[h.name]["pid"], st["pid"], sent(out, h.name)))
            if rx[h.name] > 2 * rerun[h.name]:
                problems.append("%s: --check received %d bytes, more than twice a no-change run (%d)"
                                % (h.name, rx[h.name], rerun[h.name]))

        # 3. Upgrade, one host at a time (servers first): only the executable and the changed members travel.
        out, rx, secs = run(hosts, inv, v2, ("-e", "k3s_serial=1"))
        m2 = split_manifest(v2)
        sizes2 = stream_sizes(m2)
        old = set(f["name"] for f in m1["files"])
        changed = sorted([f["name"] for f in m2["files"] if f["name"] not in old] + ["k3s"])
        content = sum(sizes2[n] for n in changed)
        whole = v2.stat().st_size
        for h in hosts:
            got = sent(out, h.name)
            report.append("%-34s %-9s rx %10d bytes = %.3f x the whole k3s-v2 (%d); streams sent %d (%s),"
                          " over content %d" % ("upgrade k3s -> k3s-v2", h.name, rx[h.name], rx[h.name] / float(whole),
                                                whole, content, ", ".join(n[:12] for n in changed), rx[h.name] - content))
            if got != changed:
                problems.append("%s: the upgrade sent %s, expected %s (the executable and the changed members)"
                                % (h.name, got, changed))
            if rx[h.name] < content:
                problems.append("%s: received %d bytes, less than the streams sent (%d)" % (h.name, rx[h.name], content))
            # Beyond the content only Ansible's own per-task bytes (a no-change run's worth, twice at most):
            # any stream sent twice (the smallest changed one is far larger than that) breaks this.
            if rx[h.name] - content > 2 * rerun[h.name]:
                problems.append("%s: received %d bytes beyond the streams sent, more than twice a no-change run (%d):"
                                " content went twice" % (h.name, rx[h.name] - content, rerun[h.name]))
            st = h.running(sha256_file(v2), old_pid=s1[h.name]["pid"])
            check_running(h, st, v2, m2, token_sha, args.server_url, problems, "after the upgrade")
            if st["previous"] != "%s/data/%s" % (DATA, m1["data_hash"]):
                problems.append("%s: data/previous -> %s, not the old tree" % (h.name, st["previous"]))
            report.append("%-34s %-9s current -> %s, previous -> %s, pid %s -> %s"
                          % ("", h.name, st["current"], st["previous"], s1[h.name]["pid"], st["pid"]))
        report.append("%-34s (wall %.1f s)" % ("", secs))
        log("streams k3s-v2: %s" % json.dumps(dict((n[:12], s) for n, s in sorted(sizes2.items()))))

        # 4. Again: nothing.
        out, rx, secs = run(hosts, inv, v2)
        for h in hosts:
            report.append("%-34s %-9s rx %10d bytes (wall %.1f s)" % ("re-run k3s-v2 (no change)", h.name, rx[h.name], secs))
            if out["stats"][h.name]["changed"] != 0 or sent(out, h.name):
                problems.append("%s: the k3s-v2 re-run changed %d, sent %s" % (h.name, out["stats"][h.name]["changed"], sent(out, h.name)))

        # 5. Rollback: the previous tree and executable, restarted.
        pids = dict((h.name, h.state()["pid"]) for h in hosts)
        out, rx, secs = run(hosts, inv, v2, ("-e", "k3s_rollback=true"))
        for h in hosts:
            st = h.running(sha256_file(v1), old_pid=pids[h.name])
            check_running(h, st, v1, m1, token_sha, args.server_url, problems, "after the rollback")
            report.append("%-34s %-9s rx %10d bytes, current -> %s, previous -> %s"
                          % ("rollback", h.name, rx[h.name], st["current"], st["previous"]))
    except Failure as e:
        problems.append(str(e))
    log("\n".join(report))
    if problems:
        log("FAILED:\n" + "\n".join(problems))
        return 1
    log("k3s: pre-staged trees taken without extraction; upgrades send the executable and the changed members only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
