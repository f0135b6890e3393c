"""A mixed-architecture fleet on real hosts (issue 22; the mixed-arch scenario's verify, after converge and
idempotence). fs-mix-3 is an arm64 Debian whose systemd, sshd and python3 run under qemu-user.

Over ssh to each container, with eth0's rx_bytes read inside it (podman exec) before and after each run:

1. after converge (k0s_executables {amd64: k0s-small-zip, arm64: k0s-small-zip-arm64}): each host reports
   the architecture the scenario gives it (uname -m); /usr/bin/k0s and every /usr/libexec/k0s/<name> are ELF
   for that machine (e_machine read inside the host) and carry the sha256 of its architecture's split and of
   the fixture builder's record (fixtures.json); the host's own k0s stages them from the data dir (on arm64
   under emulation) and its service runs the current release;
2. deploy_k0s with k0s_executables lacking arm64, then with one amd64 k0s_executable for the whole fleet: each
   fails naming fs-mix-3 and aarch64, and no host changed, the amd64 ones included (store, links, unit,
   service pid and state compared before/after);
3. upgrade_k0s to the -v2 pair: each host received exactly its architecture's changed streams (the bundle
   members the play reports: the streams whose sha256 differs between that architecture's v1 and v2
   splits), its bytes at least those streams and beyond them no more than 2.5 x a no-change run; each host
   then runs v2 built for its machine, previous -> the v1 release;
4. the upgrade again: changed=0 on every host, nothing sent (its bytes are step 3's no-change measure);
5. deploy_k0s with k0s_version instead (before step 3): the converge executables served as that release's assets
   (k0s-<version>-amd64, -arm64, -arm and sha256sums.txt) by http.server on 127.0.0.1, a private controller
   cache: exactly the amd64 and arm64 assets are fetched (no host is arm), each checked against sha256sums.txt,
   and no host changes (state compared, nothing sent): the result is the converge's.

    .venv/bin/python extensions/molecule/mixed-arch/mixed_lab.py --executables '{"amd64": ..., "arm64": ...}' \
        --upgrade-executables '{...}' --hosts fs-mix-1:10.89.77.101:controller:amd64 ...
"""
import argparse
import http.server
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from fleetlab import (FIXTURES, REPO, VENV_BIN, Failure, failures, log, setup_ssh,  # noqa: E402
                      HOST_SHA, rx_run, sha256_file, split_manifest, stream_sizes, uploaded, write_inventory)
import hostlab  # noqa: E402  (tests/hostlab.py, on the path fleetlab set)
import threading  # noqa: E402

STORE = "/var/lib/fleetsplit-k0s"
OVERHEAD = 2.5   # an upgrade's bytes beyond its streams, at most this many no-change runs (see step 3)
# ELF e_machine per architecture key (the ELF specification's numbers) and uname -m spellings.
EM = {"amd64": 62, "arm64": 183, "arm": 40}
UNAME = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}

