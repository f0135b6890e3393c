"""Pull distribution on real hosts (issue 17; the `pull` scenario's verify, after prepare published k0s-small-zip,
started the mirror container and converge deployed it with k0s_distribution=pull).

The mirror (extensions/molecule/shared/mirror_server.py) is untrusted and logs every request; the hosts fetch from
it over the test network, the controller talks to the hosts over ssh (eth0's rx_bytes read inside each host).

1. converge: every host fetched each stream of the release exactly once (GET /blobs/sha256/<stream sha256>, 200,
   the stream's size), nothing else; every host runs one complete release with the split's files;
2. the same deploy again: changed=0 on every host and not one request in the mirror's log;
3. publish the new release (publish_k0s) into the same tree; the tree's blobs are named by their sha256;
4. the upgrade (k0s-small-zip -> -v2): each host fetched exactly the changed streams, once each; the mirror's body
   bytes per host within 1.05 x those streams; every host on -v2, previous -> the old release;
5. corrupt fault (hosts holding only -v2, going back to the old release): the mirror flips a byte of a stream
   every host needs: the run fails naming the stream, the URL and both sha256s; current, unit and the running
   k0s unchanged on every host; the corrupted bytes are nowhere on any host;
6. vanished mirror: the mirror exits after its first request: the run fails with a clear error naming the
   mirror; every host still holds one complete release;
7. the mirror back, the re-run converges; it is also the mixed run: fs-pull-1 with k0s_distribution=push (host
   var), the others pull: the push host gets its streams in the controller's bundle and makes no mirror request,
   the pull hosts fetch only what they still lack, each stream at most once, and receive no bundle; the
   controller's bytes per host (rx minus the mirror's body bytes) are reported.

    .venv/bin/python extensions/molecule/pull/pull_lab.py --v1 .cache/fixtures/k0s-small-zip \
        --v2 .cache/fixtures/k0s-small-zip-v2 --mirror-name fs-pull-mirror --mirror-ip 10.89.77.149 \
        --mirror-dir <dir with tree/ and state/> --settings '{"k0s_mirror_url": ...}' \
        --hosts fs-pull-1=10.89.77.141:controller ...
"""
import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from fleetlab import (FORCE_SKEW, REPO, VENV_BIN, Failure, Host, HOST_SHA, ansible_env,  # noqa: E402
                      check_one_version, expected_files, failures, log, prune_to_current, rx_run, service_state, setup_ssh,
                      split_manifest, uploaded, write_inventory)
import mirror_server  # noqa: E402  (extensions/molecule/shared/mirror_server.py)

STORE = "/var/lib/fleetsplit-k0s"
BUDGET = 1.05
# The time the mirror needs to log a request after its last byte went out (it logs right after).
LOG_SETTLE = 0.5

# Runs inside a host: every regular file under the given roots whose sha256 is one of the given ones.
FIND_SHA = HOST_SHA + r"""
import json, os, sys
bad, found = set(json.loads(sys.argv[1])), []
for root in sys.argv[2:]:
    for d, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p) and sha(p) in bad:
                found.append(p)
print(json.dumps(found))
"""


