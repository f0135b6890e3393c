"""What provenance costs per run: re-deriving every fact from the executable and checking a complete controller
cache entry against them, next to a first split into an empty entry, measured in the same run.

payload_split no longer trusts a cache entry's manifest (issue 12, docs/security.md): every run inflates and
hashes the executable's payload and hashes the cached outputs. This prints, per fixture, the median time of that
verifying run (nothing to write) and of a first split (everything written), and their ratio. Rounds alternate
between the two so machine noise hits both alike.

  python3 benchmarks/provenance_bench.py [--rounds 5] [--fixtures .cache/fixtures] [--workdir .cache/bench-provenance]
"""
import argparse
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "plugins"))
from module_utils import k0s_payload  # noqa: E402


def split_into(exe, entry):
    """One library split into the cache-shaped directory ``entry``: (seconds, result)."""
    start = time.perf_counter()
    result = k0s_payload.split(exe, dest=os.path.join(entry, "libexec"),
                               stripped_executable=os.path.join(entry, "bin", "k0s"),
                               streams_dest=os.path.join(entry, "streams"), pin_mtime=True)
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fixtures", default=os.path.join(REPO, ".cache", "fixtures"))
    parser.add_argument("--workdir", default=os.path.join(REPO, ".cache", "bench-provenance"))
    args = parser.parse_args()
    rows = []
    for fixture in ("k0s-zip", "k0s-legacy"):
        exe = os.path.join(args.fixtures, fixture)
        if not os.path.exists(exe):
            raise SystemExit("%s missing: run `make fixtures` first" % exe)
        kept = os.path.join(args.workdir, fixture, "kept")
        split_into(exe, kept)   # untimed: the complete entry every verifying run checks
        first, verify = [], []
        for dummy in range(args.rounds):
            scratch = os.path.join(args.workdir, fixture, "scratch")
            shutil.rmtree(scratch, ignore_errors=True)
            first.append(split_into(exe, scratch)[0])
            seconds, result = split_into(exe, kept)
            if result.get("healed"):
                raise SystemExit("%s: a verifying run rewrote %s" % (fixture, result["healed"]))
            verify.append(seconds)
        inflated = sum(f["size"] for f in result["files"])
        rows.append((fixture, os.path.getsize(exe) / 1e6, inflated / 1e6, statistics.median(verify),
                     statistics.median(first)))
    shutil.rmtree(args.workdir, ignore_errors=True)
    machine = (os.uname().nodename, os.cpu_count(), os.getloadavg()[0], args.rounds)
    print("machine: %s, %d cores, load %.2f; %d rounds" % machine)
    print("| fixture | executable | inflated | verify run (per deploy) | first split | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for fixture, size, inflated, verify_s, first_s in rows:
        cells = (fixture, size, inflated, verify_s, first_s, verify_s / first_s)
        print("| %s | %.1f MB | %.1f MB | %.3f s | %.3f s | %.2fx |" % cells)


if __name__ == "__main__":
    main()