# Runs inside a host (python3, under qemu on arm64): ELF machine and sha256 of every deployed file, the
# store's links, the service. Nothing trusted: files are read, links resolved. The running k0s is read by
# the collection's own process_exe.py (sent along): under qemu-user /proc/<pid>/exe names qemu.
PROCESS_EXE = (REPO / "plugins" / "module_utils" / "process_exe.py").read_text()
STATE = PROCESS_EXE + HOST_SHA + r"""
import json, os, platform, struct, subprocess, sys
store = sys.argv[1]
def elf(p):
    with open(p, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return None
    return struct.unpack("<H" if head[5] == 1 else ">H", head[18:20])[0]
def link(p):
    return os.readlink(p) if os.path.islink(p) else None
run = lambda *a: subprocess.run(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True).stdout.strip()
out = {"machine": platform.machine(), "files": {}}
paths = ["/usr/bin/k0s"] + sorted(os.path.join("/usr/libexec/k0s", n) for n in
                                 (os.listdir("/usr/libexec/k0s") if os.path.isdir("/usr/libexec/k0s") else [])
                                 if os.path.islink(os.path.join("/usr/libexec/k0s", n)))
for p in paths:
    if os.path.exists(p):
        out["files"][p] = {"link": link(p), "real": os.path.realpath(p), "sha256": sha(p), "e_machine": elf(p)}
rel = os.path.join(store, "releases")
out["releases"] = sorted(os.listdir(rel)) if os.path.isdir(rel) else None
out["current"] = link(os.path.join(store, "current"))
out["previous"] = link(os.path.join(store, "previous"))
unit = sys.argv[2]
path = "/etc/systemd/system/%s.service" % unit
out["unit_sha256"] = sha(path) if os.path.exists(path) else None
out["active"] = run("systemctl", "is-active", unit + ".service")
out["enabled"] = run("systemctl", "is-enabled", unit + ".service")
out["pid"] = run("systemctl", "show", "-p", "MainPID", "--value", unit + ".service")
out["exe"] = process_executable(out["pid"]) if out["pid"] not in ("", "0") else None
out["current_k0s"] = os.path.realpath(os.path.join(store, "current", "bin", "k0s"))
print(json.dumps(out))
"""


class Host(object):
    def __init__(self, spec):
        self.name, self.address, self.role, self.arch = spec.split(":")
        self.unit = "k0scontroller" if self.role == "controller" else "k0sworker"

    def sh(self, script, stdin=None, timeout=300):
        p = hostlab.podman_exec(self.name, script, stdin=stdin, timeout=timeout)
        if p.returncode != 0:
            raise Failure("%s: `%s` failed (%d): %s" % (self.name, script[:80], p.returncode, p.stderr.strip()))
        return p.stdout

    def state(self):
        return json.loads(self.sh("python3 - %s %s" % (STORE, self.unit), stdin=STATE))

    def stage(self):
        # An empty PATH: only the data-dir links make this work (as the shared verify runs it).
        return json.loads(self.sh("env -i PATH=/nonexistent /usr/bin/k0s stage --data-dir /var/lib/k0s"))

    def running(self, old_pid=None, timeout=120):
        """The state once the service runs the current release's k0s (under another pid than old_pid)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            if (st["active"] == "active" and st["exe"] == st["current_k0s"] and st["pid"] not in ("", "0", old_pid)) \
                    or time.monotonic() > deadline:
                return st
            time.sleep(2)


def run(hosts, inv, playbook, executables, step, expect_ok=True, extra_vars=None):
    """One ansible-playbook run: (parsed JSON, rc, rx bytes per host, seconds); its output in <workdir>/<step>.json."""
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(REPO / "playbooks" / playbook),
            "-e", json.dumps(dict({"k0s_executables": executables}, **(extra_vars or {})))]
    p, rx, secs = rx_run(hosts, argv)
    (inv.parent / ("%s.json" % step)).write_text(p.stdout + p.stderr)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise Failure("%s printed no JSON (rc %d):\n%s\n%s" % (playbook, p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    if expect_ok and p.returncode != 0:
        raise Failure("%s failed (rc %d): %s" % (playbook, p.returncode, json.dumps(failures(out), indent=1)[:4000]))
    return out, p.returncode, rx, secs


class Release(object):
    """A k0s release laid out as the download role expects (<version>/k0s-<version>-<key>, sha256sums.txt), served
    on 127.0.0.1 only; ``requests`` lists the paths asked for."""

    def __init__(self, root, version, assets):
        d = root / version
        d.mkdir(parents=True)
        sums = []
        for key, path in sorted(assets.items()):
            name = "k0s-%s-%s" % (version, key)
            (d / name).symlink_to(path)
            sums.append("%s  %s\n" % (sha256_file(path), name))
        (d / "sha256sums.txt").write_text("".join(sums))
        self.requests = requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, fmt, *args):
                requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def check_unchanged(hosts, before, out, label, problems):
    """Every host's state as ``before`` (files, store, links, unit, service pid) and nothing uploaded to it."""
    for h in hosts:
        st = h.state()
        if st != before[h.name]:
            diff = dict((k, (before[h.name].get(k), st[k])) for k in st if st[k] != before[h.name].get(k))
            problems.append("%s: %s changed the host: %s" % (h.name, label, json.dumps(diff)[:1500]))
        if uploaded(out, h.name):
            problems.append("%s: %s uploaded %s" % (h.name, label, uploaded(out, h.name)))


