"""The untrusted mirror of the pull tests (issue 17): a static HTTP server for a published tree
(playbooks/publish_k0s.yml: blobs/sha256/<hex>, releases/<id>.json, index.json; docs/distribution.md),
run in a container on the project's internal test network, that logs every request and injects faults.

One file, two halves, standard library only on both:

  serve         runs INSIDE the container (the Debian test image's python3; no new image or package):
                serves --root read-only, GET and HEAD, single byte ranges (206), and appends one JSON line
                per request to <state>/access.log: {"t", "method", "path", "status", "bytes", "client"}
                (bytes = body bytes really sent; "range" and "fault" when they apply). Before every request it
                re-reads <state>/control.json (missing = no fault):
                  {"corrupt": [hex, ...]}   blobs/sha256/<hex> served with one byte flipped (the middle one)
                  {"truncate": [hex, ...]}  half of the body sent, then the connection closed
                  {"die_after": N}          the server answers N requests after the control file changed,
                                            logs them, and exits: the mirror goes away (mid-run); requests
                                            beyond the N-th get no answer (status 0 in the log)
  start / stop  run on the controller: the container (podman, --network fleetsplit-test --ip ADDRESS, the tree
                bind-mounted read-only, the state directory read-write, this file as the program), the
                route check of tests/hostnet.py, then a probe until the server answers.

    python3 extensions/molecule/shared/mirror_server.py start --name fs-pull-mirror --ip 10.89.77.149 \
        --tree DIR --state DIR
    python3 extensions/molecule/shared/mirror_server.py stop --name fs-pull-mirror

Used by the `pull` scenario (extensions/molecule/pull/) and benchmarks/fleet_bench.py, which also import
start(), restart(), stop(), set_faults(), read_log() and tx_bytes() from here.
"""
import argparse
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 8080
IMAGE = "localhost/fleetsplit-debian-systemd:bookworm"
NETWORK = "fleetsplit-test"
# Paths inside the container.
ROOT_IN, STATE_IN, PROGRAM_IN = "/srv/tree", "/srv/state", "/srv/mirror_server.py"
ACCESS_LOG, CONTROL = "access.log", "control.json"
BLOB_RE = re.compile(r"/blobs/sha256/([0-9a-f]{64})\Z")
# Every path component the tree can hold (no dot files, no "..", no percent-encoding).
PART_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")
RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)\Z")
CHUNK = 1 << 16


# --------------------------------------------------------------------------- serve (inside the container)

class Mirror(object):
    """Shared state of the serving threads: the root, the log, the request counts for die_after."""

    def __init__(self, root, state):
        self.root = os.path.realpath(root)
        self.state = state
        self.lock = threading.Lock()
        self.started = self.finished = 0
        self.control = ""
        self.log = open(os.path.join(state, ACCESS_LOG), "a")

    def begin(self):
        """(the control file's faults, this request's number since the control file last changed)."""
        try:
            with open(os.path.join(self.state, CONTROL)) as f:
                text = f.read()
            data = json.loads(text)
        except (OSError, ValueError):
            text, data = "", {}
        with self.lock:
            if text != self.control:
                self.control, self.started, self.finished = text, 0, 0
            self.started += 1
            return (data if isinstance(data, dict) else {}), self.started

    def record(self, entry, die_after=None):
        """Log one request. With die_after: True once the first die_after requests have all been logged (the
        caller then exits), so the log holds every byte the mirror sent before it went away."""
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self.lock:
            self.log.write(line)
            self.log.flush()
            os.fsync(self.log.fileno())
            if entry["status"]:
                self.finished += 1
            return isinstance(die_after, int) and self.finished >= die_after

    def resolve(self, path):
        """The regular file a URL path names inside the root, or None (404)."""
        if not path.startswith("/") or "//" in path:
            return None
        parts = path[1:].split("/")
        if not all(PART_RE.match(p) for p in parts):
            return None
        full = os.path.join(self.root, *parts)
        if os.path.realpath(full) != full or not full.startswith(self.root + os.sep):
            return None
        try:
            st = os.stat(full)
        except OSError:
            return None
        return full if stat.S_ISREG(st.st_mode) else None