class Lab(object):
    def __init__(self, args, workdir):
        self.hosts = [Host(s) for s in args.hosts]
        self.by_ip = dict((h.address, h.name) for h in self.hosts)
        self.workdir = workdir
        self.mirror_name, self.mirror_ip = args.mirror_name, args.mirror_ip
        self.tree = Path(args.mirror_dir) / "tree"
        self.state = str(Path(args.mirror_dir) / "state")
        self.settings = json.loads(args.settings)
        self.kubeconfig = args.kubeconfig
        self.offset = 0
        self.report, self.problems = [], []
        key = setup_ssh(self.hosts, workdir)
        # The scenario's settings (distribution, mirror URL, timeouts) as inventory vars, so a host var can
        # override them (the mixed run); extra vars would win over host vars.
        self.inv = write_inventory(self.hosts, workdir, "ssh", key,
                                   extra_vars=["%s: %s" % (k, json.dumps(v)) for k, v in sorted(self.settings.items())])

    # ------------------------------------------------------------------ runs and the mirror's log

    def run(self, step, executable, extra=(), playbook="deploy_k0s.yml", expect_ok=True, inventories=()):
        """One ansible-playbook run over ssh: (JSON output, rc, rx per host, seconds, mirror log entries of the run)."""
        self.drain_log()
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inv)]
        for inv in inventories:
            argv += ["-i", str(inv)]
        argv += [str(REPO / "playbooks" / playbook), "-e", "k0s_executable=%s" % executable,
                 "-e", "k0s_kubeconfig_path=%s" % self.kubeconfig] + list(extra)
        p, rx, secs = rx_run(self.hosts, argv)
        (self.workdir / ("%s.json" % step)).write_text(p.stdout + p.stderr)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            raise Failure("%s: %s printed no JSON (rc %d):\n%s\n%s" % (step, playbook, p.returncode, p.stdout[-3000:],
                                                                       p.stderr[-3000:]))
        if expect_ok and p.returncode != 0:
            raise Failure("%s: %s failed (rc %d): %s" % (step, playbook, p.returncode,
                                                         json.dumps(failures(out), indent=1)[:4000]))
        return out, p.returncode, rx, secs, self.drain_log()

    def drain_log(self):
        """The mirror's log entries since the last call (waits until the log stops growing)."""
        got = []
        while True:
            time.sleep(LOG_SETTLE)
            entries, self.offset = mirror_server.read_log(self.state, self.offset)
            if not entries:
                return got
            got += entries

    def per_host(self, entries):
        """{host: [entries]} of the test hosts' requests (the controller's readiness probes left out)."""
        out = dict((h.name, []) for h in self.hosts)
        for e in entries:
            if e["client"] in self.by_ip:
                out[self.by_ip[e["client"]]].append(e)
        return out

    def check_fetched(self, label, entries, want, exact=True):
        """Each host's requests are GETs of blobs, 200, full size, each at most once; with ``exact`` exactly ``want``
        ({host: {hex: size}}). Returns {host: body bytes}."""
        sent = {}
        for name, reqs in sorted(self.per_host(entries).items()):
            hexes = [e["path"].rsplit("/", 1)[1] for e in reqs]
            odd = [e for e in reqs if e["method"] != "GET" or not e["path"].startswith("/blobs/sha256/")
                   or e["status"] != 200 or e["bytes"] != want[name].get(e["path"].rsplit("/", 1)[1])]
            if odd:
                self.problems.append("%s: %s: requests other than full GETs of the streams it needs: %s" % (label, name, odd))
            if len(hexes) != len(set(hexes)):
                self.problems.append("%s: %s fetched a stream more than once: %s" % (label, name, sorted(hexes)))
            if exact and sorted(hexes) != sorted(want[name]):
                self.problems.append("%s: %s fetched %s, expected exactly %s"
                                     % (label, name, sorted(h[:12] for h in hexes), sorted(h[:12] for h in want[name])))
            if not exact and not set(hexes) <= set(want[name]):
                self.problems.append("%s: %s fetched %s, not among the streams it lacked %s"
                                     % (label, name, sorted(hexes), sorted(want[name])))
            sent[name] = sum(e["bytes"] for e in reqs)
        return sent


def streams(manifest):
    """{name: (stream sha256, stream size)} of a split manifest, "k0s" for the stripped executable."""
    out = dict((f["name"], (f["stream_sha256"], f["stream_size"])) for f in manifest["files"])
    k = manifest["stripped_executable"]
    out["k0s"] = (k["stream_sha256"], k["stream_size"])
    return out


