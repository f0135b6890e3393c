"""A real HTTP mirror on 127.0.0.1 for the pull tests: serves a published tree (fleetsplit.k0s.mirror_publish) from a
thread of the test process, logs every request and injects faults. Nothing leaves the machine (loopback only).

    with Mirror(tree) as m:
        m.url                      # http://127.0.0.1:<port>
        m.faults["corrupt"] = {hex}    # flip one byte of these blobs (size unchanged)
        m.faults["truncate"] = {hex}   # announce the full length, send half, close
        m.faults["fail"] = 2           # the next 2 requests get 503
        m.faults["stall"] = {hex}      # send nothing for longer than the client's timeout
        m.faults["ranges"] = True      # honour Range (206) requests
        m.log                      # [{"method", "path", "status", "bytes", "range", "headers"}], once settled
"""
import http.server
import os
import re
import threading
import time

BLOB = re.compile(r"/blobs/sha256/([0-9a-f]{64})\Z")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):   # the test reads self.server.log instead
        pass

    def _record(self, status, sent):
        self.server.log.append(dict(method=self.command, path=self.path, status=status, bytes=sent,
                                    range=self.headers.get("Range"), headers=dict(self.headers.items())))

    def do_GET(self):   # noqa: N802 (http.server's naming)
        # The client may see the answer before the entry is logged: log and close() wait for requests in flight.
        with self.server.settled:
            self.server.in_flight += 1
        try:
            self._answer()
        finally:
            with self.server.settled:
                self.server.in_flight -= 1
                self.server.settled.notify_all()

    def _answer(self):
        faults = self.server.faults
        if faults.get("fail", 0) > 0:
            faults["fail"] -= 1
            self._plain(503, b"try again\n")
            return
        path = os.path.normpath(self.path.split("?", 1)[0]).lstrip("/")
        full = os.path.join(self.server.root, path)
        if ".." in self.path or not os.path.isfile(full):
            self._plain(404, b"not found\n")
            return
        with open(full, "rb") as f:
            data = f.read()
        m = BLOB.match(self.path)
        hexname = m.group(1) if m else None
        if hexname in faults.get("corrupt", ()):
            data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
        if hexname in faults.get("stall", ()):
            time.sleep(faults.get("stall_seconds", 3))
        start = 0
        rng = re.match(r"bytes=(\d+)-\Z", self.headers.get("Range") or "")
        if rng and faults.get("ranges") and int(rng.group(1)) < len(data):
            start = int(rng.group(1))
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if hexname in faults.get("truncate", ()):
            body = body[:len(body) // 2]
            self.close_connection = True
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass
        self._record(206 if start else 200, len(body))

    def _plain(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._record(status, len(body))


class Mirror(object):
    def __init__(self, root):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.root = str(root)
        self.server.log = []
        self.server.faults = {}
        self.server.in_flight = 0
        self.server.settled = threading.Condition()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = None

    def settle(self, timeout=10):
        """Wait until no request is being answered (its entry is then in the log)."""
        with self.server.settled:
            self.server.settled.wait_for(lambda: self.server.in_flight == 0, timeout)

    @property
    def log(self):
        self.settle()
        return self.server.log

    @property
    def faults(self):
        return self.server.faults

    def blob_requests(self):
        return [BLOB.match(e["path"]).group(1) for e in self.log if BLOB.match(e["path"])]

    def __enter__(self):
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self):
        self.settle()
        self.server.shutdown()
        self.server.server_close()

    def __exit__(self, *exc):
        self.close()
