"""extensions/molecule/shared/mirror_server.py, the untrusted mirror of the pull scenario and the fleet benchmark:
served on 127.0.0.1 from a thread (the scenario runs the same code in a container), real files, real HTTP.

Each fault must be what the scenario claims it tests: a corrupt blob differs in exactly one byte, a truncated one
stops half-way and the client sees an incomplete read, die_after ends the server; the access log is the record the
scenario's "zero requests" and "exactly these streams" checks read, so its byte counts must be the bytes sent.
"""
import hashlib
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions" / "molecule" / "shared"))
import mirror_server  # noqa: E402

BLOB = bytes(range(256)) * 1000 + b"tail"   # 256004 bytes, more than one CHUNK
HEX = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def mirror(tmp_path):
    tree, state = tmp_path / "tree", tmp_path / "state"
    (tree / "blobs" / "sha256").mkdir(parents=True)
    (tree / "releases").mkdir()
    state.mkdir()
    (tree / "blobs" / "sha256" / HEX).write_bytes(BLOB)
    (tree / "index.json").write_text('{"releases": []}\n')
    (tree / ".hidden").write_text("secret")
    (tmp_path / "outside").write_text("outside the tree")
    server = mirror_server.make_server(str(tree), str(state), 0, bind="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = "http://127.0.0.1:%d" % server.server_address[1]
    yield base, str(state)
    server.shutdown()
    server.server_close()


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def entries(state, settle=0.2):
    """The access log once it stopped growing (a request is logged right after its last byte went out)."""
    seen = None
    while True:
        now = mirror_server.read_log(state)[0]
        if now == seen:
            return now
        seen = now
        time.sleep(settle)


def test_serves_blobs_and_logs_each_request_with_the_bytes_sent(mirror):
    base, state = mirror
    status, body, headers = get(base + "/blobs/sha256/" + HEX)
    assert (status, hashlib.sha256(body).hexdigest(), headers["Content-Length"]) == (200, HEX, str(len(BLOB)))
    status, body = get(base + "/index.json")[:2]
    assert status == 200 and json.loads(body) == {"releases": []}
    log = entries(state)
    assert [(e["method"], e["path"], e["status"], e["bytes"], e["client"]) for e in log] == [
        ("GET", "/blobs/sha256/" + HEX, 200, len(BLOB), "127.0.0.1"), ("GET", "/index.json", 200, 17, "127.0.0.1")]
    assert all(isinstance(e["t"], float) for e in log)


@pytest.mark.parametrize("path", ["/.hidden", "/../outside", "/blobs/sha256/%2e%2e", "/blobs//sha256/" + HEX,
                                  "/blobs/sha256", "/blobs/sha256/" + "0" * 64, "/"])
def test_only_regular_files_inside_the_tree(mirror, path):
    base, state = mirror
    conn = http.client.HTTPConnection(base[len("http://"):], timeout=10)
    conn.request("GET", path)   # sent as written: urllib would normalise some of these
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 404
    assert entries(state)[-1]["status"] == 404


def test_range_requests(mirror):
    base, state = mirror
    status, body, headers = get(base + "/blobs/sha256/" + HEX, {"Range": "bytes=1000-"})
    assert (status, body, headers["Content-Range"]) == (206, BLOB[1000:], "bytes 1000-%d/%d" % (len(BLOB) - 1, len(BLOB)))
    status, body = get(base + "/blobs/sha256/" + HEX, {"Range": "bytes=-4"})[:2]
    assert (status, body) == (206, b"tail")
    status, dummy, headers = get(base + "/blobs/sha256/" + HEX, {"Range": "bytes=%d-" % len(BLOB)})
    assert (status, headers["Content-Range"]) == (416, "bytes */%d" % len(BLOB))
    assert [e["bytes"] for e in entries(state)] == [len(BLOB) - 1000, 4, 0]


def test_corrupt_fault_flips_one_byte_even_in_a_range(mirror):
    base, state = mirror
    mirror_server.set_faults(state, corrupt=[HEX])
    status, body = get(base + "/blobs/sha256/" + HEX)[:2]
    assert status == 200 and len(body) == len(BLOB) and body != BLOB
    assert [i for i in range(len(BLOB)) if body[i] != BLOB[i]] == [len(BLOB) // 2]
    assert body == mirror_server.flipped(BLOB)
    part = get(base + "/blobs/sha256/" + HEX, {"Range": "bytes=%d-" % (len(BLOB) // 2 - 10)})[1]
    assert part == body[len(BLOB) // 2 - 10:]
    assert [e.get("fault") for e in entries(state)] == ["corrupt", "corrupt"]
    mirror_server.set_faults(state)
    assert get(base + "/blobs/sha256/" + HEX)[1] == BLOB


def test_truncate_fault_sends_half_then_closes(mirror):
    base, state = mirror
    mirror_server.set_faults(state, truncate=[HEX])
    with pytest.raises(http.client.IncompleteRead) as e:
        get(base + "/blobs/sha256/" + HEX)
    assert len(e.value.partial) == len(BLOB) // 2
    last = entries(state)[-1]
    assert (last["status"], last["bytes"], last["fault"]) == (200, len(BLOB) // 2, "truncate")


def test_die_after_ends_the_server_process(tmp_path):
    tree, state = tmp_path / "tree", tmp_path / "state"
    (tree / "blobs" / "sha256").mkdir(parents=True)
    state.mkdir()
    (tree / "blobs" / "sha256" / HEX).write_bytes(BLOB)
    mirror_server.set_faults(str(state), die_after=2)
    p = subprocess.Popen([sys.executable, mirror_server.__file__, "serve", "--root", str(tree), "--state", str(state),
                          "--port", "0", "--bind", "127.0.0.1"], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        port = int(p.stdout.readline().split("127.0.0.1:")[1].split(",")[0])
        url = "http://127.0.0.1:%d/blobs/sha256/%s" % (port, HEX)
        assert get(url)[0] == 200 and get(url)[0] == 200
        assert p.wait(timeout=10) == 0
        with pytest.raises(OSError):
            get(url)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert [e["status"] for e in entries(str(state))] == [200, 200]
