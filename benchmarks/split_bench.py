"""Controller-side split speed and memory against the usual tools, measured in the same run.

For the 128 MB-class fixtures (tests/fixtures, built by `make fixtures`):
  zip format:    `k0s-payload split` (a whole process: interpreter start, parse, inflate, verify, sha256, write)
                 next to `unzip -o` of the same executable;
  legacy format: the same next to `gzip -dc` of each member into a file (members cut out beforehand, untimed).
Each split runs twice per round: with the fastest deflate engine installed (isal, zlib-ng; payload/engines.py)
and with zlib alone (FLEETSPLIT_DEFLATE_ENGINE=zlib: the code path of a controller without them).
Rounds alternate between the contenders so machine noise hits all alike; medians and ratios are printed.
Peak RSS of each split process comes from wait4(). One untimed warm-up round comes first (page cache).

Python's bytecode is cached for the split processes (PYTHONPYCACHEPREFIX in the work directory, written by the
warm-up round) as on a controller that has run the CLI before, even when the caller's environment sets
PYTHONDONTWRITEBYTECODE; --no-bytecode-cache measures a process that compiles the collection's modules every
time (as a module run through AnsiballZ's zip does).

  python3 benchmarks/split_bench.py [--rounds 7] [--fixtures .cache/fixtures] [--workdir .cache/bench]
                                    [--no-bytecode-cache]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "scripts", "k0s-payload")
sys.path.insert(0, os.path.join(REPO, "plugins"))
from module_utils import k0s_payload  # noqa: E402
from module_utils.payload import engines  # noqa: E402

FAST = engines.select("auto").name     # the engine a default run uses here
CONTENDERS = [FAST] + (["zlib"] if FAST != "zlib" else [])
CPU = {}   # (executable, engine): CPU seconds of each split process (robust to a loaded machine, unlike wall time)
SPLIT_ENV = dict(os.environ)   # main() sets the bytecode cache
SPLIT_CLI = [CLI]              # --cli: another checkout's k0s-payload (before/after comparisons in one run)


def run(argv, stdout=None, ok_codes=(0,), env=None):
    """Wall time, peak RSS (KiB) and CPU seconds (user + sys) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dummy, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in ok_codes:
        raise SystemExit("%s failed with %d: %s" % (" ".join(argv), code, proc.stderr.read().decode()))
    proc.stderr.close()
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def time_split(exe, work, workers, ours, rss):
    """One `k0s-payload split` process per engine into a fresh directory: wall time and peak RSS appended."""
    for engine in CONTENDERS:
        out = fresh(os.path.join(work, "ours"))
        t, m, cpu = run([sys.executable, SPLIT_CLI[0], "split", exe, "--dest", out, "--stripped", os.path.join(out, "k0s"),
                         "--workers", str(workers)], env=dict(SPLIT_ENV, **{engines.ENV: engine}))
        ours.setdefault(engine, []).append(t)
        rss.setdefault(engine, []).append(m)
        CPU.setdefault((exe, engine), []).append(cpu)


def warm_up(exe, work, workers):
    """One untimed split per engine: the executable in the page cache, the bytecode cache written."""
    time_split(exe, work, workers, {}, {})
    for engine in CONTENDERS:
        CPU.pop((exe, engine), None)


def bench_zip(exe, work, rounds, workers):
    ours, base, rss = {}, [], {}
    for index in range(rounds + 1):
        if index == 0:   # the untimed warm-up round
            warm_up(exe, work, workers)
            run(["unzip", "-o", "-q", exe, "-d", fresh(os.path.join(work, "unzip"))], ok_codes=(0, 1))
            continue
        time_split(exe, work, workers, ours, rss)
        out = fresh(os.path.join(work, "unzip"))
        # unzip exits 1 with "extra bytes at beginning" for an appended zip: that is expected
        t, dummy, cpu = run(["unzip", "-o", "-q", exe, "-d", out], ok_codes=(0, 1))
        base.append(t)
        CPU.setdefault((exe, "baseline"), []).append(cpu)
    return ours, base, rss


def bench_legacy(exe, work, rounds, workers):
    members = fresh(os.path.join(work, "members"))
    payload = k0s_payload.inspect(exe)
    with open(exe, "rb") as f:
        for entry in payload.entries:
            f.seek(entry.member_offset)
            with open(os.path.join(members, entry.name + ".gz"), "wb") as out:
                out.write(f.read(entry.member_size))
    ours, base, rss = {}, [], {}
    warm_up(exe, work, workers)   # gzip's members were just written: in the page cache
    for dummy in range(rounds):
        time_split(exe, work, workers, ours, rss)
        out = fresh(os.path.join(work, "gzip"))
        total = cpu = 0.0
        for entry in payload.entries:
            with open(os.path.join(out, entry.name), "wb") as sink:
                t, dummy, c = run(["gzip", "-dc", os.path.join(members, entry.name + ".gz")], stdout=sink)
                total, cpu = total + t, cpu + c
        base.append(total)
        CPU.setdefault((exe, "baseline"), []).append(cpu)
    return ours, base, rss


