"""A split only writes what differs (issue 13 item 8) and re-times, without rewriting, a file whose content is
right but whose mtime is not the pinned one (item 7, overlay side). Real fixture executables, real files.

"Nothing written" is observed through the directories: creating or removing a temp file changes a
directory's mtime, so an output directory whose mtime is unchanged had nothing created or removed in it.
"""
import os
import sys
import threading

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload as kp

# Every test here runs under each deflate engine installed (isal, zlib-ng) and under zlib alone (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("deflate_engine")


def _split(fixture, root, **kw):
    return kp.split(fixture["path"], dest=str(root / "libexec"), stripped_executable=str(root / "bin" / "k0s"),
                    streams_dest=str(root / "streams"), **kw)


def _dirs(root):
    return [root / "libexec", root / "bin", root / "streams" / "libexec", root / "streams" / "bin"]


def _age(root):
    """Push every output directory's mtime into the past so any later entry change shows."""
    for d in _dirs(root):
        os.utime(d, ns=(10 ** 18, 10 ** 18))


def _dir_mtimes(root):
    return dict((str(d), os.stat(d).st_mtime_ns) for d in _dirs(root))


def _changed(result):
    return sorted([f["name"] for f in result["files"] if f["changed"]]
                  + (["k0s"] if result["stripped_executable"]["changed"] else []))


@pytest.mark.parametrize("name", ["k0s-small-zip", "k0s-small-legacy"])
def test_no_change_split_creates_and_removes_nothing(tmp_path, fixtures, name):
    _split(fixtures[name], tmp_path, pin_mtime=True)
    _age(tmp_path)
    before = _dir_mtimes(tmp_path)
    again = _split(fixtures[name], tmp_path, pin_mtime=True)
    assert _changed(again) == [] and again["healed"] == [] and again["retimed"] == []
    assert _dir_mtimes(tmp_path) == before


@pytest.mark.parametrize("name", ["k0s-small-zip", "k0s-small-legacy"])
def test_one_damaged_binary_writes_only_that_binary(tmp_path, fixtures, name):
    fx = fixtures[name]
    _split(fx, tmp_path)
    victim = tmp_path / "libexec" / "runc"
    victim.write_bytes(b"not runc")
    _age(tmp_path)
    before = _dir_mtimes(tmp_path)
    again = _split(fx, tmp_path)
    assert again["healed"] == [str(victim)] and _changed(again) == ["runc"]
    assert kp.sha256_file(str(victim)) == fx["binaries"]["runc"]["sha256"]
    after = _dir_mtimes(tmp_path)
    # The stripped executable and the streams were right: no temp file came and went beside them.
    assert [after[k] == before[k] for k in sorted(before)] == [k != str(tmp_path / "libexec") for k in sorted(before)]


@pytest.mark.parametrize("name", ["k0s-small-legacy", "k0s-small-zip"])
def test_mtime_drift_is_a_change_fixed_by_utime_only(tmp_path, fixtures, name):
    fx = fixtures[name]
    first = _split(fx, tmp_path, pin_mtime=True)
    pinned = first["pinned_mtime_ns"]
    runc, k0s = tmp_path / "libexec" / "runc", tmp_path / "bin" / "k0s"
    for path in (runc, k0s):
        os.utime(path, ns=(pinned + 5, pinned + 5))
    inodes = [os.stat(p).st_ino for p in (runc, k0s)]
    _age(tmp_path)
    before = _dir_mtimes(tmp_path)

    dry = _split(fx, tmp_path, pin_mtime=True, write=False)
    assert _changed(dry) == ["k0s", "runc"] and dry["retimed"] == [str(runc), str(k0s)] and dry["healed"] == []
    assert os.stat(runc).st_mtime_ns == pinned + 5             # check mode: reported, not fixed

    fixed = _split(fx, tmp_path, pin_mtime=True)
    assert _changed(fixed) == ["k0s", "runc"] and fixed["retimed"] == [str(runc), str(k0s)] and fixed["healed"] == []
    assert [os.stat(p).st_mtime_ns for p in (runc, k0s)] == [pinned, pinned]
    assert [os.stat(p).st_ino for p in (runc, k0s)] == inodes   # same files: content not rewritten
    assert _dir_mtimes(tmp_path) == before
    assert _changed(_split(fx, tmp_path, pin_mtime=True)) == []


