# Test helper for the cluster scenario (run with the controller's Python; no shebang on purpose).
#   tokens.py secrets AUDIT          -> JSON list of {"token", "secret"} for every token in AUDIT
#   tokens.py foreign                -> a well-formed worker token of a cluster that does not exist
#   tokens.py scan NEEDLES [--exclude DIR] PATH...
#                                    -> JSON list of files below PATH (not below DIR) that contain a needle
# NEEDLES is a JSON file: a list of strings. The scan reads regular files up to 64 MiB (not /proc, /sys).
import base64
import gzip
import json
import os
import re
import secrets
import stat
import sys

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests")


def token_secret(token):
    text = gzip.decompress(base64.b64decode(token)).decode()
    return re.search(r"token: ([a-z0-9]{6}\.[a-z0-9]{16})", text).group(1)


def scan(needles, roots, exclude=None):
    wanted = [n.encode() for n in needles]
    hits = []
    for root in roots:
        for dirpath, dummy, files in os.walk(root):
            if exclude and (dirpath + "/").startswith(exclude.rstrip("/") + "/"):
                continue
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    # Regular files only: a FIFO or socket under /run would block the read.
                    if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 20:
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if any(n in data for n in wanted):
                    hits.append(path)
    return hits


def main():
    cmd = sys.argv[1]
    if cmd == "secrets":
        with open(sys.argv[2]) as f:
            tokens = [line.strip() for line in f if line.strip()]
        print(json.dumps([{"token": t, "secret": token_secret(t)} for t in tokens]))
    elif cmd == "foreign":
        # Only on the controller (scan also runs on hosts, where tests/ does not exist).
        sys.path.insert(0, TESTS)
        from testlib import make_join_token  # one token builder for tests and scenarios
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        token = "%s.%s" % tuple("".join(secrets.choice(alphabet) for dummy in range(n)) for n in (6, 16))
        ca = b"-----BEGIN CERTIFICATE-----\n" + secrets.token_bytes(300) + b"\n"
        print(make_join_token(ca, token=token, server="https://10.89.77.99:6443"))
    elif cmd == "scan":
        with open(sys.argv[2]) as f:
            needles = json.load(f)
        roots, exclude = sys.argv[3:], None
        if roots[:1] == ["--exclude"]:
            exclude, roots = roots[1], roots[2:]
        print(json.dumps(scan(needles, roots, exclude)))
    else:
        sys.exit("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