def parse_range(header, size):
    """(start, end inclusive) of a single satisfiable byte range, None for the whole body, or "bad" (416)."""
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None   # several ranges or another unit: ignored, the whole body is sent (RFC 9110 allows it)
    if not m.group(1):
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else "bad"
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (start, end) if start < size and start <= end else "bad"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleetsplit-test-mirror"
    timeout = 60
    mirror = None   # a Mirror, set by make_server() on its subclass

    def log_message(self, fmt, *args):   # the JSON access log replaces stderr logging
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        faults, number = self.mirror.begin()
        die_after = faults.get("die_after") if isinstance(faults.get("die_after"), int) else None
        path = self.path.split("?", 1)[0]
        entry = {"t": round(time.time(), 3), "method": self.command, "path": path, "status": 404, "bytes": 0,
                 "client": self.client_address[0]}
        if self.headers.get("Range"):
            entry["range"] = self.headers.get("Range")
        if die_after is not None and number > die_after:
            # Beyond the last request the mirror serves: no answer at all (status 0 in the log), as if gone.
            entry.update(status=0, error="mirror going away (die_after %d)" % die_after)
            self.close_connection = True
            self.mirror.record(entry)
            return
        blob = BLOB_RE.match(path)
        hexname = blob.group(1) if blob else None
        try:
            self.send_file(self.mirror.resolve(path), hexname, faults, entry, body)
        except (OSError, socket.timeout) as e:   # the client went away: log what was sent
            entry["error"] = "%s: %s" % (type(e).__name__, e)
            self.close_connection = True
        finally:
            if self.mirror.record(entry, die_after):
                try:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                os._exit(0)

    def send_file(self, full, hexname, faults, entry, body):
        if full is None:
            self.send_error_body(404, entry)
            return
        size = os.path.getsize(full)
        rng = parse_range(self.headers.get("Range"), size)
        if rng == "bad":
            entry["status"] = 416
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % size)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = rng if rng else (0, size - 1)
        length = end - start + 1 if size else 0
        corrupt = hexname in (faults.get("corrupt") or [])
        truncate = hexname in (faults.get("truncate") or [])
        if corrupt or truncate:
            entry["fault"] = "corrupt" if corrupt else "truncate"
        entry["status"] = 206 if rng else 200
        self.send_response(entry["status"])
        self.send_header("Content-Type", "application/json" if full.endswith(".json") else "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        flip = size // 2   # the byte a corrupt fault flips (an offset in the whole file)
        limit = length // 2 if truncate else length
        with open(full, "rb") as f:
            f.seek(start)
            pos = start
            while entry["bytes"] < limit:
                data = f.read(min(CHUNK, limit - entry["bytes"]))
                if not data:
                    break
                if corrupt and pos <= flip < pos + len(data):
                    data = bytearray(data)
                    data[flip - pos] ^= 0xFF
                    data = bytes(data)
                self.wfile.write(data)
                pos += len(data)
                entry["bytes"] += len(data)
        if truncate:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def send_error_body(self, status, entry):
        data = b"not found\n"
        entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            entry["bytes"] = len(data)


def make_server(root, state, port, bind="0.0.0.0"):
    handler = type("MirrorHandler", (Handler,), {"mirror": Mirror(root, state)})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def serve(root, state, port, bind="0.0.0.0"):
    server = make_server(root, state, port, bind)
    print("mirror: serving %s on %s:%d, log %s" % (root, bind, server.server_address[1], os.path.join(state, ACCESS_LOG)),
          flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------- controller side

def _podman(argv, check=True, timeout=120):
    p = subprocess.run(["podman"] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise RuntimeError("podman %s failed (%d): %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def url_of(ip, port=PORT):
    return "http://%s:%d" % (ip, port)


def running(name):
    p = _podman(["inspect", "--format", "{{.State.Running}}", name], check=False)
    return p.returncode == 0 and p.stdout.strip() == "true"


def wait_ready(name, ip, port=PORT, timeout=30):
    """After the route check: until the server answers an HTTP request (its probe is in the log, from the
    controller's address, never from a test host)."""
    import urllib.error
    import urllib.request
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
    import hostnet   # tests/hostnet.py: the route check before the controller talks to the mirror
    hostnet.ensure_routes([ip], log=lambda m: print(m, file=sys.stderr))
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url_of(ip, port) + "/.probe", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return   # any HTTP answer: the server is up (the probe path is a 404)
        except OSError as e:
            if not running(name):
                logs = _podman(["logs", "--tail", "20", name], check=False)
                raise RuntimeError("mirror %s exited: %s%s" % (name, logs.stdout, logs.stderr))
            if time.monotonic() > deadline:
                raise RuntimeError("mirror %s at %s did not answer within %d s: %s" % (name, url_of(ip, port), timeout, e))
            time.sleep(0.2)


def start(name, ip, tree, state, port=PORT, image=IMAGE, network=NETWORK):
    """A fresh mirror container serving ``tree`` (read-only) with its log and control file in ``state``;
    returns its URL. An older container of the same name is removed first (only that name)."""
    tree, state = os.path.realpath(tree), os.path.realpath(state)
    if not os.path.isdir(tree):
        raise RuntimeError("mirror tree %s is not a directory (publish first)" % tree)
    os.makedirs(state, mode=0o700, exist_ok=True)
    stop(name)
    program = os.path.realpath(__file__)
    # Root here may lack CAP_SYS_RESOURCE: podman's default nofile limit fails, stay at the hard limit (as the
    # molecule config and the fleet benchmark do).
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = int(os.environ.get("FLEETSPLIT_NOFILE", "20000"))
    nofile = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
    _podman(["run", "-d", "--name", name, "--hostname", name, "--runtime=runc", "--pull=never",
             "--network=%s" % network, "--ip=%s" % ip, "--label", "fleetsplit.mirror=1",
             "--ulimit", "nofile=%d:%d" % (nofile, nofile), "--ulimit", "nproc=32768:32768",
             # A fixed MAC (from the address): restarted after a die_after fault, the mirror keeps the MAC the hosts'
             # ARP caches hold, else their next requests time out until ARP notices (the restart's new random MAC).
             "--mac-address", "0a:58:" + ":".join("%02x" % int(o) for o in ip.split(".")),
             "-v", "%s:%s:ro" % (tree, ROOT_IN), "-v", "%s:%s:rw" % (state, STATE_IN),
             "-v", "%s:%s:ro" % (program, PROGRAM_IN),
             image, "python3", "-u", PROGRAM_IN, "serve", "--root", ROOT_IN, "--state", STATE_IN, "--port", str(port)])
    wait_ready(name, ip, port)
    return url_of(ip, port)


def restart(name, ip, port=PORT):
    """The same container (tree, log, control file) started again, e.g. after a die_after fault."""
    if not running(name):
        _podman(["start", name])
    wait_ready(name, ip, port)
    return url_of(ip, port)


def stop(name):
    if _podman(["container", "exists", name], check=False).returncode == 0:
        _podman(["rm", "-f", "-t", "0", name], timeout=120)   # python as pid 1 ignores SIGTERM: kill it


def set_faults(state, **faults):
    """Write the control file the server re-reads per request (temp file + rename); no argument = no fault."""
    path = os.path.join(state, CONTROL)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(faults, f)
    os.rename(tmp, path)


def read_log(state, offset=0):
    """(entries from byte ``offset`` of the access log, the offset after them)."""
    path = os.path.join(state, ACCESS_LOG)
    if not os.path.exists(path):
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1   # a line being written is left for the next read
    entries = [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]
    return entries, offset + end


def tx_bytes(name):
    """Bytes the mirror container's eth0 has sent (framing included), read inside it (no network involved)."""
    p = _podman(["exec", name, "cat", "/sys/class/net/eth0/statistics/tx_bytes"])
    return int(p.stdout)


def flipped(data):
    """``data`` as a corrupt fault serves it (the lab computes the bad sha256 it must find nowhere)."""
    b = bytearray(data)
    if b:
        b[len(b) // 2] ^= 0xFF
    return bytes(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="inside the container")
    s.add_argument("--root", required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--port", type=int, default=PORT)
    s.add_argument("--bind", default="0.0.0.0", help="the container's address (all); 127.0.0.1 when run by hand")
    s = sub.add_parser("start", help="on the controller: the container, route check, probe")
    s.add_argument("--name", required=True)
    s.add_argument("--ip", required=True)
    s.add_argument("--tree", required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--port", type=int, default=PORT)
    s = sub.add_parser("stop", help="on the controller: remove the container")
    s.add_argument("--name", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.root, args.state, args.port, args.bind)
        return 0
    try:
        if args.cmd == "start":
            print(start(args.name, args.ip, args.tree, args.state, args.port))
        else:
            stop(args.name)
    except RuntimeError as e:
        print("mirror_server: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