def fixture_record(path):
    table = json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]
    name = Path(path).name
    if name not in table:
        raise Failure("%s is not in %s" % (name, FIXTURES / "fixtures.json"))
    return table[name]


def check_files(h, st, manifest, record, problems, label):
    """Every deployed file is ELF for the host's machine and has its architecture's content."""
    want = dict((f["name"], f["sha256"]) for f in manifest["files"])
    want_rec = dict((n, b["sha256"]) for n, b in record["binaries"].items())
    names = sorted(p.rsplit("/", 1)[1] for p in st["files"] if p.startswith("/usr/libexec/k0s/"))
    if names != sorted(want) or names != sorted(want_rec):
        problems.append("%s (%s): /usr/libexec/k0s holds %s, the split %s" % (h.name, label, names, sorted(want)))
    k0s = st["files"].get("/usr/bin/k0s")
    if not k0s or k0s["sha256"] != manifest["stripped_executable"]["sha256"]:
        problems.append("%s (%s): /usr/bin/k0s is %s, not the %s split's stripped k0s"
                        % (h.name, label, k0s and k0s["sha256"], h.arch))
    for path, f in sorted(st["files"].items()):
        if f["e_machine"] != EM[h.arch]:
            problems.append("%s (%s): %s has ELF machine %s, not %d (%s)" % (h.name, label, path, f["e_machine"], EM[h.arch], h.arch))
        name = path.rsplit("/", 1)[1]
        if path.startswith("/usr/libexec/k0s/") and (f["sha256"] != want.get(name) or f["sha256"] != want_rec.get(name)):
            problems.append("%s (%s): %s sha256 %s, split %s, fixtures.json %s"
                            % (h.name, label, path, f["sha256"], want.get(name), want_rec.get(name)))
        if not st["current"] or not f["real"].startswith("%s/%s/" % (STORE, st["current"])):
            problems.append("%s (%s): %s resolves to %s, outside current -> %s" % (h.name, label, path, f["real"], st["current"]))


