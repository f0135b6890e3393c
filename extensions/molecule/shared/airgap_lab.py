"""Airgap image bundles on real hosts (issue 13 item 5; the default scenario's side_effect, after fleetlab bytes).

Over ssh to each container, with eth0's rx_bytes read inside it before and after each deploy_k0s run:

1. deploy with k0s_airgap_bundles=[apps-v1.tar]: each worker receives one bundle (bundle_bytes >= its
   compressed stream, rx at least that), the controller nothing; the running test k0s worker reports
   the import of <data-dir>/images/apps-v1.tar with the stable mtime (fake-cluster/images-status.json);
2. the same again: changed=0 on every host, nothing uploaded, rx below the stream size, no re-import;
3. apps-v2.tar instead: it is sent, apps-v1.tar removed, the test k0s imports v2 and unpins v1;
3b. upgrade_k0s (same k0s, hosts skip their restart) with apps-v3.tar: staged while k0s runs, then
   apps-v2.tar removed once each host is through the upgrade (kept while staging, for a rollback), the
   test k0s imports v3 and unpins v2;
4. k0s_airgap_bundles=[]: the bundles fleetsplit placed are removed (a file it did not place stays).

The tars are built here from real files (the fixtures' k0s executables and /bin/ls), never committed.
"""
import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleetlab import (FIXTURES, NO_JOINS, REPO, Failure, Host, log, measured_run, run_playbook,  # noqa: E402
                      every_result, setup_ssh, task_results, write_inventory)

sys.path.insert(0, str(REPO / ".build" / "collections"))
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_images import stable_mtime_ns  # noqa: E402
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file  # noqa: E402

PRESENT = "Send the image bundles the worker lacks and remove the ones no longer wanted"
# A prefix: "... once for the play)", or "... once per image set)" looped once per architecture of a mixed fleet.
BUNDLES = "Bundle the image streams each worker lacks (on the controller, once"
IMAGES = "/var/lib/k0s/images"
STATUS = "/var/lib/k0s/fake-cluster/images-status.json"
PRUNE = "Remove the image bundles only the previous release wanted"


def make_tar(path, *members):
    with tarfile.open(str(path), "w") as t:
        for m in members:
            t.add(str(m), arcname=os.path.basename(str(m)))
    return str(path)


def deploy(hosts, inv, bundles):
    return measured_run(hosts, inv, FIXTURES / "k0s-zip", NO_JOINS + ("-e", json.dumps({"k0s_airgap_bundles": bundles})))


def upgrade(hosts, inv, bundles):
    """upgrade_k0s.yml with the deployed k0s and another bundle set (no drain: these hosts form no cluster)."""
    return run_playbook(inv, FIXTURES / "k0s-zip", ("-e", "k0s_upgrade_drain=false") + NO_JOINS
                        + ("-e", json.dumps({"k0s_airgap_bundles": bundles})), playbook="upgrade_k0s.yml")


def all_results(out, name):
    """{host: result} of every run of the task called ``name`` (upgrade_k0s runs it once per batch play);
    a skipped run never hides a real one."""
    found = {}
    for play in out.get("plays", []):
        for task in play.get("tasks", []):
            if task["task"]["name"] == name or task["task"]["name"].endswith(" : " + name):
                for host, res in task["hosts"].items():
                    if not res.get("skipped") or host not in found:
                        found[host] = res
    return found


def sent(out, host):
    """(bundle_bytes, member names) the k0s_images action uploaded to ``host``, (0, []) when nothing."""
    got = task_results(out, PRESENT).get(host, {}).get("bundle_bytes") or 0
    members = []
    for name, _host, res in every_result(out):
        if BUNDLES in name and host in (res.get("bundles") or {}):
            members = sorted(m["name"] for m in res["bundles"][host]["members"])
    return got, members if got else []


def listing(h):
    return sorted(h.sh("ls -A %s 2>/dev/null || true" % IMAGES).split())


def worker_status(h, want_present, timeout=20):
    """The test k0s worker's importer status once it shows ``want_present`` (paths), else a Failure."""
    deadline = time.monotonic() + timeout
    st = {}
    while time.monotonic() < deadline:
        raw = h.sh("cat %s 2>/dev/null || true" % STATUS)
        st = json.loads(raw) if raw.strip() else {}
        if sorted(b["path"] for b in st.get("present") or []) == sorted(want_present):
            return st
        time.sleep(0.5)
    raise Failure("%s: the test k0s worker does not report %s as imported: %s" % (h.name, want_present, st))