def changed(old, new):
    """{stream sha256: size} a host holding ``old`` lacks for ``new`` (by content, as the host's query decides)."""
    have = set(f["sha256"] for f in old["files"]) | {old["stripped_executable"]["sha256"]}
    out = dict((f["stream_sha256"], f["stream_size"]) for f in new["files"] if f["sha256"] not in have)
    k = new["stripped_executable"]
    if k["sha256"] not in have:
        out[k["stream_sha256"]] = k["stream_size"]
    return out


def check_tree(lab, manifest):
    """The published tree holds this release: its index and every blob, each named by the sha256 of its bytes."""
    sid = manifest["stripped_executable"]["sha256"]
    index = lab.tree / "releases" / ("%s.json" % sid)
    if not index.is_file():
        raise Failure("the published tree lacks %s" % index)
    listed = json.loads((lab.tree / "index.json").read_text())
    if sid not in json.dumps(listed):
        lab.problems.append("index.json does not list the release %s" % sid)
    for name, (hexname, size) in sorted(streams(manifest).items()):
        blob = lab.tree / "blobs" / "sha256" / hexname
        if not blob.is_file() or blob.stat().st_size != size or hashlib.sha256(blob.read_bytes()).hexdigest() != hexname:
            lab.problems.append("published blob of %s (%s) is missing or not its sha256/size" % (name, blob))


def publish(lab, executable):
    argv = [str(VENV_BIN / "ansible-playbook"), str(REPO / "playbooks" / "publish_k0s.yml"),
            "-e", "k0s_executable=%s" % executable, "-e", "k0s_publish_dest=%s" % lab.tree]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=str(REPO), env=dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK="default"),
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise Failure("publish_k0s %s failed (rc %d): %s" % (executable, p.returncode, p.stdout[-3000:]))
    return time.monotonic() - t0


def on_every_host(lab, versions, label, want=None):
    """Each host holds one complete release of ``versions``; with ``want`` exactly that one."""
    for h in lab.hosts:
        got = check_one_version(h, versions, lab.problems, label)
        if want and got != want:
            lab.problems.append("%s after %s: holds %s, expected %s" % (h.name, label, got, want))


