"""Fleet benchmark: fleetsplit.k0s against copying the whole k0s, on real podman hosts over ssh.

One command (`make bench-fleet`) creates Debian/systemd hosts fs-bench-N (10.89.77.(100+N)) on the
internal network fleetsplit-test, reaches them over ssh (so every byte crosses a network
interface), and measures in the same run:

  1. fresh deploy to 3 hosts: playbooks/deploy_k0s.yml vs benchmarks/baseline/copy-whole-k0s.yml;
  2. no-op re-run of each, plus a no-op re-run of benchmarks/baseline/copy-split-files.yml
     (per-file ansible.builtin.copy loop over the split files);
  3. upgrade where 2 binaries changed (fixture k0s-zip -> k0s-zip-v2: runc, kubectl and the
     stripped k0s differ), each way;
  4. fleet growth: fresh deploy_k0s.yml on 1, 3, 6 and 12 hosts (forks = hosts);
  5. push vs pull (issue 17) on 3 and 12 hosts (--pull): fresh deploy and upgrade with k0s_distribution push
     and pull, the hosts pulling from fs-bench-mirror (10.89.77.140: extensions/molecule/shared/mirror_server.py
     in the same Debian image, serving what playbooks/publish_k0s.yml wrote): the controller's egress (what the
     hosts received minus the mirror's eth0 tx), the mirror's bytes (wire and body, per host from its access
     log), wall time, the controller's CPU (ansible-playbook's process tree and its ssh masters), and a
     projection to 1,000 hosts;
  and the controller-side split (benchmarks/split_bench.py).

Per run: wall time of the ansible-playbook process, bytes received per host (eth0 rx_bytes read
inside each container with podman exec before and after; includes ssh/TCP framing, facts and
module code), and changed count per host from PLAY RECAP. After every run each host must report
the expected k0s version as running (`k0s status`), untimed. The results table in
docs/performance.md is rewritten between its markers.

  python3 benchmarks/fleet_bench.py [--reps 3] [--growth 1,3,6,12] [--pull 3,12,24] [--only-pull] [--quick] [--keep] [--no-doc]

Needs root, podman and the images from scripts/prepare-test-hosts; `make bench-fleet` prepares all.
"""
import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
sys.path.insert(0, os.path.join(REPO, "tests"))
import hostlab  # noqa: E402  (tests/hostlab.py: exec, rx counter and ssh key of a test host)
import hostnet  # noqa: E402  (tests/hostnet.py: the route check before any ssh connection)
sys.path.insert(0, os.path.join(REPO, "extensions", "molecule", "shared"))
import mirror_server  # noqa: E402  (the pull tests' mirror: a container serving the published tree, access log)
IMAGE = "localhost/fleetsplit-debian-systemd:bookworm"
NETWORK = "fleetsplit-test"
NAME = "fs-bench-%d"
FIRST_OCTET = 100           # fs-bench-N is 10.89.77.(100+N); the project reserves .101-.130
MAX_HOSTS = 30
DEPLOY = os.path.join(REPO, "playbooks", "deploy_k0s.yml")
WHOLE = os.path.join(REPO, "benchmarks", "baseline", "copy-whole-k0s.yml")
PERFILE = os.path.join(REPO, "benchmarks", "baseline", "copy-split-files.yml")
PUBLISH = os.path.join(REPO, "playbooks", "publish_k0s.yml")
MIRROR_NAME, MIRROR_IP = "fs-bench-mirror", "10.89.77.140"   # the pull runs' mirror (issue 17)
DOC = os.path.join(REPO, "docs", "performance.md")
BEGIN, END = "<!-- fleet-bench:begin -->", "<!-- fleet-bench:end -->"
# -ssh-C: the same with ssh compression (Ansible's default ssh_args carry -C; this benchmark's ssh_args do not).
WAYS = ("push", "pull", "push-ssh-C", "pull-ssh-C")
PULL_BEGIN, PULL_END = "<!-- fleet-bench-pull:begin -->", "<!-- fleet-bench-pull:end -->"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
METHODS = {"split": DEPLOY, "whole": WHOLE, "perfile": PERFILE}
LABELS = {"split": "deploy_k0s.yml (split)", "whole": "copy whole k0s (baseline)",
          "perfile": "per-file copy loop"}


class BenchError(Exception):
    pass


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(argv, check=True, timeout=600, **kw):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout, **kw, check=False)
    if check and proc.returncode != 0:
        raise BenchError("%s exited %d:\n%s%s" % (" ".join(map(shlex.quote, argv)), proc.returncode,
                                                  proc.stdout[-2000:], proc.stderr[-2000:]))
    return proc


def pmap(fn, items, workers=6):
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def nofile_limit():
    # Root here may lack CAP_SYS_RESOURCE: stay at or below the hard limit (as the molecule config does).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = int(os.environ.get("FLEETSPLIT_NOFILE", "20000"))
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


# ------------------------------------------------------------------------------------------ hosts

