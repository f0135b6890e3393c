# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""A systemd system extension (sysext) image of the directory overlay of deploy_k0s (docs/sysext.md).

Controller side, standard library only. ``build_sysext`` takes the sorted entries of the overlay
(``image_tree.scan``: path, kind, mode, mtime, size, sha256, target, source), maps them to what a sysext may
hold (only ``/usr`` and ``/opt``: systemd-sysext merges nothing else), builds that tree in a private 0700
temporary directory with every mode and mtime set, and packs it with mksquashfs or mkfs.erofs into
``dest_tmp`` so that the same input gives the same bytes:

- ``usr/**`` and ``opt/**`` are kept as they are;
- ``etc/systemd/system/<unit>.service`` -> ``usr/lib/systemd/system/<unit>.service``; its enablement link
  becomes a ``multi-user.target.d`` drop-in with ``Upholds=`` (what flatcar/sysext-bakery ships, e.g.
  kubernetes.sysext, containerd.sysext: a unit merged after boot is started without a second transaction);
- OpenRC files are dropped (a sysext is systemd's) and listed in ``dropped``;
- other files under ``etc/`` (k0s.yaml, the unit's 0600 env file) ship as factory copies under
  ``usr/share/fleetsplit-k0s/factory/etc/...``; the image's tmpfiles.d drop-in copies each to /etc at boot
  when absent (``C``);
- ``<data-dir>/bin/<name>`` links become tmpfiles ``d`` + ``L+`` lines (a sysext cannot carry /var);
- ``usr/libexec/k0s/kubelet-plugins`` is a link to ``<data-dir>/kubelet-plugins`` (created by tmpfiles):
  k0s points the kubelet's volumePluginDir below it and /usr is read-only once merged;
- anything else (airgap bundles, files outside /usr) is refused naming the path.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid

from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file

MANIFEST = "usr/share/fleetsplit-k0s/manifest.json"
FACTORY = "usr/share/fleetsplit-k0s/factory"
TMPFILES = "usr/lib/tmpfiles.d/fleetsplit-k0s.conf"
UNIT_DIR = "usr/lib/systemd/system"
KUBELET_PLUGINS = "usr/libexec/k0s/kubelet-plugins"   # k0s: workerconfig/reconciler.go volumePluginDir
OPENRC_DIRS = ("etc/init.d/", "etc/conf.d/", "etc/runlevels/")
FILESYSTEMS = ("squashfs", "erofs")
COMPRESSION = {"squashfs": ("gzip", "xz", "zstd", "lz4", "lzo", "lzma"), "erofs": ("lz4hc", "lz4", "none")}
DEFAULT_COMPRESSION = {"squashfs": "gzip", "erofs": "lz4hc"}
TOOLS = {"squashfs": ("mksquashfs", "squashfs-tools"), "erofs": ("mkfs.erofs", "erofs-utils")}

# systemd src/basic/architecture.c spelling, from pyelftools' e_machine and from payload.elf's uname spelling.
ARCHITECTURES = {
    "EM_X86_64": "x86-64", "x86_64": "x86-64",
    "EM_AARCH64": "arm64", "aarch64": "arm64",
    "EM_ARM": "arm", "armv7l": "arm", "armv6l": "arm",
    "EM_386": "x86", "i386": "x86", "i686": "x86",
    "EM_RISCV": "riscv64", "riscv64": "riscv64",
    "EM_PPC64": "ppc64-le", "ppc64le": "ppc64-le", "ppc64": "ppc64",
    "EM_S390": "s390x", "s390x": "s390x",
    "EM_LOONGARCH": "loongarch64", "loongarch64": "loongarch64",
}
SYSTEMD_ARCHITECTURES = frozenset(ARCHITECTURES.values())

_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# os-release(5): ID, VERSION_ID and SYSEXT_LEVEL are lower-case 0-9, a-z, ".", "_", "-": safe unquoted.
_OS_VALUE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
_UUID_NS = uuid.UUID("5f0c2a49-52a4-4e0c-9d1e-6b9f1c7c0a14")


class SysextError(Exception):
    """An overlay or option that cannot become a sysext image; the message names the path or option."""


def systemd_architecture(elf_machine):
    """systemd's spelling (x86-64, arm64, ...) of an ELF machine (EM_X86_64 or payload.elf's x86_64)."""
    name = ARCHITECTURES.get(str(elf_machine))
    if name is None:
        raise SysextError("no systemd architecture known for the ELF machine %r (known: %s): set "
                          "k0s_sysext_architecture (sysext option architecture) to one of them (systemd src/basic/architecture.c)"
                          % (elf_machine, ", ".join(sorted(SYSTEMD_ARCHITECTURES))))
    return name


def _text_option(options, key, pattern, what):
    value = options.get(key)
    if value in (None, ""):
        return None
    value = str(value)
    if not pattern.match(value):
        raise SysextError("sysext option %s=%r is not valid: %s" % (key, value, what))
    return value


def check_options(options):
    """The options with defaults applied; every refusal names the option."""
    name = options.get("name") or "k0s"
    if not _NAME.match(str(name)) or str(name).endswith(".raw"):
        raise SysextError("sysext option name=%r is not valid: the image name without .raw, 1-64 characters "
                          "A-Z a-z 0-9 . _ - starting with a letter or digit, no path" % (name,))
    os_id = options.get("os_id") or "_any"
    if os_id != "_any":
        _text_option({"os_id": os_id}, "os_id", _OS_VALUE, "_any or an os-release ID (lower-case a-z 0-9 . _ -)")
    version_id = _text_option(options, "version_id", _OS_VALUE, "an os-release VERSION_ID (lower-case a-z 0-9 . _ -)")
    level = _text_option(options, "sysext_level", _OS_VALUE, "an os-release SYSEXT_LEVEL (lower-case a-z 0-9 . _ -)")
    if os_id != "_any" and not (version_id or level):
        # systemd (os-util.c extension_release_validate): with a host ID, the host's SYSEXT_LEVEL or else its
        # VERSION_ID must be matched; an image with neither is refused on every host that has version info.
        raise SysextError("sysext os_id=%s needs sysext_level or version_id (systemd refuses an extension for a "
                          "specific OS without one); use os_id=_any for any OS" % os_id)
    arch = options.get("architecture") or options.get("elf_machine")
    if not arch:
        raise SysextError("sysext option architecture (systemd spelling, e.g. x86-64, arm64) or elf_machine "
                          "(the k0s executable's, e.g. x86_64) is required")
    arch = arch if arch in SYSTEMD_ARCHITECTURES else systemd_architecture(arch)
    fs = options.get("filesystem") or "squashfs"
    if fs not in FILESYSTEMS:
        raise SysextError("sysext option filesystem=%r is not one of %s" % (fs, ", ".join(FILESYSTEMS)))
    comp = options.get("compression") or DEFAULT_COMPRESSION[fs]
    if comp not in COMPRESSION[fs]:
        raise SysextError("sysext option compression=%r is not one of %s for %s"
                          % (comp, ", ".join(COMPRESSION[fs]), fs))
    epoch = options.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= 0xffffffff:
        raise SysextError("sysext option epoch must be an integer from 0 to 4294967295, got %r" % (epoch,))
    reload_manager = options.get("reload_manager", False)
    if not isinstance(reload_manager, bool):
        raise SysextError("sysext option reload_manager must be a boolean, got %r" % (reload_manager,))
    return dict(name=str(name), os_id=os_id, version_id=version_id, sysext_level=level, architecture=arch,
                filesystem=fs, compression=comp, epoch=epoch, reload_manager=reload_manager)


def extension_release(opts):
    """usr/lib/extension-release.d/extension-release.<name>: every value matched os-release's plain charset."""
    lines = ["ID=%s" % opts["os_id"]]
    if opts["sysext_level"]:
        lines.append("SYSEXT_LEVEL=%s" % opts["sysext_level"])
    if opts["version_id"]:
        lines.append("VERSION_ID=%s" % opts["version_id"])
    lines.append("ARCHITECTURE=%s" % opts["architecture"])
    if opts["reload_manager"]:
        lines.append("EXTENSION_RELOAD_MANAGER=1")
    return "\n".join(lines) + "\n"


def _tmpfiles_path(path):
    # tmpfiles.d(5) paths may use C escapes; ours come from the overlay's checked variables (no spaces,
    # no control characters, no specifier %), anything else is refused rather than escaped.
    if not re.match(r"\A/[A-Za-z0-9._+~@:/-]+\Z", path):
        raise SysextError("path %r cannot go into a tmpfiles.d line unescaped: use a plain path" % path)
    return path


def _read_manifest(by_path):
    entry = by_path.get(MANIFEST)
    if entry is None or entry.kind != "file":
        raise SysextError("%s is missing from the overlay: build the directory overlay with deploy_k0s first"
                          % MANIFEST)
    with open(entry.source, "rb") as f:
        try:
            return json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            raise SysextError("%s in the overlay is not valid JSON: %s" % (MANIFEST, e))


def plan(entries, opts):
    """What the image holds: {image path: node}, mapping, dropped, tmpfiles lines (no file is written)."""
    by_path = dict((e.path, e) for e in entries)
    manifest = _read_manifest(by_path)
    links = [f.get("data_dir_link") for f in manifest.get("files", []) if f.get("data_dir_link")]
    data_dir = os.path.dirname(os.path.dirname(links[0])) if links else "/var/lib/k0s"
    data_rel = data_dir.strip("/")
    epoch = opts["epoch"]
    nodes, mapping, dropped = {}, {}, []
    tmp_dirs, tmp_links, tmp_copies = [], [], []

    def add(path, kind, mode=0o755, mtime=epoch, source=None, sha256=None, target=None, content=None):
        if path in nodes:
            raise SysextError("the overlay already has %s, which the sysext image writes itself" % path)
        nodes[path] = dict(kind=kind, mode=mode, mtime=mtime, source=source, sha256=sha256, target=target,
                           content=content)

    def keep(entry, path):
        add(path, entry.kind, entry.mode, entry.mtime, entry.source, entry.sha256, entry.target)
        mapping[entry.path] = path

    for e in entries:
        p = e.path
        top = p.split("/", 1)[0]
        if top in ("usr", "opt"):
            keep(e, p)
        elif p.startswith(OPENRC_DIRS) or p in ("etc/init.d", "etc/conf.d", "etc/runlevels"):
            if e.kind != "dir":
                dropped.append(p)
        elif p.startswith("etc/systemd/system/multi-user.target.wants/") and e.kind == "symlink":
            unit = p.rsplit("/", 1)[1]
            stem = unit[:-len(".service")] if unit.endswith(".service") else unit
            drop_in = "%s/multi-user.target.d/10-%s.conf" % (UNIT_DIR, stem)
            add(drop_in, "file", 0o644, content=("[Unit]\nUpholds=%s\n" % unit).encode("ascii"))
            mapping[p] = drop_in
        elif re.match(r"\Aetc/systemd/system/[^/]+\.service\Z", p) and e.kind == "file":
            keep(e, "%s/%s" % (UNIT_DIR, p.rsplit("/", 1)[1]))
        elif p in ("etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/multi-user.target.wants"):
            continue
        elif top == "etc" and e.kind == "dir":
            tmp_dirs.append((p, e.mode))   # parents of factory files: created with their mode before the copy
        elif top == "etc" and e.kind == "file":
            keep(e, "%s/%s" % (FACTORY, p))
            tmp_copies.append(p)
        elif p == data_rel + "/images" or p.startswith(data_rel + "/images/") \
                or p == data_rel + "/.fleetsplit-images.json":
            raise SysextError("the overlay has /%s (airgap image bundles, k0s_airgap_bundles): a sysext cannot "
                              "carry %s; build the sysext without k0s_airgap_bundles and place the bundles on "
                              "the hosts" % (p, data_dir))
        elif (p + "/").startswith(data_rel + "/") or (data_rel + "/").startswith(p + "/"):
            if e.kind == "dir":
                if (p + "/").startswith(data_rel + "/"):
                    tmp_dirs.append((p, e.mode))
            elif e.kind == "symlink" and os.path.dirname(p) == data_rel + "/bin":
                tmp_links.append((p, e.target))
                mapping[p] = TMPFILES
            else:
                raise SysextError("/%s is not a data-dir link: a sysext holds only /usr and /opt; remove it "
                                  "from the overlay" % p)
        else:
            raise SysextError("/%s is outside /usr and /opt: a sysext merges only those (check k0s_bin_dir, "
                              "k0s_libexec_dir and k0s_config_path)" % p)

    if KUBELET_PLUGINS in nodes:
        raise SysextError("the overlay has /%s: the sysext links it to %s/kubelet-plugins itself"
                          % (KUBELET_PLUGINS, data_dir))
    plugins = data_dir + "/kubelet-plugins"
    add(KUBELET_PLUGINS, "symlink", 0o777, target=plugins)
    name = opts["name"]
    release = extension_release(opts)
    add("usr/lib/extension-release.d/extension-release.%s" % name, "file", 0o644, content=release.encode("ascii"))

    lines = ["# fleetsplit.k0s sysext %s: what k0s needs outside /usr, created at boot (tmpfiles.d(5))." % name]
    for p, mode in sorted(tmp_dirs):
        lines.append("d %s %04o root root -" % (_tmpfiles_path("/" + p), mode))
    for p in tmp_copies:
        lines.append("C %s - - - - /%s/%s" % (_tmpfiles_path("/" + p), FACTORY, p))
    for p, target in sorted(tmp_links):
        lines.append("L+ %s - - - - %s" % (_tmpfiles_path("/" + p), _tmpfiles_path(target)))
    for sub in ("", "/volume", "/volume/exec"):
        lines.append("d %s%s 0755 root root -" % (_tmpfiles_path(plugins), sub))
    tmpfiles = "\n".join(lines) + "\n"
    add(TMPFILES, "file", 0o644, content=tmpfiles.encode("ascii"))

    # Parent directories the mapping created (usr/lib/systemd/system, the factory tree, ...).
    for path in sorted(nodes):
        parent = os.path.dirname(path)
        while parent and parent not in nodes:
            nodes[parent] = dict(kind="dir", mode=0o755, mtime=epoch, source=None, sha256=None, target=None,
                                 content=None)
            parent = os.path.dirname(parent)
    for path, node in nodes.items():
        parent = os.path.dirname(path)
        if parent and nodes[parent]["kind"] != "dir":
            raise SysextError("/%s is below /%s, which is not a directory in the image" % (path, parent))
    return dict(nodes=nodes, mapping=mapping, dropped=sorted(dropped), tmpfiles=tmpfiles,
                extension_release=release, data_dir=data_dir)


def _copy_checked(src, dest, sha256):
    digest = hashlib.sha256()
    with open(src, "rb") as fin:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                digest.update(chunk)
                fout.write(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise SysextError("%s changed while the image was built (sha256 %s, scanned %s): re-run"
                          % (src, digest.hexdigest(), sha256))


def materialize(nodes, tree):
    """Write the planned tree below ``tree`` (an empty private dir), then modes and mtimes, deepest first."""
    for path in sorted(nodes, key=lambda p: p.encode("utf-8")):
        node, dest = nodes[path], os.path.join(tree, path)
        if node["kind"] == "dir":
            os.mkdir(dest, 0o700)
        elif node["kind"] == "symlink":
            os.symlink(node["target"], dest)
        elif node["content"] is not None:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(node["content"])
        else:
            _copy_checked(node["source"], dest, node["sha256"])
    for path in sorted(nodes, key=lambda p: (nodes[p]["kind"] == "dir", -p.count("/"), p)):
        node, dest = nodes[path], os.path.join(tree, path)
        if node["kind"] != "symlink":
            os.chmod(dest, node["mode"])
        os.utime(dest, ns=(node["mtime"] * 1000000000,) * 2, follow_symlinks=False)


def find_tool(filesystem):
    exe, package = TOOLS[filesystem]
    path = shutil.which(exe) or next((p for p in ("/usr/sbin/" + exe, "/sbin/" + exe) if os.access(p, os.X_OK)),
                                     None)
    if not path:
        raise SysextError("%s is not installed on the controller: install the Debian package %s "
                          "(apt-get install %s) to build a %s sysext" % (exe, package, package, filesystem))
    return path


def _crc32c(data, crc=0xffffffff):
    # erofs-utils' crc32c (Castagnoli, reflected, no final xor), for the superblock checksum.
    table = _crc32c.table
    if table is None:
        table = _crc32c.table = []
        for i in range(256):
            c = i
            for dummy in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
    for b in bytearray(data):
        crc = table[(crc ^ b) & 0xff] ^ (crc >> 8)
    return crc


_crc32c.table = None
EROFS_SB = 1024            # superblock offset; magic, checksum, feature_compat, ..., build_time at +24
EROFS_MAGIC = 0xE0F5E1E2
EROFS_SB_CHKSUM = 0x1


def fix_erofs_build_time(path, epoch):
    """mkfs.erofs 1.5 has no fixed mkfs time that keeps per-file mtimes (-T sets every inode): build with the
    current time, then set the superblock's build_time to ``epoch`` and redo its checksum. Every inode was
    written extended (own mtime), since no entry's mtime equals the build time (checked by the caller)."""
    with open(path, "r+b") as f:
        f.seek(EROFS_SB)
        block = bytearray(f.read(4096 - EROFS_SB))
        magic, dummy, compat = struct.unpack_from("<III", block, 0)
        if magic != EROFS_MAGIC:
            raise SysextError("%s is not an erofs image (magic %#x)" % (path, magic))
        struct.pack_into("<QI", block, 24, epoch, 0)
        if compat & EROFS_SB_CHKSUM:
            struct.pack_into("<I", block, 4, 0)
            struct.pack_into("<I", block, 4, _crc32c(bytes(block)))
        f.seek(EROFS_SB)
        f.write(block)


def pack(tree, dest_tmp, opts, fs_uuid, newest_mtime):
    fs, epoch = opts["filesystem"], opts["epoch"]
    tool = find_tool(fs)
    if fs == "squashfs":
        cmd = [tool, tree, dest_tmp, "-noappend", "-all-root", "-no-xattrs", "-mkfs-time", str(epoch),
               "-comp", opts["compression"], "-quiet", "-no-progress"]
    else:
        if newest_mtime >= int(time.time()):
            raise SysextError("an image entry has an mtime at or after now (%d): erofs keeps per-file mtimes only "
                              "for times before the build; use a past epoch" % newest_mtime)
        cmd = [tool, "--quiet", "--all-root", "-x-1", "-U%s" % fs_uuid]
        if opts["compression"] != "none":
            cmd.append("-z%s" % opts["compression"])
        cmd += [dest_tmp, tree]
    # The epoch is passed explicitly (deploy_k0s defaults it from SOURCE_DATE_EPOCH); with that variable set as
    # well, mksquashfs 4.5 refuses -mkfs-time and mkfs.erofs would re-stamp the inodes.
    env = dict((k, v) for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.communicate()[0].decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SysextError("%s failed (exit %d): %s" % (" ".join(cmd), proc.returncode, out.strip()[-2000:]))
    if fs == "erofs":
        fix_erofs_build_time(dest_tmp, epoch)
    return cmd


def build_sysext(entries, root, dest_tmp, options):
    """Build the sysext image of the overlay ``root`` (its ``entries``) into ``dest_tmp``; see the module doc.

    Returns name, filesystem, architecture, extension_release, tmpfiles, mapping (overlay path -> image
    path), dropped, size, sha256 and the command that packed it.
    """
    opts = check_options(options)
    find_tool(opts["filesystem"])
    layout = plan(entries, opts)
    nodes = layout["nodes"]
    digest = hashlib.sha256(layout["extension_release"].encode("ascii"))
    for path in sorted(nodes):
        digest.update(("%s %s %s\n" % (path, nodes[path]["sha256"] or nodes[path]["target"], nodes[path]["mode"]))
                      .encode("utf-8"))
    fs_uuid = str(uuid.uuid5(_UUID_NS, opts["name"] + ":" + digest.hexdigest()))
    workdir = tempfile.mkdtemp(prefix=".fleetsplit-sysext-", dir=os.path.dirname(os.path.abspath(dest_tmp)))
    try:
        os.chmod(workdir, 0o700)
        tree = os.path.join(workdir, "tree")
        os.mkdir(tree, 0o700)
        materialize(nodes, tree)
        os.chmod(tree, 0o755)
        os.utime(tree, ns=(opts["epoch"] * 1000000000,) * 2)
        # Built inside the 0700 work dir and made 0600 before it leaves it: the image may carry private files
        # (factory copies of a 0600 k0s.yaml or env file); the caller sets the final mode.
        image = os.path.join(workdir, "image.raw")
        cmd = pack(tree, image, opts, fs_uuid, max(n["mtime"] for n in nodes.values()))
        os.chmod(image, 0o600)
        os.rename(image, dest_tmp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    size = os.stat(dest_tmp).st_size
    return dict(name=opts["name"], filesystem=opts["filesystem"], compression=opts["compression"],
                architecture=opts["architecture"], extension_release=layout["extension_release"],
                tmpfiles=layout["tmpfiles"], mapping=layout["mapping"], dropped=layout["dropped"],
                data_dir=layout["data_dir"], size=size, sha256=sha256_file(dest_tmp),
                command=[a.replace(tree, "<tree>").replace(image, "<image>") for a in cmd],
                uuid=fs_uuid if opts["filesystem"] == "erofs" else None)
