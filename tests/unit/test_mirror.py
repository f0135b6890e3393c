"""Pull distribution's libraries, used directly: mirror_tree (publish, controller) and mirror_fetch (host), against the
real split of the fixtures and a real HTTP server on 127.0.0.1 (tests/mirrorlib.py) serving the published tree.
"""
import hashlib
import http.server
import json
import os
import threading

import pytest

from mirrorlib import Mirror
from testlib import FIXTURES, load_fixtures
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload
from ansible_collections.fleetsplit.k0s.plugins.module_utils import mirror_fetch as mf
from ansible_collections.fleetsplit.k0s.plugins.module_utils import mirror_tree as mt
from ansible_collections.fleetsplit.k0s.plugins.module_utils import release_build as rb

SECRET = "Bearer very-s3cret-token"


def _split(tmp_path, fixture, name=None):
    d = tmp_path / (name or fixture)
    return k0s_payload.split(str(FIXTURES / fixture), dest=str(d / "libexec"), stripped_executable=str(d / "bin/k0s"),
                             streams_dest=str(d / "streams"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    load_fixtures()
    base = tmp_path_factory.mktemp("splits")
    return dict((f, _split(base, f)) for f in ("k0s-small-zip", "k0s-small-zip-v2"))


@pytest.fixture
def tree(tmp_path, splits):
    dest = str(tmp_path / "tree")
    mt.publish(list(splits.values()), dest)
    return dest


def _wanted(split):
    out = dict((f["name"], (f["stream_sha256"], f["stream_size"])) for f in split["files"])
    out["k0s"] = (split["stripped_executable"]["stream_sha256"], split["stripped_executable"]["stream_size"])
    return out


def _params(split, url, **kw):
    p = dict(files=split["files"], executable=split["stripped_executable"], mirror_url=url, mirror_timeout=2,
             mirror_retries=2, mirror_ca_file=None, mirror_validate_certs=True, mirror_headers={"Authorization": SECRET})
    p.update(kw)
    return p


def _fetcher(url, **kw):
    sleeps = []
    args = dict(timeout=2, retries=2, headers={"Authorization": SECRET}, sleep=sleeps.append)
    args.update(kw)
    return mf.Fetcher(url, **args), sleeps


# --------------------------------------------------------------------------- publish

def test_publish_writes_the_contract_layout(tmp_path, splits):
    dest = tmp_path / "tree"
    res = mt.publish([splits["k0s-small-zip"]], str(dest))
    s = splits["k0s-small-zip"]
    want = _wanted(s)
    assert sorted(res["blobs"]) == sorted(sha for sha, size in want.values()) and res["changed"]
    for name, (sha, size) in want.items():
        blob = dest / "blobs" / "sha256" / sha
        assert blob.stat().st_size == size and hashlib.sha256(blob.read_bytes()).hexdigest() == sha
        assert blob.stat().st_mode & 0o777 == 0o644
    rid = s["stripped_executable"]["sha256"]
    doc = json.loads((dest / "releases" / (rid + ".json")).read_text())
    assert doc["k0s_version"] == s["k0s_version"] and doc["goarch"] == "amd64" and doc["elf_machine"] == "x86_64"
    assert [f["name"] for f in doc["files"]] == sorted(f["name"] for f in s["files"])
    assert all(set(f) == set(mt.RELEASE_KEYS) for f in doc["files"] + [doc["stripped_executable"]])
    # Deterministic: sorted keys, the same bytes every time.
    text = (dest / "releases" / (rid + ".json")).read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert json.loads((dest / "index.json").read_text()) == {
        "format": 1, "releases": [{"id": rid, "k0s_version": s["k0s_version"], "goarch": "amd64"}]}


def test_republish_changes_nothing_and_a_forged_blob_is_replaced(tmp_path, splits):
    dest = tmp_path / "tree"
    mt.publish(list(splits.values()), str(dest))
    snap = dict((p, (p.stat().st_mtime_ns, p.stat().st_ino)) for p in dest.rglob("*"))
    res = mt.publish(list(splits.values()), str(dest))
    assert not res["changed"] and res["blobs"] == [] and not res["index_changed"]
    assert dict((p, (p.stat().st_mtime_ns, p.stat().st_ino)) for p in dest.rglob("*")) == snap
    sha = splits["k0s-small-zip"]["files"][0]["stream_sha256"]
    (dest / "blobs" / "sha256" / sha).write_bytes(b"forged")
    res = mt.publish(list(splits.values()), str(dest))
    assert res["replaced"] == [sha] and res["changed"] and "other bytes" in res["warnings"][0]
    forged = hashlib.sha256(b"forged").hexdigest()
    assert "blobs/sha256/%s (other bytes, sha256 %s)" % (sha, forged) in res["before"]
    assert hashlib.sha256((dest / "blobs" / "sha256" / sha).read_bytes()).hexdigest() == sha
    # No temporary names stay behind.
    assert not list(dest.rglob(".*"))


def test_publish_check_mode_writes_nothing(tmp_path, splits):
    dest = tmp_path / "tree"
    res = mt.publish([splits["k0s-small-zip"]], str(dest), write=False)
    assert res["changed"] and len(res["blobs"]) == 4 and not dest.exists()
    assert "index.json" in res["after"] and res["before"] == []


def test_publish_refuses_a_changed_cache_and_symlinked_dirs(tmp_path, splits):
    s = _split(tmp_path, "k0s-small-zip", "own")
    stream = s["files"][0]["stream"]
    with open(stream, "ab") as f:
        f.write(b"x")
    with pytest.raises(mt.MirrorTreeError, match="the cache was changed since"):
        mt.publish([s], str(tmp_path / "tree"))
    assert not (tmp_path / "tree").exists()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tree2").mkdir()
    os.symlink(str(tmp_path / "elsewhere"), str(tmp_path / "tree2" / "blobs"))
    with pytest.raises(mt.MirrorTreeError, match="a symlink"):
        mt.publish([splits["k0s-small-zip"]], str(tmp_path / "tree2"))
    assert list((tmp_path / "elsewhere").iterdir()) == []
    with pytest.raises(mt.MirrorTreeError, match="k3s"):
        mt.publish([dict(splits["k0s-small-zip"], format="k3s")], str(tmp_path / "tree3"))
    with pytest.raises(mt.MirrorTreeError, match="lacks stream"):
        bad = dict(splits["k0s-small-zip"], files=[dict(f, stream=None) for f in splits["k0s-small-zip"]["files"]])
        mt.publish([bad], str(tmp_path / "tree3"))


# --------------------------------------------------------------------------- fetch

def test_fetch_checks_size_and_sha256_and_renames_only_then(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    incoming = tmp_path / "incoming"
    with Mirror(tree) as m:
        res = mf.fetch_missing(_params(s, m.url + "/"), ["runc", "k0s"], str(incoming))
        assert res["fetched"] == ["k0s", "runc"] and res["requests"] == 2
        assert res["bytes"] == sum(_wanted(s)[n][1] for n in ("runc", "k0s"))
        assert sorted(p.name for p in incoming.iterdir()) == ["k0s.gz", "runc.gz"]
        assert incoming.stat().st_mode & 0o777 == 0o700
        assert all(e["headers"].get("Authorization") == SECRET for e in m.log)
        # Already there with the right bytes (a run that failed after its fetch): no request.
        del m.log[:]
        res = mf.fetch_missing(_params(s, m.url), ["runc", "k0s"], str(incoming))
        assert res["fetched"] == [] and m.log == []
        # Nothing missing: no request at all.
        assert mf.fetch_missing(_params(s, m.url), [], str(tmp_path / "other"))["requests"] == 0
        assert m.log == []


def test_corrupted_stream_is_refused_at_once_naming_both_hashes(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tree) as m:
        m.faults["corrupt"] = {sha}
        f, sleeps = _fetcher(m.url)
        with pytest.raises(mf.MismatchError) as e:
            f.fetch("runc", sha, size, str(tmp_path))
    msg = str(e.value)
    assert sha in msg and "/blobs/sha256/%s" % sha in msg and "runc" in msg and "nothing was switched" in msg
    got = msg.split("has sha256 ")[1].split(",")[0]
    assert len(got) == 64 and got != sha
    assert len(m.log) == 1 and sleeps == []   # never retried: the mirror is untrusted, not flaky
    assert os.listdir(str(tmp_path)) == ["tree"]   # the bad temp file is gone, nothing renamed
    assert SECRET not in msg


def test_truncated_stream_is_retried_with_backoff_then_refused(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tree) as m:
        m.faults["truncate"] = {sha}
        f, sleeps = _fetcher(m.url, retries=3)
        with pytest.raises(mf.MirrorError) as e:
            f.fetch("runc", sha, size, str(tmp_path))
    assert "after 4 attempts" in str(e.value) and "runc" in str(e.value)
    assert sleeps == [1.0, 2.0, 4.0] and len(m.log) == 4
    assert os.listdir(str(tmp_path)) == ["tree"]


def test_truncated_transfer_resumes_with_range(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["k0s"]
    with Mirror(tree) as m:
        m.faults.update(truncate={sha}, ranges=True)
        f, sleeps = _fetcher(m.url, retries=1)

        def heal(seconds):   # the mirror recovers while the client backs off
            sleeps.append(seconds)
            m.faults["truncate"] = set()
        f.sleep = heal
        f.fetch("k0s", sha, size, str(tmp_path))
        assert [e["range"] for e in m.log] == [None, "bytes=%d-" % (size // 2)]
        assert m.log[1]["status"] == 206 and m.log[1]["bytes"] == size - size // 2
    assert hashlib.sha256((tmp_path / "k0s.gz").read_bytes()).hexdigest() == sha


def test_server_without_range_support_restarts_from_zero(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["k0s"]
    with Mirror(tree) as m:
        m.faults.update(truncate={sha})
        f, sleeps = _fetcher(m.url, retries=1)
        f.sleep = lambda seconds: m.faults.update(truncate=set())
        f.fetch("k0s", sha, size, str(tmp_path))
        assert m.log[1]["status"] == 200 and m.log[1]["bytes"] == size
    assert hashlib.sha256((tmp_path / "k0s.gz").read_bytes()).hexdigest() == sha


def test_404_is_not_retried_and_names_the_publish_step(tmp_path, splits):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    (tmp_path / "empty").mkdir()
    with Mirror(tmp_path / "empty") as m:
        f, sleeps = _fetcher(m.url)
        with pytest.raises(mf.MirrorError, match="answered 404 .*publish_k0s"):
            f.fetch("runc", sha, size, str(tmp_path))
    assert len(m.log) == 1 and sleeps == []


def test_503_then_success_is_retried(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tree) as m:
        m.faults["fail"] = 2
        f, sleeps = _fetcher(m.url)
        f.fetch("runc", sha, size, str(tmp_path))
    assert [e["status"] for e in m.log] == [503, 503, 200] and sleeps == [1.0, 2.0]


def test_timeout_is_retried_then_a_clear_error(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tree) as m:
        m.faults.update(stall={sha}, stall_seconds=2)
        f, sleeps = _fetcher(m.url, timeout=0.5, retries=1)
        with pytest.raises(mf.MirrorError, match="after 2 attempts: timed out"):
            f.fetch("runc", sha, size, str(tmp_path))
    assert sleeps == [1.0]


def test_unreachable_mirror_is_a_clear_error_without_credentials(tmp_path, splits):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tmp_path) as m:
        url = m.url
    f, sleeps = _fetcher(url, retries=2)   # the port is closed now
    with pytest.raises(mf.MirrorError) as e:
        f.fetch("runc", sha, size, str(tmp_path))
    assert "could not fetch the stream for runc" in str(e.value) and "after 3 attempts" in str(e.value)
    assert url in str(e.value) and SECRET not in str(e.value) and len(sleeps) == 2


def test_oversized_answer_is_refused(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tree) as m:
        f, sleeps = _fetcher(m.url)
        with pytest.raises(mf.MismatchError, match="announces %d bytes" % size):
            f.fetch("runc", sha, size - 1, str(tmp_path))


class _Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self):   # noqa: N802
        self.server.seen.append(dict(self.headers.items()))
        self.send_response(302)
        self.send_header("Location", self.server.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_credentials_are_not_sent_to_a_redirect_target(tmp_path, splits, tree):
    s = splits["k0s-small-zip"]
    sha, size = _wanted(s)["runc"]
    with Mirror(tree) as target:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
        srv.seen, srv.target = [], target.url
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            f, sleeps = _fetcher("http://127.0.0.1:%d" % srv.server_address[1])
            f.fetch("runc", sha, size, str(tmp_path))
        finally:
            srv.shutdown()
            srv.server_close()
        assert srv.seen[0].get("Authorization") == SECRET
        assert len(target.log) == 1 and "Authorization" not in target.log[0]["headers"]


@pytest.mark.parametrize("url,words", [
    ("", "mirror_url is empty"), ("ftp://h/x", "not an http:// or https:// URL"),
    ("https://user:pw-secret@h/x", "carries credentials"), ("http://h/x?a=b", "query or fragment"),
    ("http://h/ x", "white space"), ("http:///x", "with a host"),
])
def test_bad_urls_are_refused_without_echoing_credentials(url, words):
    with pytest.raises(mf.MirrorError, match=words) as e:
        mf.check_mirror_url(url)
    assert "pw-secret" not in str(e.value)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(mf.MirrorError, match="not a valid HTTP header name"):
        mf.Fetcher("http://h", headers={"Bad Header": "x"})
    with pytest.raises(mf.MirrorError, match="value not shown") as e:
        mf.Fetcher("http://h", headers={"Authorization": "Bearer x\nInjected: y"})
    assert "Bearer" not in str(e.value)
    with pytest.raises(mf.MirrorError, match="does not exist on the host"):
        mf.Fetcher("https://h", ca_file=str(tmp_path / "nope.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(mf.MirrorError, match="not a usable CA bundle"):
        mf.Fetcher("https://h", ca_file=str(tmp_path / "junk.pem"))
    with pytest.raises(mf.MirrorError, match="mirror_retries"):
        mf.Fetcher("http://h", retries=-1)
    with pytest.raises(mf.MirrorError, match="stream_sha256 and stream_size for runc"):
        mf.wanted_streams([dict(name="runc", sha256="0" * 64)], dict(stream_sha256="0" * 64, stream_size=1))


# --------------------------------------------------------------------------- k0s_release with a mirror

def _host_params(root, split, url, **kw):
    p = dict(state="present", release_id=None, k0s_version=split["k0s_version"], files=split["files"],
             executable=split["stripped_executable"], streams_dir=os.path.join(root, "store/incoming"), bundle=None,
             bundle_members=None, switch=True, store_dir=os.path.join(root, "store"), bin_dir=os.path.join(root, "bin"),
             libexec_dir=os.path.join(root, "libexec"), data_dir=os.path.join(root, "data"), link_data_dir=True,
             pinned_mtime=None, keep_releases=2, keep_backups=3, verify=False, selinux_relabel=True,
             mirror_url=url, mirror_timeout=2, mirror_retries=0, mirror_ca_file=None, mirror_validate_certs=True,
             mirror_headers=None)
    p.update(kw)
    return p


def test_release_fetches_only_what_it_lacks_and_a_bad_stream_switches_nothing(tmp_path, splits, tree):
    v1, v2 = splits["k0s-small-zip"], splits["k0s-small-zip-v2"]
    root = str(tmp_path / "host")
    os.makedirs(os.path.join(root, "bin"))
    with Mirror(tree) as m:
        r1 = rb.Runner(_host_params(root, v1, m.url)).run()
        assert r1["mirror"]["fetched"] == sorted(_wanted(v1)) and r1["current_release"] == r1["release_id"]
        assert sorted(m.blob_requests()) == sorted(sha for sha, size in _wanted(v1).values())
        assert os.listdir(os.path.join(root, "store/incoming")) == []   # used streams removed
        del m.log[:]
        q = rb.Runner(_host_params(root, v1, m.url, state="query")).run()
        assert q["up_to_date"] and m.log == []
        changed = sorted(n for n in _wanted(v2) if _wanted(v2)[n] != _wanted(v1).get(n))
        q = rb.Runner(_host_params(root, v2, m.url, state="query")).run()
        assert q["missing"] == changed and m.log == []   # the query never talks to the mirror
        m.faults["corrupt"] = set(_wanted(v2)[n][0] for n in changed)
        with pytest.raises(mf.MismatchError):
            rb.Runner(_host_params(root, v2, m.url)).run()
        assert os.readlink(os.path.join(root, "store/current")) == "releases/" + r1["release_id"]
        m.faults.clear()
        del m.log[:]
        r2 = rb.Runner(_host_params(root, v2, m.url)).run()
        assert r2["mirror"]["fetched"] == changed and sorted(m.blob_requests()) == sorted(_wanted(v2)[n][0] for n in changed)
        assert r2["current_release"] == r2["release_id"] != r1["release_id"]
        assert sorted(r2["sources"].items()) == sorted((n, "stream" if n in changed else "copy") for n in _wanted(v2))
