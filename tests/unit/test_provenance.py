"""Provenance of the controller cache: every fact derives from the executable; bundles checked against them;
private cache directories; retention. Real fixture executables and real files, no mocks."""
import gzip
import json
import os
import stat
import struct
import time
import zlib

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload as kp
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import fsio


def _split(fixture, root, **kw):
    return kp.split(fixture["path"], dest=str(root / "libexec"), stripped_executable=str(root / "bin" / "k0s"),
                    streams_dest=str(root / "streams"), **kw)


def _flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))


def test_split_derives_stream_facts_and_heals_only_what_differs(tmp_path, fixtures):
    fx = fixtures["k0s-small-zip"]
    first = _split(fx, tmp_path)
    assert first["healed"] == []
    for f in first["files"]:
        assert kp.sha256_file(f["stream"]) == f["stream_sha256"] and f["sha256"] == fx["binaries"][f["name"]]["sha256"]
    exe = first["stripped_executable"]
    assert kp.sha256_file(exe["stream"]) == exe["stream_sha256"]
    untouched = tmp_path / "libexec" / "xtables-nft-multi"
    ino = os.stat(untouched).st_ino
    runc, runc_gz = tmp_path / "libexec" / "runc", tmp_path / "streams" / "libexec" / "runc.gz"
    _flip(runc)
    runc_gz.write_bytes(gzip.compress(b"not runc"))
    # Check mode reports what would be healed and writes nothing.
    dry = _split(fx, tmp_path, write=False)
    assert dry["healed"] == [str(runc), str(runc_gz)] and kp.sha256_file(runc) != fx["binaries"]["runc"]["sha256"]
    again = _split(fx, tmp_path)
    assert again["healed"] == [str(runc), str(runc_gz)]
    assert kp.sha256_file(runc) == fx["binaries"]["runc"]["sha256"]
    assert [dict(f, changed=None) for f in again["files"]] == [dict(f, changed=None) for f in first["files"]]
    assert os.stat(untouched).st_ino == ino           # only what differed was rewritten
    assert _split(fx, tmp_path)["healed"] == []


def _streams(split, names):
    known = dict((f["name"], f) for f in split["files"])
    known["k0s"] = split["stripped_executable"]
    return [(n, known[n]["stream"], known[n]["stream_sha256"]) for n in names]


def test_bundle_members_are_checked_against_the_split_facts(tmp_path, fixtures):
    split = _split(fixtures["k0s-small-zip"], tmp_path / "split")
    streams = _streams(split, ["k0s", "runc"])
    b = kp.write_bundle(streams, str(tmp_path / "bundles"))
    assert kp.sha256_file(b["path"]) == b["sha256"] and b["changed"] and not b["healed"]
    # A cached bundle with other bytes of the same size is rewritten, never reused.
    _flip(b["path"])
    again = kp.write_bundle(streams, str(tmp_path / "bundles"))
    assert again["healed"] and again["changed"] and kp.sha256_file(b["path"]) == b["sha256"]
    assert not kp.write_bundle(streams, str(tmp_path / "bundles"))["changed"]
    # A stream that no longer matches the split facts fails naming the cache file; nothing is bundled.
    runc_gz = dict((s[0], s[1]) for s in streams)["runc"]
    _flip(runc_gz)
    before = sorted(os.listdir(tmp_path / "bundles"))
    with pytest.raises(kp.PayloadError) as e:
        kp.write_bundle(streams, str(tmp_path / "bundles"))
    assert "controller cache stream %s (runc)" % runc_gz in str(e.value) and "fleetsplit.k0s.split" in str(e.value)
    assert sorted(os.listdir(tmp_path / "bundles")) == before