class Fleet:
    def __init__(self, count, workdir):
        if not 1 <= count <= MAX_HOSTS:
            raise BenchError("host count must be 1..%d (addresses 10.89.77.101-.130), got %d" % (MAX_HOSTS, count))
        self.count = count
        self.workdir = workdir
        self.key = os.path.join(workdir, "id_ed25519")
        self.names = [NAME % i for i in range(1, count + 1)]

    @staticmethod
    def addr(name):
        return "10.89.77.%d" % (FIRST_OCTET + int(name.rsplit("-", 1)[1]))

    def exec(self, name, script, check=True, timeout=120):
        p = hostlab.podman_exec(name, script, timeout=timeout)
        if check and p.returncode != 0:
            raise BenchError("%s: `%s` exited %d: %s" % (name, script, p.returncode, p.stderr[-2000:]))
        return p

    def destroy(self, names=None):
        # Only our own names; never other scenarios' containers.
        names = names or [NAME % i for i in range(1, MAX_HOSTS + 1)]
        existing = run(["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
        mine = [n for n in names if n in existing]
        if mine:
            run(["podman", "rm", "-f", "-t", "2"] + mine, timeout=300)

    def create(self):
        pub = hostlab.ensure_key(self.key, "fleetsplit-bench")
        self.destroy()
        nofile = nofile_limit()
        hosts_args = []
        for n in self.names:
            hosts_args += ["--add-host", "%s:%s" % (n, self.addr(n))]
        for n in self.names:
            run(["podman", "run", "-d", "--name", n, "--hostname", n, "--runtime=runc", "--pull=never",
                 "--network=%s" % NETWORK, "--ip=%s" % self.addr(n),
                 "--ulimit", "nofile=%d:%d" % (nofile, nofile), "--ulimit", "nproc=32768:32768",
                 "--label", "fleetsplit.bench=1"] + hosts_args + [IMAGE, "/sbin/init"], timeout=120)
        hostnet.ensure_routes([self.addr(n) for n in self.names], network=NETWORK, log=log)
        pmap(lambda n: self._authorize(n, pub), self.names)

    def _authorize(self, name, pub):
        # sshd generates its host keys at first start (ssh.service drop-in): wait for it.
        deadline = time.time() + 90
        while True:
            p = self.exec(name, "systemctl is-active ssh.service", check=False)
            if p.stdout.strip() == "active":
                break
            if time.time() > deadline:
                raise BenchError("%s: ssh.service not active after 90 s (%s)" % (name, p.stdout.strip()))
            time.sleep(0.5)
        hostlab.authorize(name, pub)
        p = run(["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                 "root@" + self.addr(name), "hostname"], check=False)
        if p.returncode != 0 or p.stdout.strip() != name:
            raise BenchError("%s: ssh root@%s failed (%d): %s" % (name, self.addr(name), p.returncode, p.stderr))

    def rx_bytes(self, names):
        return dict(zip(names, pmap(hostlab.rx_bytes, names)))

    RESET = ("systemctl disable --now k0scontroller.service k0sworker.service >/dev/null 2>&1; "
             "rm -f /etc/systemd/system/k0scontroller.service /etc/systemd/system/k0sworker.service /usr/bin/k0s; "
             "rm -rf /var/lib/fleetsplit-k0s /usr/libexec/k0s /var/lib/k0s /etc/k0s /run/k0s; "
             "systemctl daemon-reload")

    def cpu_seconds(self, names):
        """CPU time each container's cgroup has used so far ({name: seconds}; empty when not found)."""
        if not hasattr(self, "_cg"):
            self._cg = {}
        out = {}
        for n in names:
            if n not in self._cg:
                cid = run(["podman", "inspect", "--format", "{{.Id}}", n]).stdout.strip()
                cands = glob.glob("/sys/fs/cgroup/cpuacct/**/*%s*/cpuacct.usage" % cid, recursive=True)
                cands += glob.glob("/sys/fs/cgroup/**/*%s*/cpu.stat" % cid, recursive=True)
                self._cg[n] = cands[0] if cands else None
            path = self._cg[n]
            if path is None:
                continue
            text = open(path).read()
            if path.endswith("cpuacct.usage"):
                out[n] = int(text) / 1e9
            else:
                out[n] = int(re.search(r"usage_usec (\d+)", text).group(1)) / 1e6
        return out

    def reset(self, names):
        """Back to a host that never saw k0s (faster than re-creating the container)."""
        pmap(lambda n: self.exec(n, self.RESET), names)

    def settle(self, names, version, timeout=120):
        """Every host must run the expected k0s (the fake k0s writes its status after staging); returns
        the seconds until the last one did (0.5 s resolution)."""
        start = time.perf_counter()

        def one(n):
            deadline = time.time() + timeout
            while True:
                p = self.exec(n, "k0s status 2>&1", check=False)
                if p.returncode == 0 and ("Version: %s\n" % version) in p.stdout:
                    return time.perf_counter() - start
                if time.time() > deadline:
                    raise BenchError("%s: k0s %s not running %d s after the run: %s"
                                     % (n, version, timeout, p.stdout.strip()))
                time.sleep(0.5)
        return max(pmap(one, names))


class BenchMirror:
    """The pull runs' mirror (issue 17): fs-bench-mirror (10.89.77.140), a container from the same Debian image
    running extensions/molecule/shared/mirror_server.py over <workdir>/mirror/tree (written by publish_k0s.yml);
    what it sent per run: eth0 tx bytes (framing included), body bytes per host from its access log, its CPU."""

    def __init__(self, fleet, workdir):
        self.fleet = fleet
        self.tree = os.path.join(workdir, "mirror", "tree")
        self.state = os.path.join(workdir, "mirror", "state")
        self.offset = 0
        self.url = None

    def start(self):
        shutil.rmtree(self.state, ignore_errors=True)
        self.url = mirror_server.start(MIRROR_NAME, MIRROR_IP, self.tree, self.state)
        self.offset = mirror_server.read_log(self.state)[1]   # past the readiness probe

    @staticmethod
    def stop():
        mirror_server.stop(MIRROR_NAME)

    def snapshot(self):
        self.tx0 = mirror_server.tx_bytes(MIRROR_NAME)
        self.cpu0 = self.fleet.cpu_seconds([MIRROR_NAME]).get(MIRROR_NAME)
        self.offset = mirror_server.read_log(self.state, self.offset)[1]

    def delta(self, names):
        time.sleep(0.5)   # a request is logged right after its last byte went out
        entries, self.offset = mirror_server.read_log(self.state, self.offset)
        by_ip = dict((Fleet.addr(n), n) for n in names)
        body = dict((n, 0) for n in names)
        for e in entries:
            if e["client"] in by_ip:
                body[by_ip[e["client"]]] += e["bytes"]
        bad = [e for e in entries if e["status"] not in (200, 206)]
        if bad:
            raise BenchError("the mirror answered %d request(s) with an error: %s" % (len(bad), bad[:3]))
        cpu1 = self.fleet.cpu_seconds([MIRROR_NAME]).get(MIRROR_NAME)
        return {"tx": mirror_server.tx_bytes(MIRROR_NAME) - self.tx0, "requests": len(entries), "body": body,
                "cpu_s": cpu1 - self.cpu0 if cpu1 is not None and self.cpu0 is not None else None}


# ------------------------------------------------------------------------------------------ ansible

class Ansible:
    def __init__(self, fleet, workdir, cache_dir):
        self.fleet = fleet
        self.workdir = workdir
        self.cache_dir = cache_dir
        self.seq = 0
        self.cfg = os.path.join(workdir, "ansible.cfg")
        # What a user would configure for a fleet: pipelining and persistent ssh connections.
        with open(self.cfg, "w") as f:
            f.write("[defaults]\ncollections_path = %s\nretry_files_enabled = false\nhost_key_checking = false\n"
                    "interpreter_python = auto_silent\nstdout_callback = default\n"
                    "[ssh_connection]\npipelining = true\n"
                    "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=no "
                    "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR\n"
                    % os.path.join(REPO, ".build", "collections"))
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)

    def inventory(self, names):
        path = os.path.join(self.workdir, "hosts-%d.yml" % len(names))

        def host(n):
            return {"ansible_host": Fleet.addr(n)}
        inv = {"all": {
            "vars": {"ansible_user": "root", "ansible_connection": "ssh",
                     "ansible_ssh_private_key_file": self.fleet.key,
                     "ansible_python_interpreter": "/usr/bin/python3",
                     # deploy_k0s's admin kubeconfig: into the workdir, not the repository (cwd)
                     "k0s_kubeconfig_path": os.path.join(self.workdir, "kubeconfig")},
            "children": {"k0s_controllers": {"hosts": {names[0]: host(names[0])}},
                         "k0s_workers": {"hosts": dict((n, host(n)) for n in names[1:])}}}}
        with open(path, "w") as f:
            json.dump(inv, f, indent=1)   # JSON is YAML
        return path

    def publish(self, executable, dest):
        """publish_k0s.yml on the controller: the executable's split (same cache) into the mirror's tree (untimed)."""
        env = dict(os.environ, ANSIBLE_CONFIG=self.cfg, ANSIBLE_FORCE_COLOR="0",
                   PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
        env.pop("ANSIBLE_COLLECTIONS_PATH", None)
        run([os.path.join(VENV_BIN, "ansible-playbook"), PUBLISH, "-e", "k0s_executable=%s" % executable,
             "-e", "k0s_publish_dest=%s" % dest, "-e", "k0s_controller_cache_dir=%s" % self.cache_dir],
            env=env, cwd=REPO, timeout=600)

    def play(self, playbook, names, executable, label, env_extra=None, extra_args=(), mirror=None):
        """One measured ansible-playbook run on ``names``: wall time, rx bytes per host, changed per host, the
        controller's CPU (the playbook's process tree and its ssh masters); with ``mirror`` (a BenchMirror) also
        what the mirror sent."""
        self.seq += 1
        tag = "%03d-%s" % (self.seq, label)
        cp_dir = os.path.join("/tmp", "fsb-cp-%d-%d" % (os.getpid(), self.seq))   # short: ControlPath length limit
        os.makedirs(cp_dir)
        env = dict(os.environ, ANSIBLE_CONFIG=self.cfg, ANSIBLE_SSH_CONTROL_PATH_DIR=cp_dir,
                   ANSIBLE_FORCE_COLOR="0", PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
        env.pop("ANSIBLE_COLLECTIONS_PATH", None)
        env.update(env_extra or {})
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventory(names),
                "-f", str(max(5, len(names))), playbook,
                "-e", "k0s_executable=%s" % executable, "-e", "k0s_controller_cache_dir=%s" % self.cache_dir]
        argv += list(extra_args)
        before = self.fleet.rx_bytes(names)
        if mirror:
            mirror.snapshot()
        cpu_before, busy_before = self.fleet.cpu_seconds(names), machine_busy_seconds()
        children_before = children_cpu_seconds()
        start = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO, check=False)
        wall = time.perf_counter() - start
        # The controller: ansible-playbook and every process it waited for (workers, ssh clients), plus the ssh
        # ControlMaster processes, which detach (they encrypt what the run sends), read before they are closed.
        controller_cpu = children_cpu_seconds() - children_before + ssh_master_cpu_seconds(cp_dir)
        busy = machine_busy_seconds() - busy_before
        cpu_after = self.fleet.cpu_seconds(names)
        after = self.fleet.rx_bytes(names)
        mirrored = mirror.delta(names) if mirror else None
        self._close_masters(cp_dir)
        logfile = os.path.join(self.workdir, "logs", tag + ".log")
        with open(logfile, "w") as f:
            f.write("$ %s\n\n%s" % (" ".join(map(shlex.quote, argv)), proc.stdout))
        if proc.returncode != 0:
            raise BenchError("%s failed (exit %d); log: %s\n%s" % (label, proc.returncode, logfile, proc.stdout[-3000:]))
        recap = dict((m.group(1), (int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(2))))
                     for m in RECAP_RE.finditer(proc.stdout))
        missing = [n for n in names if n not in recap]
        bad = [n for n in names if n in recap and (recap[n][1] or recap[n][2])]
        if missing or bad:
            raise BenchError("%s: PLAY RECAP lacks %s / reports failures on %s; log: %s" % (label, missing, bad, logfile))
        return {"label": label, "hosts": len(names), "wall_s": wall, "log": logfile,
                "rx": dict((n, after[n] - before[n]) for n in names),
                "changed": dict((n, recap[n][0]) for n in names), "profile": proc.stdout if env_extra else None,
                "ok": dict((n, recap[n][3]) for n in names),
                "busy_cpu_s": busy, "controller_cpu_s": controller_cpu, "mirror": mirrored,
                "host_cpu_s": (sum(cpu_after[n] - cpu_before[n] for n in names)
                               if len(cpu_after) == len(names) == len(cpu_before) else None)}

    @staticmethod
    def _close_masters(cp_dir):
        # Close this run's persistent connections now, so their teardown lands in no later measurement.
        for sock in os.listdir(cp_dir):
            run(["ssh", "-o", "ControlPath=%s" % os.path.join(cp_dir, sock), "-O", "exit", "x"], check=False)
        shutil.rmtree(cp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ numbers

def split_manifest(cache_dir, executable):
    sha = run(["sha256sum", executable]).stdout.split()[0]
    path = os.path.join(cache_dir, "split", sha, "streams", "manifest.json")
    with open(path) as f:
        return json.load(f)


def changed_stream_bytes(old, new):
    """Size of the gzip streams a host lacks after `old` when going to `new` (what must cross the wire)."""
    have = set((f["name"], f["sha256"]) for f in old["files"])
    names = [f["name"] for f in new["files"] if (f["name"], f["sha256"]) not in have]
    total = sum(f["stream_size"] for f in new["files"] if f["name"] in names)
    if old["stripped_executable"]["sha256"] != new["stripped_executable"]["sha256"]:
        names.append("k0s")
        total += new["stripped_executable"]["stream_size"]
    return names, total


def all_stream_bytes(m):
    return sum(f["stream_size"] for f in m["files"]) + m["stripped_executable"]["stream_size"]


def summarize(runs):
    walls = [r["wall_s"] for r in runs]
    per_host = [statistics.mean(r["rx"].values()) for r in runs]
    max_host = [max(r["rx"].values()) for r in runs]
    changed = sorted(set(c for r in runs for c in r["changed"].values()))
    return {"n": len(runs), "wall_median_s": statistics.median(walls),
            "ready_median_s": statistics.median(r["ready_s"] for r in runs), "wall_min_s": min(walls),
            "wall_max_s": max(walls), "rx_mean_per_host": statistics.median(per_host),
            "rx_max_host": statistics.median(max_host),
            "changed": "%d" % changed[0] if len(changed) == 1 else "%d-%d" % (changed[0], changed[-1]),
            "walls": walls}


def machine_busy_seconds():
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat, idle and iowait excluded)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """User + system CPU seconds of every child process this benchmark has waited for so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def ssh_master_cpu_seconds(cp_dir):
    """CPU seconds of the live ssh ControlMaster processes of one run (their command line names its ControlPath
    directory; they detach from ansible-playbook, so its rusage does not count them)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
            if cp_dir.encode() not in cmd or not cmd.startswith(b"ssh"):
                continue
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total


def mb(n):
    return "%.2f MB" % (n / 1e6)


# ------------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="fresh/no-op/upgrade cycles per method on 3 hosts")
    ap.add_argument("--perfile-reps", type=int, default=2, help="no-op re-runs of the per-file copy loop")
    ap.add_argument("--growth", default="1,3,6,12", help="host counts for the fleet-growth deploys")
    ap.add_argument("--growth-reps", type=int, default=1)
    ap.add_argument("--split-rounds", type=int, default=3, help="rounds of benchmarks/split_bench.py")
    ap.add_argument("--pull", default="3,12,24",
                    help="host counts for the push vs pull runs (fresh deploy and upgrade each way; '' = none)")
    ap.add_argument("--only-pull", action="store_true",
                    help="only the push vs pull runs (rewrites only their block of docs/performance.md)")
    ap.add_argument("--quick", action="store_true", help="harness check: 1 rep, growth 1,3, 1 split round, no doc")
    ap.add_argument("--keep", action="store_true", help="leave the fs-bench-* hosts running afterwards")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--profile", action="store_true",
                    help="add one profiled (ansible.posix.profile_tasks) split no-op and upgrade run")
    ap.add_argument("--fixtures", default=os.path.join(REPO, ".cache", "fixtures"))
    ap.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench-fleet"))
    args = ap.parse_args()
    if args.quick:
        args.reps, args.perfile_reps, args.growth, args.growth_reps, args.split_rounds, args.no_doc = \
            1, 1, "1,3", 1, 1, True
        args.pull = "3" if args.pull else ""
    growth = sorted(set(int(x) for x in args.growth.split(",")))
    pull_counts = sorted(set(int(x) for x in args.pull.split(",") if x.strip()))
    if args.only_pull:
        if not pull_counts:
            raise BenchError("--only-pull needs --pull host counts")
        growth = []
    if os.geteuid() != 0:
        raise BenchError("run as root (rootful podman test hosts)")
    v1, v2 = os.path.join(args.fixtures, "k0s-zip"), os.path.join(args.fixtures, "k0s-zip-v2")
    for exe in (v1, v2):
        if not os.path.exists(exe):
            raise BenchError("%s is missing: run `make fixtures` first" % exe)
    if not os.path.exists(os.path.join(VENV_BIN, "ansible-playbook")):
        raise BenchError("%s/ansible-playbook missing: run `make venv collection` first" % VENV_BIN)
    chk = run([os.path.join(REPO, "scripts", "prepare-test-hosts"), "--check"], check=False)
    if chk.returncode != 0:
        raise BenchError("test hosts not ready (run scripts/prepare-test-hosts):\n" + chk.stdout + chk.stderr)

    os.makedirs(args.workdir, exist_ok=True)
    shutil.rmtree(os.path.join(args.workdir, "logs"), ignore_errors=True)
    cache_dir = os.path.join(args.workdir, "controller-cache")
    t_all = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    load_before = open("/proc/loadavg").read().split()[:3]

    # Controller-side split first, while nothing else of ours runs.
    split_table, split_rows = [], []
    if not args.only_pull:
        log("controller-side split (benchmarks/split_bench.py, %d rounds)" % args.split_rounds)
        split_json = os.path.join(args.workdir, "split.json")
        sp = run([os.path.join(VENV_BIN, "python"), os.path.join(REPO, "benchmarks", "split_bench.py"), "--rounds",
                  str(args.split_rounds), "--fixtures", args.fixtures, "--json", split_json], timeout=1800)
        split_table = [l for l in sp.stdout.splitlines() if l.startswith("|")]
        split_rows = json.load(open(split_json))

    nhosts = max(growth + [3] + pull_counts)
    fleet = Fleet(nhosts, args.workdir)
    ans = Ansible(fleet, args.workdir, cache_dir)
    mirror = BenchMirror(fleet, args.workdir) if pull_counts else None
    results = {"runs": {}}

    def rec(key, playbook, names, exe, label, version):
        r = ans.play(playbook, names, exe, label)
        # Until every host runs the new k0s: the whole-k0s way unpacks its binaries after the play ends.
        r["ready_s"] = r["wall_s"] + fleet.settle(names, version)
        results["runs"].setdefault(key, []).append(r)
    try:
        log("creating %d hosts %s-%s" % (nhosts, fleet.names[0], fleet.names[-1]))
        t = time.perf_counter()
        fleet.create()
        log("hosts up and reachable over ssh in %.1f s" % (time.perf_counter() - t))
        h3 = fleet.names[:3]
        ver1 = split_version(v1)
        ver2 = split_version(v2)

        # Untimed warm-up: fills the controller split cache for both versions, so every measured run
        # does the same controller work (the first split of a release is what split_bench measures).
        log("warm-up (untimed, --check on one host): split cache for both fixtures")
        one = fleet.names[:1]
        ans.play(DEPLOY, one, v1, "warmup-v1", extra_args=["--check"])
        ans.play(DEPLOY, one, v2, "warmup-v2", extra_args=["--check"])
        m1, m2 = split_manifest(cache_dir, v1), split_manifest(cache_dir, v2)

        for rep in range(0 if args.only_pull else args.reps):
            # Alternate the order so slow drifts in machine load hit both ways alike.
            for method in (("split", "whole") if rep % 2 == 0 else ("whole", "split")):
                log("3 hosts, cycle %d/%d: %s fresh, no-op, upgrade" % (rep + 1, args.reps, method))
                fleet.reset(h3)
                rec((method, "fresh"), METHODS[method], h3, v1, method + "-fresh", ver1)
                rec((method, "noop"), METHODS[method], h3, v1, method + "-noop", ver1)
                rec((method, "upgrade"), METHODS[method], h3, v2, method + "-upgrade", ver2)

        if not args.only_pull:
            log("3 hosts: per-file copy loop fresh + %d no-op re-runs" % args.perfile_reps)
            fleet.reset(h3)
            rec(("perfile", "fresh"), PERFILE, h3, v1, "perfile-fresh", ver1)
            for dummy in range(args.perfile_reps):
                rec(("perfile", "noop"), PERFILE, h3, v1, "perfile-noop", ver1)

        for rep in range(args.growth_reps):
            for n in growth:
                names = fleet.names[:n]
                log("growth %d/%d: fresh deploy_k0s.yml on %d host(s)" % (rep + 1, args.growth_reps, n))
                fleet.reset(names)
                rec(("growth", n), DEPLOY, names, v1, "growth-%d" % n, ver1)

        if pull_counts:
            # Push vs pull (issue 17): the same fresh deploy and upgrade, the hosts fetching from the mirror or the
            # controller sending them the streams; the order alternates per host count.
            log("publishing k0s-zip and k0s-zip-v2 into the mirror's tree (untimed), starting %s" % MIRROR_NAME)
            shutil.rmtree(mirror.tree, ignore_errors=True)
            ans.publish(v1, mirror.tree)
            ans.publish(v2, mirror.tree)
            mirror.start()
            pull_vars = ["-e", "k0s_distribution=pull", "-e", "k0s_mirror_url=%s" % mirror.url]
            # With ssh compression the module code the controller sends (base64 of zipped Python) shrinks by
            # ~30 %; push's gzip streams do not, they only cost the compression's CPU.
            way_args = {"push": [], "pull": pull_vars, "push-ssh-C": ["-e", "ansible_ssh_extra_args=-C"],
                        "pull-ssh-C": pull_vars + ["-e", "ansible_ssh_extra_args=-C"]}
            for i, n in enumerate(pull_counts):
                names = fleet.names[:n]
                for way in (WAYS if i % 2 == 0 else WAYS[::-1]):
                    for kind, exe, version in (("fresh", v1, ver1), ("upgrade", v2, ver2)):
                        if kind == "fresh":
                            fleet.reset(names)
                        log("push vs pull, %d host(s): %s %s" % (n, way, kind))
                        r = ans.play(DEPLOY, names, exe, "%s-%s-%d" % (way, kind, n), mirror=mirror,
                                     extra_args=way_args[way])
                        r["ready_s"] = r["wall_s"] + fleet.settle(names, version)
                        results["runs"].setdefault((way, kind, n), []).append(r)

        if args.profile:
            prof = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "12"}
            log("profiled runs (ansible.posix.profile_tasks): split no-op and upgrade on 3 hosts")
            fleet.reset(h3)
            ans.play(DEPLOY, h3, v1, "profile-fresh")
            fleet.settle(h3, ver1)
            results["profile_noop"] = profile_lines(ans.play(DEPLOY, h3, v1, "profile-noop", prof))
            results["profile_upgrade"] = profile_lines(ans.play(DEPLOY, h3, v2, "profile-upgrade", prof))
            fleet.settle(h3, ver2)
    finally:
        if not args.keep:
            log("removing the fs-bench-* hosts")
            fleet.destroy()
            if mirror:
                mirror.stop()

    total = time.perf_counter() - t_all
    load_after = open("/proc/loadavg").read().split()[:3]
    # Raw numbers first, so a rendering problem loses nothing.
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"runs": dict(("/".join(map(str, k)), v) for k, v in results["runs"].items()),
                   "split": split_rows}, f, indent=1, default=str)
    head = header(started, total, load_before, load_after)
    if not args.only_pull:
        report = render(results, split_table, split_rows, m1, m2, growth, args, head)
        print(report)
        if not args.no_doc:
            update_doc(report)
            log("rewrote the results in %s" % os.path.relpath(DOC, REPO))
    if pull_counts:
        report = render_pull(results, m1, m2, pull_counts, args, head)
        print(report)
        if not args.no_doc:
            update_doc(report, PULL_BEGIN, PULL_END)
            log("rewrote the push vs pull results in %s" % os.path.relpath(DOC, REPO))
    log("done in %.0f s" % total)