def check_running(h, st, manifest, record, problems, label, old_pid=None):
    check_files(h, st, manifest, record, problems, label)
    staged = h.stage()
    want = dict((f["name"], f["sha256"]) for f in manifest["files"])
    if staged.get("version") != record["version"] or sorted(staged.get("binaries", {})) != sorted(want):
        problems.append("%s (%s): k0s stage says %s %s" % (h.name, label, staged.get("version"), sorted(staged.get("binaries", {}))))
    for name, b in sorted(staged.get("binaries", {}).items()):
        if b.get("sha256") != want.get(name) or b.get("source") != "data-dir" \
                or b.get("realpath") != st["files"].get("/usr/libexec/k0s/" + name, {}).get("real"):
            problems.append("%s (%s): staged %s as %s" % (h.name, label, name, b))
    if st["active"] != "active" or st["enabled"] != "enabled" or st["exe"] != st["current_k0s"] \
            or (old_pid is not None and st["pid"] == old_pid):
        problems.append("%s (%s): %s %s/%s, pid %s (before %s) runs %s, current k0s is %s"
                        % (h.name, label, h.unit, st["active"], st["enabled"], st["pid"], old_pid, st["exe"], st["current_k0s"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", nargs="+", required=True, help="name:address:controller|worker:arch")
    ap.add_argument("--executables", required=True, help="k0s_executables of converge (JSON)")
    ap.add_argument("--upgrade-executables", required=True, help="k0s_executables of the upgrade (JSON)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    v1, v2 = json.loads(args.executables), json.loads(args.upgrade_executables)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mixed-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    hosts = [Host(s) for s in args.hosts]
    problems, report = [], []
    try:
        # 0. The fleet is what the scenario says: otherwise nothing below tests a mixed fleet.
        archs = dict((h.name, UNAME.get(h.sh("uname -m").strip(), "?")) for h in hosts)
        wrong = ["%s is %s, not %s" % (h.name, archs[h.name], h.arch) for h in hosts if archs[h.name] != h.arch]
        if wrong or len(set(archs.values())) < 2:
            raise Failure("not a mixed fleet: %s (%s)" % ("; ".join(wrong), archs))
        inv = write_inventory(hosts, workdir, "ssh", setup_ssh(hosts, workdir), extra_vars=(
            # Lean upgrade: the drain is not what this scenario proves (the upgrade scenario does).
            "k0s_upgrade_drain: false", "k0s_upgrade_settle_seconds: 3", "k0s_upgrade_start_timeout: 90",
            "k0s_upgrade_health_retries: 3", "k0s_upgrade_health_delay: 2"))
        m1 = dict((a, split_manifest(p)) for a, p in v1.items())
        r1 = dict((a, fixture_record(p)) for a, p in v1.items())

        # 1. After converge: each host's architecture's files, staged and running.
        s1 = {}
        for h in hosts:
            s1[h.name] = st = h.running()
            check_running(h, st, m1[h.arch], r1[h.arch], problems, "after converge")
            report.append("%-9s %-5s %-10s e_machine %s of %d files, current -> %s, %s pid %s"
                          % (h.name, h.arch, h.role, sorted(set(f["e_machine"] for f in st["files"].values())),
                             len(st["files"]), st["current"], h.unit, st["pid"]))

        # 2. No executable for arm64: refused before any change, on every host. Then one amd64 k0s_executable for
        # the whole fleet: the arm64 host's query refuses it, and that stops the amd64 hosts too, before install.
        arm = [h.name for h in hosts if h.arch == "arm64"]
        only = dict((a, p) for a, p in v2.items() if a != "arm64")
        for label, executables, extra in (("no arm64 executable", only, None),
                                          ("one amd64 k0s_executable", {}, {"k0s_executable": v2["amd64"]})):
            out, rc, rx, secs = run(hosts, inv, "deploy_k0s.yml", executables, "refused", expect_ok=False, extra_vars=extra)
            msgs = " ".join(str(f["msg"]) for f in failures(out))
            report.append("%-34s rc %d in %.1f s: %s" % ("refused (%s)" % label, rc, secs, msgs[:300]))
            if rc == 0 or not all(n in msgs for n in arm) or "aarch64" not in msgs:
                problems.append("%s: rc %d, messages %r (want a failure naming %s and its machine aarch64)"
                                % (label, rc, msgs[:1000], arm))
            check_unchanged(hosts, s1, out, "the refused run (%s)" % label, problems)

        # 5. The same release downloaded: one asset per architecture the hosts have, the converge's result.
        version = set(r["version"] for r in r1.values())
        if len(version) != 1:
            raise Failure("the converge executables carry versions %s" % sorted(version))
        version = version.pop()
        served = dict(v1, arm=str(FIXTURES / "k0s-small-zip-arm"))
        release = Release(workdir / "release", version, served)
        try:
            out, rc, rx, secs = run(hosts, inv, "deploy_k0s.yml", {}, "download", extra_vars={
                "k0s_version": version, "k0s_download_base_url": release.base_url, "k0s_download_insecure": True,
                "k0s_controller_cache_dir": str(workdir / "download-cache")})
        finally:
            release.close()
        fetched = sorted(set(p.rsplit("-", 1)[1] for p in release.requests if "/k0s-" in p))
        report.append("%-34s %s fetched %s (served %s) in %.1f s, changed=%s" % (
            "deploy_k0s k0s_version=" + version, release.base_url, fetched, sorted(served), secs,
            dict((h.name, out["stats"][h.name]["changed"]) for h in hosts)))
        if fetched != sorted(set(h.arch for h in hosts)):
            problems.append("k0s_version: fetched the assets %s, expected one per host architecture %s"
                            % (fetched, sorted(set(h.arch for h in hosts))))
        # The controller's changes (download, split into the private cache) count on the first host: compare hosts.
        check_unchanged(hosts, s1, out, "the downloaded release (the converge's)", problems)

        # 3. Upgrade to the -v2 pair: each host only its architecture's changed streams.
        out, rc, rx_up, secs_up = run(hosts, inv, "upgrade_k0s.yml", v2, "upgrade")
        m2 = dict((a, split_manifest(p)) for a, p in v2.items())
        r2 = dict((a, fixture_record(p)) for a, p in v2.items())
        # 4. Again: nothing (and the no-change bytes for the bound below).
        out4, rc4, rx_re, secs_re = run(hosts, inv, "upgrade_k0s.yml", v2, "upgrade-again")
        for h in hosts:
            a = h.arch
            old = dict((f["name"], f["sha256"]) for f in m1[a]["files"])
            changed = sorted([f["name"] for f in m2[a]["files"] if old.get(f["name"]) != f["sha256"]]
                             + (["k0s"] if m1[a]["stripped_executable"]["sha256"] != m2[a]["stripped_executable"]["sha256"] else []))
            sizes = stream_sizes(m2[a])
            content = sum(sizes[n] for n in changed)
            got = uploaded(out, h.name)
            report.append("%-34s %-9s %-5s rx %9d bytes, streams sent %s = %d bytes, over content %d = %.2f x the"
                          " no-change run (wall %.1f s)" % ("upgrade -> -v2 pair", h.name, a, rx_up[h.name], got, content,
                                                            rx_up[h.name] - content,
                                                            (rx_up[h.name] - content) / float(max(rx_re[h.name], 1)), secs_up))
            if not changed or got != changed:
                problems.append("%s: the upgrade sent %s, expected %s (its %s split's changed streams)" % (h.name, got, changed, a))
            if rx_up[h.name] < content:
                problems.append("%s: received %d bytes, less than the streams sent (%d)" % (h.name, rx_up[h.name], content))
            # Beyond the content only Ansible's own bytes: the upgrade runs more tasks than its no-change re-run
            # (stop, switch, start, gate: 1.7-1.9 x its bytes measured). A changed stream sent twice adds at
            # least runc's 3.1 MB (2.4 x a no-change run), which breaks this bound.
            if rx_up[h.name] - content > OVERHEAD * rx_re[h.name]:
                problems.append("%s: received %d bytes beyond the streams sent, more than %.1f x a no-change run (%d):"
                                " content went twice" % (h.name, rx_up[h.name] - content, OVERHEAD, rx_re[h.name]))
            st = h.running(old_pid=s1[h.name]["pid"])
            check_running(h, st, m2[a], r2[a], problems, "after the upgrade", old_pid=s1[h.name]["pid"])
            if st["previous"] != s1[h.name]["current"]:
                problems.append("%s: previous -> %s, not the v1 release %s" % (h.name, st["previous"], s1[h.name]["current"]))
            report.append("%-34s %-9s %-5s rx %9d bytes, changed=%s, sent %s (wall %.1f s)"
                          % ("upgrade again (no change)", h.name, a, rx_re[h.name], out4["stats"][h.name]["changed"],
                             uploaded(out4, h.name), secs_re))
            if out4["stats"][h.name]["changed"] != 0 or uploaded(out4, h.name):
                problems.append("%s: the upgrade's re-run changed %d, sent %s"
                                % (h.name, out4["stats"][h.name]["changed"], uploaded(out4, h.name)))
        log("streams: %s" % json.dumps(dict((a, dict((n[:16], s) for n, s in sorted(stream_sizes(m).items())))
                                            for a, m in sorted(m2.items()))))
    except Failure as e:
        problems.append(str(e))
    log("\n".join(report))
    if problems:
        log("FAILED:\n" + "\n".join(problems))
        return 1
    log("mixed-arch: every host has its architecture's k0s; a missing architecture changes nothing; "
        "upgrades send each host its architecture's changed streams only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