@pytest.mark.parametrize("umask", [0, 0o077])
def test_private_dir_created_0700_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert fsio.ensure_private_dir(str(tmp_path / "a" / "b")) == "created"
        fsio.ensure_output_dir(str(tmp_path / "a" / "b" / "out"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b" / "out").st_mode) == 0o755
    assert fsio.ensure_private_dir(str(tmp_path / "a" / "b")) is None


def test_private_dir_tightened_or_refused(tmp_path):
    d = tmp_path / "split"
    d.mkdir()
    os.chmod(d, 0o750)
    assert fsio.ensure_private_dir(str(d)) == "tightened" and stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o770)
    with pytest.raises(kp.PayloadError, match=r"%s is group/world-writable \(mode 0770\).*chmod 700 %s" % (d, d)):
        fsio.ensure_private_dir(str(d))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o770
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(kp.PayloadError, match="is not a directory"):
        fsio.ensure_private_dir(str(f))


def _entry(cache, n, used):
    e = cache / "split" / ("%064x" % n)
    (e / "streams").mkdir(parents=True)
    kp.mark_used(str(e), str(cache / "downloads" / ("v%d" % n) / "k0s"))
    os.utime(e / kp.USED_MARKER, (used, used))
    return e


def test_prune_keeps_the_most_recently_used_and_their_downloads(tmp_path):
    now = time.time()
    entries = [_entry(tmp_path, n, now - 100 * n) for n in range(1, 5)]     # 1 newest ... 4 oldest
    for n in range(1, 5):
        (tmp_path / "downloads" / ("v%d" % n)).mkdir(parents=True)
    foreign = tmp_path / "split" / "not-an-entry"
    foreign.mkdir()
    (tmp_path / "hosts").mkdir()
    kp.mark_used(str(entries[3]), str(tmp_path / "downloads" / "v4" / "k0s"))    # 4 used right now
    removed = kp.prune_cache(str(entries[3]), 2)
    assert sorted(os.listdir(tmp_path / "split")) == sorted(["not-an-entry", entries[0].name, entries[3].name])
    assert sorted(os.listdir(tmp_path / "downloads")) == ["v1", "v4"]
    assert sorted(removed) == sorted(str(p) for p in [entries[1], entries[2], tmp_path / "downloads" / "v2",
                                                      tmp_path / "downloads" / "v3"])
    assert (tmp_path / "hosts").is_dir()
    assert json.loads((entries[3] / kp.USED_MARKER).read_text())["source"].endswith("downloads/v4/k0s")


def test_private_dir_check_only_writes_nothing(tmp_path):
    assert fsio.ensure_private_dir(str(tmp_path / "a" / "b"), write=False) == "created"
    assert not (tmp_path / "a").exists()
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(d, 0o755)
    assert fsio.ensure_private_dir(str(d), write=False) == "tightened" and stat.S_IMODE(os.stat(d).st_mode) == 0o755


def test_executable_stream_is_verified_by_inflating_it(tmp_path, fixtures):
    fx = fixtures["k0s-small-zip"]
    first = _split(fx, tmp_path)
    k0s_gz = tmp_path / "streams" / "bin" / "k0s.gz"
    bare = (tmp_path / "bin" / "k0s").read_bytes()
    exe = first["stripped_executable"]
    # Another valid encoding of exactly the stripped executable is as good: kept, its own sha256 reported.
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    other = kp.GZIP_HEADER + deflate.compress(bare) + deflate.flush() + struct.pack("<II", exe["crc32"], exe["size"])
    k0s_gz.write_bytes(other)
    again = _split(fx, tmp_path)
    assert again["healed"] == [] and k0s_gz.read_bytes() == other
    assert again["stripped_executable"]["stream_sha256"] == kp.sha256_file(str(k0s_gz))
    # Trailing bytes, or a member of other content with a forged trailer: rewritten.
    for bad in (other + b"x", other[:10] + zlib.compress(b"not k0s")[2:-4] + other[-8:]):
        k0s_gz.write_bytes(bad)
        assert _split(fx, tmp_path)["healed"] == [str(k0s_gz)]
        assert gzip.decompress(k0s_gz.read_bytes()) == bare


def test_marking_a_cache_entry_used_again_creates_no_file(tmp_path):
    """A no-change run only moves the marker's mtime (the retention clock): no temp file, same inode."""
    entry = tmp_path / "split" / ("a" * 64)
    entry.mkdir(parents=True)
    src = tmp_path / "k0s"
    src.write_bytes(b"k0s")
    kp.mark_used(str(entry), str(src))
    marker = entry / kp.USED_MARKER
    os.utime(marker, ns=(10 ** 9, 10 ** 9))
    os.utime(entry, ns=(10 ** 9, 10 ** 9))
    inode = os.stat(marker).st_ino
    kp.mark_used(str(entry), str(src))
    assert os.stat(marker).st_ino == inode and os.stat(marker).st_mtime_ns > 10 ** 9
    assert os.stat(entry).st_mtime_ns == 10 ** 9       # nothing created or renamed in the entry
    other = tmp_path / "k0s-other"
    other.write_bytes(b"other")
    kp.mark_used(str(entry), str(other))                # another source: rewritten
    assert json.loads(marker.read_text())["source"] == str(other)
