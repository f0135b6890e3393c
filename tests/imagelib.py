"""Image files read back with the standard tools (GNU tar, GNU cpio) and trees compared entry by entry.

Shared by tests/unit/test_image_archive.py and tests/integration/test_image_outputs.py."""
import os
import stat
import subprocess

from testlib import sha256


def listing(root, skip=()):
    """{relative path: (kind, permission bits, uid, gid, mtime seconds, sha256 or link target)} below ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, str(root))
            if rel in skip:
                continue
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                kind, content = "dir", None
            elif stat.S_ISLNK(st.st_mode):
                kind, content = "symlink", os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                kind, content = "file", sha256(path)
            else:
                kind, content = "other", None
            # A symlink's mode is not restored by extractors (always 0777 on Linux): leave it out.
            mode = None if kind == "symlink" else stat.S_IMODE(st.st_mode)
            out[rel] = (kind, mode, st.st_uid, st.st_gid, st.st_mtime_ns // 10**9, content)
    return out


def extract_tar(archive, dest):
    """GNU tar as root: owners, modes and mtimes (directories too) as the archive records them."""
    os.makedirs(str(dest), exist_ok=True)
    subprocess.run(["tar", "-x", "-p", "--same-owner", "--numeric-owner", "-f", str(archive), "-C", str(dest)],
                   check=True, capture_output=True, text=True)


def extract_cpio(archive, dest):
    """GNU cpio -i as root (-m keeps file mtimes; GNU cpio leaves directory mtimes at extraction time)."""
    os.makedirs(str(dest), exist_ok=True)
    with open(str(archive), "rb") as f:
        subprocess.run(["cpio", "-i", "-d", "-m", "--no-absolute-filenames", "--quiet"], stdin=f, cwd=str(dest),
                       check=True, capture_output=True)


def strip_cpio_times(tree):
    """A ``listing`` without the mtimes GNU cpio -i does not restore (directories, symlinks)."""
    return {k: v[:4] + (None,) + v[5:] if v[0] in ("dir", "symlink") else v for k, v in tree.items()}


def cpio_listing(archive):
    """`cpio -itv --numeric-uid-gid` lines split into (mode string, uid, gid, name): what the tool sees."""
    with open(str(archive), "rb") as f:
        out = subprocess.run(["cpio", "-itv", "--numeric-uid-gid", "--quiet"], stdin=f, check=True,
                             capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 8)
        name = parts[8].split(" -> ")[0]
        rows.append((parts[0], int(parts[2]), int(parts[3]), name))
    return rows


def newc_headers(archive):
    """[(name, mode, uid, gid, nlink, mtime, size)] of a cpio newc archive, read field by field (to check what
    GNU cpio does not restore: directory mtimes)."""
    data = open(str(archive), "rb").read()
    pos, out = 0, []
    while True:
        assert data[pos:pos + 6] == b"070701", "bad magic at %d" % pos
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, f[1], f[2], f[3], f[4], f[5], size))
