"""A no-change overlay re-run: what `payload_split` costs when an image tree already holds the split.

The overlay (playbooks/tasks/overlay.yml) runs payload_split with dest=<root>/usr/libexec/k0s,
stripped_executable=<root>/usr/bin/k0s and pin_mtime on. A re-run with nothing changed must write nothing
(issue 13 item 8): it derives the facts from the executable and compares what is there. This times, per
fixture, a `k0s-payload split` process (interpreter start included) re-run into such a tree, next to two
baselines measured in the same run, rounds alternating:
  * `sha256sum` of the same files (the least any content check costs), and
  * the first write of the same tree (a fresh directory).
It also checks that the re-run created and removed nothing (the tree's directory mtimes are unchanged).

  python3 benchmarks/nochange_bench.py [--rounds 5] [--fixtures .cache/fixtures] [--cli scripts/k0s-payload]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def split_argv(cli, exe, root):
    return [sys.executable, cli, "split", exe, "--dest", os.path.join(root, "usr", "libexec", "k0s"),
            "--stripped", os.path.join(root, "usr", "bin", "k0s")]


def tree_files(root):
    libexec = os.path.join(root, "usr", "libexec", "k0s")
    return [os.path.join(libexec, n) for n in sorted(os.listdir(libexec))] + [os.path.join(root, "usr", "bin", "k0s")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fixtures", default=os.path.join(REPO, ".cache", "fixtures"))
    parser.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench-nochange"))
    parser.add_argument("--cli", default=os.path.join(REPO, "scripts", "k0s-payload"),
                        help="k0s-payload to time (e.g. one exported from an older commit, for before/after)")
    args = parser.parse_args()
    rows = []
    for fixture in ("k0s-zip", "k0s-legacy"):
        exe = os.path.join(args.fixtures, fixture)
        if not os.path.exists(exe):
            raise SystemExit("%s missing: run `make fixtures` first" % exe)
        kept = os.path.join(args.workdir, fixture, "overlay")
        shutil.rmtree(kept, ignore_errors=True)
        subprocess.run(split_argv(args.cli, exe, kept), check=True, stdout=subprocess.DEVNULL)
        dirs = [os.path.join(kept, "usr", "libexec", "k0s"), os.path.join(kept, "usr", "bin")]
        rerun, hashing, first, touched = [], [], [], 0
        for dummy in range(args.rounds):
            for d in dirs:
                os.utime(d, ns=(10 ** 18, 10 ** 18))
            rerun.append(timed(split_argv(args.cli, exe, kept)))
            touched += sum(os.stat(d).st_mtime_ns != 10 ** 18 for d in dirs)
            hashing.append(timed(["sha256sum"] + tree_files(kept)))
            scratch = os.path.join(args.workdir, fixture, "scratch")
            shutil.rmtree(scratch, ignore_errors=True)
            first.append(timed(split_argv(args.cli, exe, scratch)))
        inflated = sum(os.path.getsize(p) for p in tree_files(kept))
        rows.append((fixture, inflated / 1e6, statistics.median(rerun), statistics.median(hashing),
                     statistics.median(first), touched))
    shutil.rmtree(args.workdir, ignore_errors=True)
    machine = (os.uname().nodename, os.cpu_count(), os.getloadavg()[0], args.rounds, args.cli)
    print("machine: %s, %d cores, load %.2f; %d rounds; %s" % machine)
    print("| fixture | tree | no-change re-run | sha256sum of the tree | ratio | first write | ratio | dirs touched |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fixture, size, rerun_s, hash_s, first_s, touched in rows:
        print("| %s | %.1f MB | %.3f s | %.3f s | %.2fx | %.3f s | %.2fx | %d |" % (
            fixture, size, rerun_s, hash_s, rerun_s / hash_s, first_s, rerun_s / first_s, touched))
    if any(row[-1] for row in rows):
        raise SystemExit("a no-change re-run created or removed files in the overlay tree")


if __name__ == "__main__":
    main()