def bad_copies(lab, bad_hashes):
    """{host: [paths]} of files whose sha256 is one of ``bad_hashes`` (store and Ansible's temporary dirs)."""
    found = {}
    for h in lab.hosts:
        out = h.sh("python3 -c '%s' '%s' %s /root/.ansible/tmp /tmp"
                   % (FIND_SHA.replace("'", "'\\''"), json.dumps(sorted(bad_hashes)), STORE))
        if json.loads(out):
            found[h.name] = json.loads(out)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", nargs="+", required=True, help="name=address:controller|worker")
    ap.add_argument("--v1", required=True, help="the converge's k0s executable")
    ap.add_argument("--v2", required=True, help="the upgrade's")
    ap.add_argument("--mirror-name", required=True)
    ap.add_argument("--mirror-ip", required=True)
    ap.add_argument("--mirror-dir", required=True, help="holds tree/ (published) and state/ (access.log, control.json)")
    ap.add_argument("--settings", required=True, help="the scenario's k0s_distribution/k0s_mirror_* vars (JSON)")
    ap.add_argument("--kubeconfig", required=True, help="k0s_kubeconfig_path of the converge")
    ap.add_argument("--upgrade-playbook", default="deploy_k0s.yml")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pull-lab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lab = Lab(args, workdir)
    report, problems = lab.report, lab.problems
    t_start = time.monotonic()
    try:
        m1 = split_manifest(args.v1)
        versions = {"v1": expected_files(args.v1)}
        all1 = dict(streams(m1).values())

        # 1. What converge fetched: the whole log so far (prepare's probe came from the controller).
        lab.offset = 0
        entries = lab.drain_log()
        sent = lab.check_fetched("converge", entries, dict((h.name, all1) for h in lab.hosts))
        on_every_host(lab, versions, "converge", "v1")
        report.append("converge (fresh, pull): mirror sent %s bytes (streams %d bytes each); %d requests"
                      % (sent, sum(all1.values()), len(lab.per_host(entries)[lab.hosts[0].name])))

        # 2. The same deploy again: nothing changes and nobody asks the mirror anything.
        out, rc, rx, secs, entries = lab.run("rerun", args.v1)
        changes = dict((h.name, out["stats"][h.name]["changed"]) for h in lab.hosts)
        report.append("re-run (no change): changed %s, mirror requests %d, rx %s, %.1f s" % (changes, len(entries), rx, secs))
        if any(changes.values()) or entries:
            problems.append("re-run: changed %s, mirror requests %s (want 0 and none)" % (changes, entries))

        # 3. The new release published next to the old one.
        secs = publish(lab, args.v2)
        m2 = split_manifest(args.v2)
        versions["v2"] = expected_files(args.v2)
        check_tree(lab, m1)
        check_tree(lab, m2)
        up = changed(m1, m2)
        report.append("publish -v2: %.1f s; changed streams %s" % (secs, dict((k[:12], v) for k, v in up.items())))

        # 4. The upgrade: exactly the changed streams, once per host.
        extra = ["-e", "k0s_upgrade_drain=false", "-e", "k0s_upgrade_settle_seconds=3"] \
            if args.upgrade_playbook == "upgrade_k0s.yml" else []
        out, rc, rx, secs, entries = lab.run("upgrade", args.v2, extra, playbook=args.upgrade_playbook)
        sent = lab.check_fetched("upgrade", entries, dict((h.name, up) for h in lab.hosts))
        content = sum(up.values())
        for h in lab.hosts:
            ratio = sent[h.name] / float(content)
            report.append("upgrade (%s) %s: mirror sent %d bytes for %d in changed streams (%.3fx), rx %d, "
                          "uploaded by the controller %s, %.1f s"
                          % (args.upgrade_playbook, h.name, sent[h.name], content, ratio, rx[h.name], uploaded(out, h.name),
                             secs))
            if ratio > BUDGET:
                problems.append("upgrade: %s got %.3fx the changed streams from the mirror (budget %.2f)" % (h.name, ratio, BUDGET))
            if uploaded(out, h.name):
                problems.append("upgrade: the controller sent %s a bundle %s" % (h.name, uploaded(out, h.name)))
        on_every_host(lab, versions, "the upgrade", "v2")

        # 5. Corrupt: back to v1 needs v1's changed streams again (previous pruned); one of them is served corrupted.
        prune_to_current(lab.hosts)
        back = changed(m2, m1)
        victim = max(back, key=back.get)
        blob = (lab.tree / "blobs" / "sha256" / victim).read_bytes()
        bad_sha = hashlib.sha256(mirror_server.flipped(blob)).hexdigest()
        before = dict((h.name, service_state(h)) for h in lab.hosts)
        mirror_server.set_faults(lab.state, corrupt=[victim])
        out, rc, rx, secs, entries = lab.run("corrupt", args.v1, FORCE_SKEW, expect_ok=False)
        mirror_server.set_faults(lab.state)
        msgs = dict((f["host"], str(f["msg"])) for f in failures(out))
        report.append("corrupt %s: rc %d in %.1f s; %s" % (victim[:12], rc, secs, json.dumps(msgs)[:600]))
        for h in lab.hosts:
            m = msgs.get(h.name, "")
            if rc == 0 or not all(s in m for s in (victim, bad_sha, args.mirror_ip)):
                problems.append("corrupt: %s: rc %d, message %r (want the stream %s, the URL and the sha256 %s)"
                                % (h.name, rc, m[:800], victim, bad_sha))
            if service_state(h) != before[h.name]:
                problems.append("corrupt: %s changed: %s -> %s" % (h.name, before[h.name], service_state(h)))
        served = [e for e in entries if e.get("fault") == "corrupt"]
        if sorted(set(e["client"] for e in served)) != sorted(h.address for h in lab.hosts):
            problems.append("corrupt: the corrupted stream went to %s, not to every host" % sorted(set(e["client"] for e in served)))
        left = bad_copies(lab, {bad_sha})
        if left:
            problems.append("corrupt: the corrupted bytes are still on hosts: %s" % left)
        report.append("  current, unit, running k0s unchanged on every host; corrupted bytes kept nowhere: %s" % (not left))

        # 6. Vanished: the mirror exits after its first request, mid-run.
        mirror_server.set_faults(lab.state, die_after=1)
        out, rc, rx, secs, entries = lab.run("vanished", args.v1, FORCE_SKEW, expect_ok=False)
        gone = not mirror_server.running(lab.mirror_name)
        msgs = dict((f["host"], str(f["msg"])) for f in failures(out))
        report.append("vanished mirror: rc %d in %.1f s, mirror stopped %s, %d request(s) served; %s"
                      % (rc, secs, gone, len(entries), json.dumps(msgs)[:600]))
        if rc == 0 or not gone or not msgs or not all(args.mirror_ip in m for m in msgs.values()):
            problems.append("vanished: rc %d, mirror stopped %s, messages %s (want failures naming the mirror)" % (rc, gone, msgs))
        on_every_host(lab, versions, "the vanished mirror")
        # 7. The mirror back, and the re-run is also the mixed run: fs-pull-1 push (host var), the others pull. Every
        # host converges; the pull hosts fetch only what they still lack (the vanished run may have left a verified
        # stream behind), each at most once; the push host gets its streams from the controller and asks the mirror
        # nothing.
        mirror_server.set_faults(lab.state)
        mirror_server.restart(lab.mirror_name, lab.mirror_ip)
        pusher = lab.hosts[0]
        hv = workdir / "inventory-mixed.yml"
        hv.write_text("all:\n  hosts:\n    %s:\n      k0s_distribution: push\n" % pusher.name)
        out, rc, rx, secs, entries = lab.run("back-mixed", args.v1, FORCE_SKEW, inventories=[hv])
        want = dict((h.name, {} if h is pusher else back) for h in lab.hosts)
        sent = lab.check_fetched("mirror back (mixed)", entries, want, exact=False)
        names = sorted(n for n, (hx, size) in streams(m1).items() if hx in back)
        report.append("mirror back, mixed re-run (%s push, the others pull): converged in %.1f s" % (pusher.name, secs))
        for h in lab.hosts:
            got = uploaded(out, h.name)
            if (h is pusher and (not got or not set(got) <= set(names))) or (h is not pusher and got):
                problems.append("mixed: the controller sent %s %s (want %s)" % (h.name, got, names if h is pusher else []))
            report.append("  mixed run %s (%s): controller bundle %s, mirror %d bytes, rx %d, rx beyond the mirror's "
                          "bytes %d" % (h.name, "push" if h is pusher else "pull", got, sent[h.name], rx[h.name],
                                        rx[h.name] - sent[h.name]))
        if any(rx[h.name] - sent[h.name] >= min(back.values()) for h in lab.hosts if h is not pusher):
            problems.append("mixed: a pull host received at least a stream's size beyond the mirror's bytes: %s"
                            % dict((h.name, rx[h.name] - sent[h.name]) for h in lab.hosts))
        on_every_host(lab, versions, "the mixed re-run with the mirror back", "v1")
    except Failure as e:
        problems.append(str(e))
    finally:
        mirror_server.set_faults(lab.state)
    log("\n".join(report))
    log("pull lab: %.0f s" % (time.monotonic() - t_start))
    if problems:
        log("FAILED:\n" + "\n".join(problems))
        return 1
    log("pull: fresh, re-run (no request), upgrade (only the changed streams), corrupt stream refused with nothing "
        "switched, vanished mirror then converged in a mixed push/pull run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
