"""k3s split speed against `zstd -dc | tar -x` of the same embedded archive, measured in the same run.

For the k3s fixture (tests/fixtures, built by `make fixtures`):
  data dir:  `k0s-payload split k3s --dest DIR` (a whole process: interpreter start, ELF and embed table, name hash,
             one verifying pass over the tar, then the tree written as k3s extracts it, links, current)
             next to `zstd -dc --long=25 archive.tar.zst | tar -x -C DIR` (archive cut out beforehand, untimed);
  streams:   `k0s-payload split k3s --streams DIR` (what the k3s role does: one gzip stream per distinct file and
             bin/k3s.gz), next to the same baseline;
  no change: the same split again into its existing outputs (every run re-derives the facts and compares).
Rounds alternate between the contenders so machine noise hits all alike; medians, CPU seconds and ratios are
printed. Peak RSS of each split process comes from wait4().

  python3 benchmarks/k3s_bench.py [--rounds 5] [--fixtures .cache/fixtures] [--workdir .cache/bench-k3s]
"""
import argparse
import json
import os
import shutil
import statistics
import sys

from split_bench import CLI, REPO, fresh, run, k0s_payload  # one process timer for every benchmark

CASES = (("data dir", "--dest"), ("streams", "--streams"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fixtures", default=os.path.join(REPO, ".cache", "fixtures"))
    parser.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench-k3s"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    exe = os.path.join(args.fixtures, "k3s")
    if not os.path.exists(exe):
        raise SystemExit("%s missing: run `make fixtures` first" % exe)
    info = k0s_payload.describe(k0s_payload.inspect(exe))
    archive = os.path.join(fresh(args.workdir), "archive.tar.zst")
    with open(exe, "rb") as f, open(archive, "wb") as out:
        f.seek(info["archive"]["offset"])
        out.write(f.read(info["archive"]["length"]))
    unpacked = sum(m["size"] for m in info["members"] if m["type"] == "file")
    times = dict((key, []) for key in ["baseline"] + [c for c, dummy in CASES] + ["no change"])
    cpu = dict((key, []) for key in times)
    rss = dict((key, []) for key in times)
    for dummy in range(args.rounds):
        out = fresh(os.path.join(args.workdir, "tar"))
        t, m, c = run(["sh", "-c", 'zstd -q -dc --long=25 "$1" | tar -x -C "$2"', "sh", archive, out])
        times["baseline"].append(t), cpu["baseline"].append(c), rss["baseline"].append(m)
        for case, flag in CASES:
            out = fresh(os.path.join(args.workdir, "ours"))
            t, m, c = run([sys.executable, CLI, "split", exe, flag, os.path.join(out, "o")])
            times[case].append(t), cpu[case].append(c), rss[case].append(m)
        # the streams split just made: a second run over it (what every no-change play pays)
        t, m, c = run([sys.executable, CLI, "split", exe, "--streams", os.path.join(out, "o")])
        times["no change"].append(t), cpu["no change"].append(c), rss["no change"].append(m)
    shutil.rmtree(args.workdir, ignore_errors=True)
    base, base_cpu = statistics.median(times["baseline"]), statistics.median(cpu["baseline"])
    rows = [{"case": key, "median_s": statistics.median(times[key]), "cpu_median_s": statistics.median(cpu[key]),
             "ratio": statistics.median(times[key]) / base, "cpu_ratio": statistics.median(cpu[key]) / base_cpu,
             "peak_rss_mib": max(rss[key]) / 1024.0, "runs": times[key]} for key in times]
    print("machine: %s, %d cores, load average %.2f; %d rounds; k3s fixture %s: %.1f MB unpacked, archive %.1f MB"
          % (os.uname().nodename, os.cpu_count(), os.getloadavg()[0], args.rounds, info["k3s_version"],
             unpacked / 1e6, info["archive"]["length"] / 1e6))
    print("baseline = zstd -dc --long=25 | tar -x of the same archive")
    print("| case | median (CPU) | ratio to baseline | CPU ratio | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| %s | %.3f s (%.3f) | %.2fx | %.2fx | %.0f MiB |"
              % (r["case"], r["median_s"], r["cpu_median_s"], r["ratio"], r["cpu_ratio"], r["peak_rss_mib"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
