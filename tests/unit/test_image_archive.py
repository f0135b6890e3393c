"""plugins/module_utils/image_tree.py and image_archive.py on real trees of the fixture binaries: reproducible tar
and cpio newc archives, read back by GNU tar and GNU cpio, and the inputs they refuse."""
import os
import shutil
import stat

import pytest

from imagelib import cpio_listing, extract_cpio, extract_tar, listing, newc_headers, strip_cpio_times
from testlib import FIXTURES, sha256
from ansible_collections.fleetsplit.k0s.plugins.module_utils import image_archive as ia
from ansible_collections.fleetsplit.k0s.plugins.module_utils import image_tree as it
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.errors import PayloadError

EPOCH = 1700000000
PINNED = 1795376643          # the "executable's" mtime a legacy tree keeps on its release files
KEEP = ["usr/bin/k0s", "usr/libexec/k0s/runc", "usr/libexec/k0s/xtables-nft-multi"]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="extracting owners 0/0 needs root")


def make_tree(root, stamp):
    """A small overlay-shaped tree of real binaries; every entry timed ``stamp`` except the pinned release files."""
    for d in ("usr/bin", "usr/libexec/k0s", "var/lib/k0s/bin", "etc/systemd/system/multi-user.target.wants",
              "etc/k0s"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(str(FIXTURES / "k0s-small-legacy.bare"), os.path.join(root, "usr/bin/k0s"))
    for name in ("runc", "xtables-nft-multi"):
        shutil.copy(str(FIXTURES / "bins" / name), os.path.join(root, "usr/libexec/k0s", name))
        os.symlink("/usr/libexec/k0s/" + name, os.path.join(root, "var/lib/k0s/bin", name))
    with open(os.path.join(root, "etc/systemd/system/k0sworker.service"), "w") as f:
        f.write("[Service]\nExecStart=/usr/bin/k0s worker\n")
    with open(os.path.join(root, "etc/k0s/k0sworker.env"), "w") as f:
        f.write("A=1\n")
    os.chmod(os.path.join(root, "etc/k0s/k0sworker.env"), 0o600)
    os.symlink("/etc/systemd/system/k0sworker.service",
               os.path.join(root, "etc/systemd/system/multi-user.target.wants/k0sworker.service"))
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (stamp, stamp), follow_symlinks=False)
    for rel in KEEP:
        os.utime(os.path.join(root, rel), ns=(PINNED * 10**9 + 123456789,) * 2)


@pytest.fixture
def two_trees(tmp_path):
    """The same content twice, at different paths, with different on-disk timestamps and umask leftovers."""
    a, b = str(tmp_path / "a" / "stage"), str(tmp_path / "elsewhere" / "b" / "x")
    make_tree(a, 1111111111)
    make_tree(b, 1234567890)
    return a, b


@pytest.mark.parametrize("fmt", ["tar", "cpio"])
def test_two_builds_are_byte_identical(tmp_path, two_trees, fmt):
    a, b = two_trees
    ea, eb = it.scan(a, EPOCH, KEEP), it.scan(b, EPOCH, KEEP)
    (tmp_path / "out").mkdir()
    ra = ia.write_archive(fmt, ea, str(tmp_path / "out" / ("a." + fmt)))
    rb = ia.write_archive(fmt, eb, str(tmp_path / "out" / ("b." + fmt)))
    assert ra["changed"] and rb["changed"]
    assert (tmp_path / "out" / ("a." + fmt)).read_bytes() == (tmp_path / "out" / ("b." + fmt)).read_bytes()
    assert ra["sha256"] == rb["sha256"] == sha256(tmp_path / "out" / ("a." + fmt))
    # No build-host data: neither staging path nor any on-disk timestamp of the unpinned entries is in it.
    data = (tmp_path / "out" / ("a." + fmt)).read_bytes()
    assert str(tmp_path).encode() not in data
    # The pinned files' mtime is part of the content: another pin, other bytes.
    os.utime(os.path.join(b, KEEP[1]), (PINNED + 1, PINNED + 1))
    rc = ia.write_archive(fmt, it.scan(b, EPOCH, KEEP), str(tmp_path / "out" / ("c." + fmt)))
    assert rc["sha256"] != ra["sha256"]


def test_scan_entries(two_trees):
    a, dummy = two_trees
    entries = it.scan(a, EPOCH, KEEP)
    paths = [e.path for e in entries]
    assert paths == sorted(paths, key=lambda p: p.encode())
    by = {e.path: e for e in entries}
    assert by["usr/bin/k0s"].mtime == PINNED and by["usr/bin/k0s"].kind == "file"
    assert by["usr/bin/k0s"].sha256 == sha256(FIXTURES / "k0s-small-legacy.bare")
    assert by["usr/libexec/k0s/xtables-nft-multi"].mtime == PINNED
    assert {e.mtime for e in entries if e.path not in KEEP} == {EPOCH}
    assert by["var/lib/k0s/bin/runc"].kind == "symlink" and by["var/lib/k0s/bin/runc"].target == "/usr/libexec/k0s/runc"
    assert by["etc/k0s/k0sworker.env"].mode == 0o600
    assert by["usr"].kind == "dir" and "" not in by
    # Every directory comes before what it holds.
    seen = set()
    for e in entries:
        parent = e.path.rpartition("/")[0]
        assert not parent or parent in seen
        seen.add(e.path)