TARGETS = {"zip": 0.3, "legacy": 0.6}   # issue 19: zip split <= 0.3x unzip -o, legacy split <= 0.6x gzip -dc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fixtures", default=os.path.join(REPO, ".cache", "fixtures"))
    parser.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="split processes compile the collection's modules each time (PYTHONDONTWRITEBYTECODE=1)")
    parser.add_argument("--cli", default=CLI, help="the k0s-payload to time (default: this checkout's)")
    args = parser.parse_args()
    SPLIT_CLI[0] = args.cli
    if args.no_bytecode_cache:
        SPLIT_ENV.update(PYTHONDONTWRITEBYTECODE="1")
        SPLIT_ENV.pop("PYTHONPYCACHEPREFIX", None)
    else:
        SPLIT_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        SPLIT_ENV["PYTHONPYCACHEPREFIX"] = os.path.join(os.path.abspath(args.workdir), "pycache")
    load_before = os.getloadavg()
    rows = []
    for fmt, fixture, baseline, fn in (("zip", "k0s-zip", "unzip -o", bench_zip),
                                       ("legacy", "k0s-legacy", "gzip -dc per member", bench_legacy)):
        exe = os.path.join(args.fixtures, fixture)
        if not os.path.exists(exe):
            raise SystemExit("%s missing: run `make fixtures` first" % exe)
        inflated = sum(e.size for e in k0s_payload.inspect(exe).entries)
        ours, base, rss = fn(exe, os.path.join(args.workdir, fmt), args.rounds, args.workers)
        for engine in CONTENDERS:
            rows.append({"format": fmt, "fixture": fixture, "inflated_mb": inflated / 1e6, "baseline": baseline,
                         "engine": engine, "target": TARGETS[fmt],
                         "split_median_s": statistics.median(ours[engine]), "baseline_median_s": statistics.median(base),
                         "ratio": statistics.median(ours[engine]) / statistics.median(base),
                         "split_peak_rss_mib": max(rss[engine]) / 1024.0, "split_runs": ours[engine],
                         "split_cpu_median_s": statistics.median(CPU[exe, engine]),
                         "baseline_cpu_median_s": statistics.median(CPU[exe, "baseline"]),
                         "baseline_runs": base})
    shutil.rmtree(args.workdir, ignore_errors=True)
    print("machine: %s, %d cores, load average before/after %.2f %.2f %.2f / %.2f %.2f %.2f; %d rounds (+1 warm-up), "
          "%d workers; bytecode %s; fastest engine installed: %s %s%s" % (
              (os.uname().nodename, os.cpu_count()) + tuple(load_before) + tuple(os.getloadavg()) + (
                  args.rounds, args.workers, "compiled every run" if args.no_bytecode_cache else "cached", FAST,
                  engines.get(FAST).version, "" if FAST != "zlib" else " (no isal/zlib-ng: only the zlib column)")))
    print("engine zlib = FLEETSPLIT_DEFLATE_ENGINE=zlib, the path of a controller without isal/zlib-ng; split: %s"
          % os.path.relpath(args.cli, REPO))
    print("| format | fixture (MB inflated) | engine | split median (CPU) | baseline | baseline median (CPU) | ratio (target) "
          "| CPU ratio | split peak RSS |")
    print("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| %s | %s (%.1f) | %s | %.3f s (%.3f) | %s | %.3f s (%.3f) | %.2fx (<= %.1fx%s) | %.2fx | %.0f MiB |" % (
            r["format"], r["fixture"], r["inflated_mb"], r["engine"], r["split_median_s"], r["split_cpu_median_s"],
            r["baseline"], r["baseline_median_s"], r["baseline_cpu_median_s"], r["ratio"], r["target"],
            "" if r["ratio"] <= r["target"] else ", missed", r["split_cpu_median_s"] / r["baseline_cpu_median_s"],
            r["split_peak_rss_mib"]))
    busy = max(load_before[0], os.getloadavg()[0])
    if busy > 0.5 * (os.cpu_count() or 1):
        print("WARNING: load average %.2f on %d cores: other work takes CPU the two split threads would use, so the "
              "wall-clock ratios are not what a quiet machine gives (the CPU ratios move less)" % (busy, os.cpu_count()))
    for r in rows:
        print("target %s split <= %.1fx %s with %s: %s (%.2fx)" % (
            r["format"], r["target"], r["baseline"], r["engine"] if r["engine"] == "zlib" or FAST == "zlib"
            else "%s (fast engine)" % r["engine"], "met" if r["ratio"] <= r["target"] else "MISSED", r["ratio"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