def split_version(executable):
    p = run([executable, "version"])
    return p.stdout.strip()


def profile_lines(r):
    lines = r["profile"].splitlines()
    try:
        i = max(i for i, l in enumerate(lines) if l.startswith("=" * 20))
    except ValueError:
        return []
    return [l for l in lines[i + 1:] if l.strip()]


def header(started, total, load_before, load_after):
    uname = os.uname()
    return ("Measured %s on `%s` (%s %s, %d cores, %.1f GiB RAM); load average before/after: %s / %s; total %.0f s."
            % (started.strftime("%Y-%m-%d %H:%M %Z"), uname.nodename, uname.sysname, uname.release, os.cpu_count(),
               os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, " ".join(load_before),
               " ".join(load_after), total))


def render(results, split_table, split_rows, m1, m2, growth, args, head):
    runs = results["runs"]
    S = dict((k, summarize(v)) for k, v in runs.items())
    up_names, up_bytes = changed_stream_bytes(m1, m2)
    fresh_ref = all_stream_bytes(m1)
    whole_size = m1["file_size"]
    out = []
    w = out.append
    w(head)
    w("Command: `make bench-fleet` (`benchmarks/fleet_bench.py --reps %d --perfile-reps %d --growth %s "
      "--growth-reps %d --split-rounds %d`). Fixtures: `k0s-zip` (%s whole, %s in gzip streams incl. `k0s.gz`) "
      "-> `k0s-zip-v2` (changed: %s, %s in streams)."
      % (args.reps, args.perfile_reps, ",".join(map(str, growth)), args.growth_reps, args.split_rounds,
         mb(whole_size), mb(fresh_ref), ", ".join(up_names), mb(up_bytes)))
    w("")
    w("| scenario (3 hosts unless noted) | way | runs | wall median (min-max) | until k0s runs | bytes per host (mean) | changed per host |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    rows = [("fresh deploy", "split", "fresh"), ("fresh deploy", "whole", "fresh"), ("fresh deploy", "perfile", "fresh"),
            ("no-op re-run", "split", "noop"), ("no-op re-run", "whole", "noop"), ("no-op re-run", "perfile", "noop"),
            ("upgrade (runc, kubectl, k0s changed)", "split", "upgrade"),
            ("upgrade (runc, kubectl, k0s changed)", "whole", "upgrade")]
    for title, method, kind in rows:
        s = S.get((method, kind))
        if s:
            w("| %s | %s | %d | %.1f s (%.1f-%.1f) | %.1f s | %s | %s |" % (
                title, LABELS[method], s["n"], s["wall_median_s"], s["wall_min_s"], s["wall_max_s"],
                s["ready_median_s"], mb(s["rx_mean_per_host"]), s["changed"]))
    for n in growth:
        s = S.get(("growth", n))
        if s:
            w("| fleet growth: fresh deploy, %d host%s, forks %d | %s | %d | %.1f s (%.1f-%.1f) | %.1f s | %s | %s |"
              % (n, "" if n == 1 else "s", max(5, n), LABELS["split"], s["n"], s["wall_median_s"], s["wall_min_s"],
                 s["wall_max_s"], s["ready_median_s"], mb(s["rx_mean_per_host"]), s["changed"]))
    cpu_rows = [(n, runs.get(("growth", n), [])) for n in growth]
    cpu_rows = [(n, rs) for n, rs in cpu_rows if rs and all(r.get("host_cpu_s") is not None for r in rs)]
    if cpu_rows:
        w("")
        w("Where the CPU went in the growth runs (hosts and controller share this machine's %d cores; CPU seconds "
          "from /proc/stat for the whole machine and from each container's cgroup for the hosts):" % os.cpu_count())
        w("")
        w("| hosts | wall | machine busy | in the hosts | per host | controller and the rest | busy / (cores x wall) |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n, rs in cpu_rows:
            wall = statistics.median(r["wall_s"] for r in rs)
            busy = statistics.median(r["busy_cpu_s"] for r in rs)
            host = statistics.median(r["host_cpu_s"] for r in rs)
            w("| %d | %.1f s | %.1f s | %.1f s | %.2f s | %.1f s | %.0f %% |" % (
                n, wall, busy, host, host / n, busy - host, 100 * busy / (os.cpu_count() * wall)))
    w("")
    w("Controller-side split (`benchmarks/split_bench.py`, same run):")
    w("")
    w("\n".join(split_table))
    w("")
    w("| target | measured | result |")
    w("| --- | --- | --- |")

    def target(name, value, limit, detail):
        if value is None:
            w("| %s | not measured | - |" % name)
        else:
            w("| %s | %.2fx (%s) | %s |" % (name, value, detail, "met" if value <= limit else "**missed**"))

    sn, pn = S.get(("split", "noop")), S.get(("perfile", "noop"))
    target("no-op re-run <= 0.5x per-file copy loop no-op", sn and pn and sn["wall_median_s"] / pn["wall_median_s"], 0.5,
           sn and pn and "%.1f s vs %.1f s" % (sn["wall_median_s"], pn["wall_median_s"]))
    su = S.get(("split", "upgrade"))
    target("bytes per host, 2-binary upgrade <= 1.05x changed streams (+ k0s.gz)",
           su and su["rx_max_host"] / up_bytes, 1.05,
           su and "busiest host %s vs %s" % (mb(su["rx_max_host"]), mb(up_bytes)))
    if su and sn:
        # The same bound after subtracting what a no-op run of the same playbook receives (facts, module
        # code, ssh): what the upgrade adds on top of talking to the host at all.
        net = su["rx_max_host"] - sn["rx_max_host"]
        target("same, net of the no-op run's bytes", net / up_bytes, 1.05,
               "%s - %s no-op = %s vs %s" % (mb(su["rx_max_host"]), mb(sn["rx_max_host"]), mb(net), mb(up_bytes)))
    sf = S.get(("split", "fresh"))
    target("bytes per host, fresh deploy <= 1.05x all streams + k0s.gz (issue 3)",
           sf and sf["rx_max_host"] / fresh_ref, 1.05, sf and "busiest host %s vs %s" % (mb(sf["rx_max_host"]), mb(fresh_ref)))
    g_small, g_big = S.get(("growth", 3)), S.get(("growth", max(growth)))
    cpu_note = ""
    big_runs = runs.get(("growth", max(growth)), [])
    if big_runs and all(r.get("host_cpu_s") is not None for r in big_runs):
        busy = statistics.median(r["busy_cpu_s"] for r in big_runs)
        host = statistics.median(r["host_cpu_s"] for r in big_runs)
        cpu_note = "; machine %.0f %% busy, %.1f of its %.1f CPU-s in the hosts" % (
            100 * busy / (os.cpu_count() * g_big["wall_median_s"]), host, busy) if g_big else ""
    target("deploy time %d hosts <= 3x 3 hosts (growth runs)" % max(growth),
           g_small and g_big and max(growth) > 3 and g_big["wall_median_s"] / g_small["wall_median_s"], 3.0,
           g_small and g_big and "%.1f s vs %.1f s%s" % (g_big["wall_median_s"], g_small["wall_median_s"], cpu_note))
    for r in split_rows:
        # split_bench's own targets (issue 19), one row per format and deflate engine
        detail = "%.2f s vs %.2f s, peak RSS %.0f MiB" % (r["split_median_s"], r["baseline_median_s"], r["split_peak_rss_mib"])
        target("split <= %.1fx %s (%s, engine %s)" % (r["target"], r["baseline"], r["format"], r["engine"]), r["ratio"],
               r["target"], detail)
    for key in ("profile_noop", "profile_upgrade"):
        if results.get(key):
            w("")
            w("Slowest tasks, %s (ansible.posix.profile_tasks, 3 hosts):" % key.split("_")[1])
            w("")
            w("```")
            w("\n".join(results[key]))
            w("```")
    return "\n".join(out)


def pull_numbers(r):
    """Per-run figures of a push or pull run: the controller's egress is what the hosts received minus what the
    mirror sent (its eth0 tx, framing included), so the mirror's HTTP/TCP overhead is not counted as controller's."""
    n = r["hosts"]
    mirror = r["mirror"] or {"tx": 0, "body": {}, "requests": 0, "cpu_s": None}
    egress = sum(r["rx"].values()) - mirror["tx"]
    body = list(mirror["body"].values()) or [0]
    return {"n": n, "wall": r["wall_s"], "egress": egress, "egress_host": egress / n, "mirror_tx_host": mirror["tx"] / n,
            "body_host": statistics.mean(body), "body_max": max(body), "requests": mirror["requests"],
            "cpu": r["controller_cpu_s"], "cpu_host": r["controller_cpu_s"] / n, "mirror_cpu": mirror["cpu_s"],
            "tasks": statistics.mean(r["ok"].values()), "changed": sorted(set(r["changed"].values()))}


def render_pull(results, m1, m2, counts, args, head):
    runs = results["runs"]
    up_names, up_bytes = changed_stream_bytes(m1, m2)
    fresh_ref = all_stream_bytes(m1)
    P = {}
    for key, rs in runs.items():
        if len(key) == 3 and key[0] in WAYS:
            nums = [pull_numbers(r) for r in rs]
            P[key] = nums[len(nums) // 2] if len(nums) % 2 else nums[0]
    out = []
    w = out.append
    w(head)
    w("Command: `benchmarks/fleet_bench.py%s --pull %s`: `deploy_k0s.yml` with `k0s_distribution` push (default) or pull "
      "(`k0s_mirror_url` %s, the tree `publish_k0s.yml` wrote from the same controller cache); forks = max(5, hosts); "
      "fresh deploy of `k0s-zip` (%s in streams), then the upgrade to `k0s-zip-v2` (changed: %s, %s in streams)."
      % (" --only-pull" if args.only_pull else "", ",".join(map(str, counts)), mirror_server.url_of(MIRROR_IP),
         mb(fresh_ref), ", ".join(up_names), mb(up_bytes)))
    w("")
    w("| hosts | run | way | wall | controller egress per host | mirror egress per host (wire / body) | "
      "controller CPU (per host) | mirror CPU | tasks per host | changed per host |")
    w("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in counts:
        for kind in ("fresh", "upgrade"):
            for way in WAYS:
                x = P.get((way, kind, n))
                if not x:
                    continue
                w("| %d | %s | %s | %.1f s | %s | %s / %s | %.1f s (%.2f s) | %s | %.0f | %s |" % (
                    n, "fresh deploy" if kind == "fresh" else "upgrade", way, x["wall"], mb(x["egress_host"]),
                    mb(x["mirror_tx_host"]), mb(x["body_host"]), x["cpu"], x["cpu_host"],
                    "-" if x["mirror_cpu"] is None else "%.1f s" % x["mirror_cpu"], x["tasks"],
                    "-".join(map(str, x["changed"][:1] + x["changed"][1:][-1:]))))
    w("")
    w("| target | measured | result |")
    w("| --- | --- | --- |")
    big = max(counts)
    # The targets are stated at 12 hosts; a larger run (the machine's largest) gets its own rows.
    for n in [c for c in counts if c >= 12] or [big]:
        for push, pull in (("push", "pull"), ("push-ssh-C", "pull-ssh-C")):   # the same ssh settings on both sides
            for kind, title in (("fresh", "fresh deploy"), ("upgrade", "upgrade")):
                pu, pl = P.get((push, kind, n)), P.get((pull, kind, n))
                if pu and pl:
                    ratio = pl["egress"] / float(pu["egress"])
                    w("| controller egress, %s < 1%% of %s (%s, %d hosts) | %.2f %% (%s vs %s per host) | %s |"
                      % (pull, push, title, n, 100 * ratio, mb(pl["egress_host"]), mb(pu["egress_host"]),
                         "met" if ratio < 0.01 else "**missed**"))
        for kind, ref, title in (("upgrade", up_bytes, "changed streams"), ("fresh", fresh_ref, "all streams")):
            pl = P.get(("pull", kind, n)) or P.get(("pull-ssh-C", kind, n))
            if pl and ref:
                ratio = pl["body_max"] / float(ref)
                w("| mirror bytes per host <= 1.05x %s (pull %s, %d hosts, busiest host) | %.3fx (%s vs %s; on the "
                  "wire %s per host) | %s |" % (title, kind, n, ratio, mb(pl["body_max"]), mb(ref),
                                                mb(pl["mirror_tx_host"]), "met" if ratio <= 1.05 else "**missed**"))
    # Projection: per-host costs from the measured runs (the controller's CPU as a line through the smallest and
    # the largest host count, so its per-run fixed part is not multiplied).
    small = min(counts)
    w("")
    w("Projected to 1,000 hosts from these runs (fresh deploy; controller CPU as fixed + per host, fitted through "
      "%d and %d hosts; bytes per host from the %d-host run):" % (small, big, big))
    w("")
    w("| way | controller egress | mirror egress | controller CPU per host | per host-task | controller CPU, 1,000 hosts "
      "| controller egress time at 1 Gbit/s |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for way in WAYS:
        a, b = P.get((way, "fresh", small)), P.get((way, "fresh", big))
        if not (a and b):
            continue
        slope = (b["cpu"] - a["cpu"]) / float(big - small) if big > small else b["cpu_host"]
        fixed = b["cpu"] - slope * big
        w("| %s | %.1f GB | %.1f GB | %.2f s | %.3f s | %.0f s (%.1f min on 1 core) | %.0f s |" % (
            way, 1000 * b["egress_host"] / 1e9, 1000 * b["mirror_tx_host"] / 1e9, slope, slope / max(b["tasks"], 1),
            fixed + 1000 * slope, (fixed + 1000 * slope) / 60, 1000 * b["egress_host"] * 8 / 1e9))
    return "\n".join(out)


def update_doc(report, begin=BEGIN, end=END):
    if not os.path.exists(DOC):
        raise BenchError("%s is missing (it holds the %s ... %s markers)" % (DOC, begin, end))
    text = open(DOC).read()
    if begin not in text or end not in text:
        raise BenchError("%s lacks the markers %s and %s" % (DOC, begin, end))
    head, rest = text.split(begin, 1)
    dummy, tail = rest.split(end, 1)
    tmp = DOC + ".tmp"
    with open(tmp, "w") as f:
        f.write(head + begin + "\n" + report + "\n" + end + tail)
    os.rename(tmp, DOC)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit("fleet_bench: error: %s" % e)