def cmd_airgap(args):
    hosts = [Host(s) for s in args.hosts]
    workers = [h for h in hosts if h.role == "worker"]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inv = write_inventory(hosts, workdir, "ssh", setup_ssh(hosts, workdir))
    v1 = make_tar(workdir / "apps-v1.tar", FIXTURES / "k0s-small-zip", "/bin/ls")
    v2 = make_tar(workdir / "apps-v2.tar", FIXTURES / "k0s-small-legacy", "/bin/ls")
    problems, report = [], []
    for h in hosts:
        h.sh("rm -rf %s /var/lib/k0s/.fleetsplit-images.json" % IMAGES)

    # 1. fresh
    out, rx, secs = deploy(hosts, inv, [v1])
    for h in hosts:
        got, members = sent(out, h.name)
        report.append("%-28s %-14s rx %10d bytes  bundle %10d bytes %s" % ("airgap fresh (apps-v1.tar)", h.name, rx[h.name], got, members))
        if h.role == "worker":
            if members != ["apps-v1.tar"] or rx[h.name] < got or got <= 0:
                problems.append("%s: fresh: sent %s (%d bytes, rx %d), expected apps-v1.tar once" % (h.name, members, got, rx[h.name]))
            if listing(h) != ["apps-v1.tar"]:
                problems.append("%s: fresh: images/ holds %s" % (h.name, listing(h)))
        elif got or listing(h):
            problems.append("%s (controller): got %d bundle bytes, images/ %s; expected nothing" % (h.name, got, listing(h)))
    report.append("%-28s (wall %.1f s)" % ("", secs))
    size1 = max(sent(out, w.name)[0] for w in workers)
    path1 = IMAGES + "/apps-v1.tar"
    for h in workers:
        st = worker_status(h, [path1])
        b = st["present"][0]
        if b["mtime_ns"] != stable_mtime_ns(sha256_file(v1)) or b["size"] != os.path.getsize(v1):
            problems.append("%s: test k0s imported %s, expected size %d mtime %d" % (h.name, b, os.path.getsize(v1), stable_mtime_ns(sha256_file(v1))))
        report.append("%-28s %-14s test k0s: %s" % ("", h.name, [e for e in st["events"] if "apps-" in e]))
    imports = dict((h.name, worker_status(h, [path1])["imports"]) for h in workers)

    # 2. no change
    out, rx, secs = deploy(hosts, inv, [v1])
    for h in hosts:
        got, members = sent(out, h.name)
        report.append("%-28s %-14s rx %10d bytes  bundle %10d bytes" % ("airgap re-run (no change)", h.name, rx[h.name], got))
        if out["stats"][h.name]["changed"] != 0 or got or rx[h.name] >= size1:
            problems.append("%s: re-run: changed=%d, bundle %d bytes, rx %d (stream %d)" % (h.name, out["stats"][h.name]["changed"], got, rx[h.name], size1))
    time.sleep(3)   # two passes of the test k0s importer
    for h in workers:
        if worker_status(h, [path1])["imports"] != imports[h.name]:
            problems.append("%s: the re-run made the test k0s import again" % h.name)

    # 3. new bundle set
    for h in workers:
        h.sh("echo operator > %s/operator.tar" % IMAGES)
    out, rx, secs = deploy(hosts, inv, [v2])
    path2 = IMAGES + "/apps-v2.tar"
    for h in hosts:
        got, members = sent(out, h.name)
        report.append("%-28s %-14s rx %10d bytes  bundle %10d bytes %s" % ("airgap new set (apps-v2.tar)", h.name, rx[h.name], got, members))
        if h.role == "worker":
            if members != ["apps-v2.tar"] or listing(h) != ["apps-v2.tar", "operator.tar"]:
                problems.append("%s: v2: sent %s, images/ %s" % (h.name, members, listing(h)))
    for h in workers:
        st = worker_status(h, [path2, IMAGES + "/operator.tar"])
        if "unpin " + path1 not in st["events"]:
            problems.append("%s: the test k0s did not unpin %s: %s" % (h.name, path1, st["events"]))
        report.append("%-28s %-14s test k0s: %s" % ("", h.name, [e for e in st["events"] if "apps-" in e]))

    # 3b. the upgrade path: staged with the old set kept, the old set removed after the host's turn
    v3 = make_tar(workdir / "apps-v3.tar", FIXTURES / "k0s-small-zip", "/bin/cat")
    out = upgrade(hosts, inv, [v3])
    path3 = IMAGES + "/apps-v3.tar"
    staged = all_results(out, PRESENT)
    pruned = all_results(out, PRUNE)
    for h in workers:
        kept = (staged.get(h.name) or {}).get("kept_stale")
        report.append("%-28s %-14s staged kept %s, then removed %s; images/ %s"
                      % ("airgap upgrade (apps-v3.tar)", h.name, kept, (pruned.get(h.name) or {}).get("stale"), listing(h)))
        if kept != ["apps-v2.tar"] or (pruned.get(h.name) or {}).get("stale") != ["apps-v2.tar"]:
            problems.append("%s: upgrade: staging kept %s, the prune removed %s; expected apps-v2.tar both times"
                            % (h.name, kept, (pruned.get(h.name) or {}).get("stale")))
        if listing(h) != ["apps-v3.tar", "operator.tar"]:
            problems.append("%s: upgrade: images/ holds %s" % (h.name, listing(h)))
    for h in workers:
        st = worker_status(h, [path3, IMAGES + "/operator.tar"])
        if "unpin " + path2 not in st["events"]:
            problems.append("%s: the test k0s did not unpin %s after the upgrade: %s" % (h.name, path2, st["events"]))

    # 4. none wanted: what fleetsplit placed goes, the operator's file stays
    out, rx, secs = deploy(hosts, inv, [])
    for h in workers:
        if listing(h) != ["operator.tar"]:
            problems.append("%s: k0s_airgap_bundles=[] left %s" % (h.name, listing(h)))
        h.sh("rm -f %s/operator.tar" % IMAGES)
    log("\n".join(report))
    if problems:
        raise Failure("\n".join(problems))
    log("airgap: one bundle per worker on a change, nothing on a re-run, old bundles removed and unpinned")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", nargs="+", required=True, help="name=address:controller|worker")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="airgap-lab-")
    try:
        cmd_airgap(args)
    except Failure as e:
        log("FAILED: %s" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