@as_root
def test_tar_read_back_by_gnu_tar(tmp_path, two_trees):
    a, dummy = two_trees
    entries = it.scan(a, EPOCH, KEEP)
    out = tmp_path / "k0s.tar"
    ia.write_archive("tar", entries, str(out))
    extract_tar(out, tmp_path / "x")
    want = {e.path: (e.kind, None if e.kind == "symlink" else e.mode, 0, 0, e.mtime, e.sha256 or e.target)
            for e in entries}
    assert listing(tmp_path / "x") == want


@as_root
def test_cpio_read_back_by_gnu_cpio(tmp_path, two_trees):
    a, dummy = two_trees
    entries = it.scan(a, EPOCH, KEEP)
    out = tmp_path / "k0s.cpio"
    ia.write_archive("cpio", entries, str(out))
    extract_cpio(out, tmp_path / "x")
    got = listing(tmp_path / "x")
    want = {e.path: (e.kind, None if e.kind == "symlink" else e.mode, 0, 0, e.mtime, e.sha256 or e.target)
            for e in entries}
    # GNU cpio -i leaves directory and symlink mtimes at extraction time: those come from the headers below.
    assert strip_cpio_times(got) == strip_cpio_times(want)
    assert [(r[1], r[2], r[3]) for r in cpio_listing(out)] == [(0, 0, e.path) for e in entries]
    heads = newc_headers(out)
    assert [(h[0], h[5], stat.S_IMODE(h[1]), h[4]) for h in heads] == \
        [(e.path, e.mtime, 0o777 if e.kind == "symlink" else e.mode, 2 if e.kind == "dir" else 1) for e in entries]
    assert out.stat().st_size % 512 == 0


@pytest.mark.parametrize("fmt", ["tar", "cpio"])
def test_unchanged_output_is_left_alone_and_check_writes_nothing(tmp_path, two_trees, fmt):
    a, dummy = two_trees
    entries = it.scan(a, EPOCH, KEEP)
    out = tmp_path / ("k0s." + fmt)
    dry = ia.write_archive(fmt, entries, str(out), write=False)
    assert not out.exists() and sorted(os.listdir(str(tmp_path))) == ["a", "elsewhere"]
    first = ia.write_archive(fmt, entries, str(out), mode=0o640)
    assert first["sha256"] == dry["sha256"] and first["size"] == dry["size"] == out.stat().st_size
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    ino = out.stat().st_ino
    again = ia.write_archive(fmt, entries, str(out))
    assert not again["changed"] and out.stat().st_ino == ino
    assert sorted(os.listdir(str(tmp_path))) == ["a", "elsewhere", "k0s." + fmt], "no temporary file left"


def test_refused_trees(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    os.mkfifo(str(root / "fifo"))
    with pytest.raises(it.TreeError, match=r"r/fifo is neither a directory, a regular file nor a symlink"):
        it.scan(str(root))
    os.unlink(str(root / "fifo"))
    (root / "bad\nname").write_text("x")
    with pytest.raises(it.TreeError, match=r"'bad\\nname' contains the control character"):
        it.scan(str(root))
    os.unlink(str(root / "bad\nname"))
    (root / "f").write_text("x")
    with pytest.raises(it.TreeError, match="keep_mtime names usr/bin/k0s, which is not in the staged tree"):
        it.scan(str(root), keep_mtime=["usr/bin/k0s"])
    with pytest.raises(it.TreeError, match="not a normalised relative path"):
        it.scan(str(root), keep_mtime=["/f"])
    for bad in (-1, 2**32, "0", True):
        with pytest.raises(it.TreeError, match="epoch must be an integer"):
            it.scan(str(root), epoch=bad)


def test_changed_file_while_packing_is_refused(tmp_path, two_trees):
    a, dummy = two_trees
    entries = it.scan(a, EPOCH, KEEP)
    with open(os.path.join(a, "usr/libexec/k0s/runc"), "r+b") as f:
        f.write(b"\0")
    out = tmp_path / "k0s.cpio"
    with pytest.raises(it.TreeError, match="runc changed while the image was being written"):
        ia.write_archive("cpio", entries, str(out))
    assert not out.exists() and sorted(os.listdir(str(tmp_path))) == ["a", "elsewhere"]


def test_refused_destinations(tmp_path):
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "dir.tar").mkdir()
    os.symlink("/etc/passwd", str(tmp_path / "link.tar"))
    cases = {str(tmp_path / "missing" / "k0s.tar"): "its directory .*missing does not exist",
             str(tmp_path / "dir.tar"): "is a directory",
             str(tmp_path / "link.tar"): "is a symlink",
             str(root / "sub" / "k0s.tar"): "lies inside the tree it packs"}
    for dest, message in cases.items():
        with pytest.raises(PayloadError, match=message):
            ia.check_dest(dest, str(root))
    assert ia.check_dest(str(tmp_path / "k0s.tar"), str(root)) == str(tmp_path / "k0s.tar")


def test_apply_tree_puts_the_entries_times_on_disk(two_trees):
    """For writers that pack a directory with an external tool: after apply_tree the tree says what the entries say."""
    a, dummy = two_trees
    os.chmod(os.path.join(a, "usr/bin"), 0o700)
    entries = it.scan(a, EPOCH, KEEP)
    entries = [e._replace(mode=0o755) if e.path == "usr/bin" else e for e in entries]
    it.apply_tree(entries)
    for e in entries:
        st = os.lstat(e.source)
        assert st.st_mtime_ns == e.mtime * 10**9, e.path
        if e.kind != "symlink":
            assert stat.S_IMODE(st.st_mode) == e.mode, e.path
    assert it.scan(a, EPOCH, KEEP) == entries