def test_without_pinning_mtime_is_not_a_change(tmp_path, fixtures):
    fx = fixtures["k0s-small-zip"]
    _split(fx, tmp_path)
    os.utime(tmp_path / "libexec" / "runc", ns=(5, 5))
    again = _split(fx, tmp_path)
    assert _changed(again) == [] and again["retimed"] == []


def _count_inflaters(fn):
    """How many inflaters of the selected engine ``fn`` creates, in every thread (a profiler hook: the real engine
    still runs)."""
    calls = []
    decompressobj = kp.engines.select().module.decompressobj

    def hook(frame, event, arg):
        if event == "c_call" and arg is decompressobj:
            calls.append(1)
    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return len(calls), result


@pytest.mark.parametrize("existing", [[], ["runc"]])
def test_legacy_split_inflates_each_member_once(tmp_path, fixtures, existing):
    """Item 9: the scan that finds each member's end also hashes and writes it; nothing is inflated twice."""
    fx = fixtures["k0s-small-legacy"]
    dest = tmp_path / "libexec"
    if existing:
        _split(fx, tmp_path)
        for name in os.listdir(dest):
            if name not in existing:
                os.unlink(dest / name)
    # Without streams: re-checking an existing bin/k0s.gz inflates that stream, which is not a member.
    count, result = _count_inflaters(lambda: kp.split(fx["path"], dest=str(dest),
                                                      stripped_executable=str(tmp_path / "bin" / "k0s")))
    assert count == len(fx["binaries"])
    assert dict((f["name"], f["sha256"]) for f in result["files"]) == \
        dict((n, b["sha256"]) for n, b in fx["binaries"].items())
    assert sorted(os.listdir(dest)) == sorted(fx["binaries"])


def test_legacy_fused_write_failure_leaves_dest_as_it_was(tmp_path, fixtures):
    """A member damaged after earlier members were already written by the scan: no temp file stays behind."""
    fx = fixtures["k0s-small-legacy"]
    payload = kp.inspect(fx["path"])
    last = payload.entries[-1]
    data = bytearray(open(fx["path"], "rb").read())
    data[last.data_offset + last.compressed_size // 2] ^= 0xFF
    exe = tmp_path / "k0s"
    exe.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "runc").write_bytes(b"previous runc\n")
    with pytest.raises(kp.CorruptPayloadError, match=last.name):
        kp.split(str(exe), dest=str(dest))
    assert os.listdir(dest) == ["runc"] and (dest / "runc").read_bytes() == b"previous runc\n"


@pytest.mark.parametrize("name", ["k0s-small-zip", "k0s-small-legacy"])
def test_stripped_executable_made_beside_the_inflating_is_not_committed_when_an_entry_fails(tmp_path, fixtures, name):
    """_split produces the stripped executable in a thread beside the entries' inflate: an entry that fails its
    checks leaves no stripped executable (nor its temp file) behind, as when it was written after them."""
    fx = fixtures[name]
    payload = kp.inspect(fx["path"])
    victim = max(payload.entries, key=lambda e: e.size)
    data = bytearray(open(fx["path"], "rb").read())
    data[victim.data_offset + victim.compressed_size // 2] ^= 0xFF
    exe = tmp_path / "k0s-damaged"
    exe.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(kp.CorruptPayloadError, match=victim.name):
        kp.split(str(exe), dest=str(out / "libexec"), stripped_executable=str(out / "k0s"), workers=2)
    left = [os.path.relpath(os.path.join(d, f), str(out)) for d, dummy, files in os.walk(str(out)) for f in files]
    assert left == []
    # The same split of the genuine executable: the stripped executable is the bare build, byte for byte.
    result = kp.split(fx["path"], dest=str(out / "libexec"), stripped_executable=str(out / "k0s"), workers=2)
    assert (out / "k0s").read_bytes() == open(fx["bare_path"], "rb").read()
    assert result["stripped_executable"]["changed"] and result["stripped_executable"]["sha256"] == \
        kp.sha256_file(fx["bare_path"])
