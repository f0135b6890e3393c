# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""A k0s systemd-sysext image on a host (module k0s_sysext): the image store, the link systemd-sysext
merges, the checks before the first change, activation and rollback. Standard library only, no Ansible
import, Python 3.6 syntax: it runs on managed hosts.

Layout (docs/sysext-hosts.md):

    <store_dir>/<name>-<sha256[:16]>.raw    images by content, root-owned, in a 0700 directory
    <store_dir>/<name>.previous             symlink -> the image to roll back to (a file name in the store)
    <store_dir>/<name>.merged               symlink -> the image the last successful refresh merged
    <extensions_dir>/<name>.raw             symlink -> <store_dir>/<image>; systemd-sysext names the
                                            extension after this file, not after the link's target

Only the current and the previous image are kept; older images of the same name that this store wrote
(its own naming pattern) are removed after a switch.
"""

import hashlib
import json
import os
import re
import stat
import subprocess

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    HostFsError, atomic_symlink, check_dir_chain, fsync_dir, lstat_or_none, make_dirs, set_owner_mode,
    tmp_name, unlink_quietly)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.fsio import sha256_file

# Where systemd-sysext looks for images, highest priority first (systemd-sysext(8)); one of the same
# name in a directory before ours shadows it.
SEARCH_DIRS = ("/etc/extensions", "/run/extensions", "/var/lib/extensions")
# uname -m -> systemd's ARCHITECTURE= spelling (src/basic/architecture.c).
SYSTEMD_ARCH = {"x86_64": "x86-64", "i686": "x86", "i586": "x86", "i386": "x86", "aarch64": "arm64",
                "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64-le", "ppc64": "ppc64", "s390x": "s390x",
                "riscv64": "riscv64", "loongarch64": "loongarch64", "mips64": "mips64"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
UNIT_RE = re.compile(r"^k0s(controller|worker)$")
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1 << 20


class SysextError(Exception):
    """A refusal or failure; the message names the path or variable and what to do."""


def image_file(name, sha256):
    return "%s-%s.raw" % (name, sha256[:16])


def _own_image_re(name):
    return re.compile(r"^%s-[0-9a-f]{16}\.raw$" % re.escape(name))


def _readlink(path):
    st = lstat_or_none(path)
    if st is None or not stat.S_ISLNK(st.st_mode):
        return None
    return os.readlink(path)


class Host(object):
    """Paths of one host (tests point them into a temporary directory) and the command runner."""

    def __init__(self, store_dir="/var/lib/fleetsplit-k0s/sysext", extensions_dir="/var/lib/extensions",
                 release_store="/var/lib/fleetsplit-k0s", bin_dir="/usr/bin", unit_dir="/etc/systemd/system",
                 search_dirs=SEARCH_DIRS, proc="/proc", tool_path=TOOL_PATH, run=None):
        self.store_dir = store_dir
        self.extensions_dir = extensions_dir
        self.release_store = release_store
        self.bin_dir = bin_dir
        self.unit_dir = unit_dir
        self.search_dirs = [d for d in search_dirs if d != extensions_dir]
        self.proc = proc
        self.tool_path = tool_path
        self.run = run or run_command

    def link_path(self, name):
        return os.path.join(self.extensions_dir, name + ".raw")

    def mark_path(self, name, kind):
        return os.path.join(self.store_dir, "%s.%s" % (name, kind))


def run_command(argv):
    """(rc, stdout, stderr) of a command, with a fixed PATH and the C locale (parsed output)."""
    env = dict(os.environ, PATH=TOOL_PATH, LC_ALL="C", SYSTEMD_COLORS="0", SYSTEMD_PAGER="")
    try:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as e:
        return 127, "", "%s: %s" % (argv[0], e.strerror)
    out, err = p.communicate()
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def check_image_args(image):
    """The controller's facts about the image: name, sha256, size, architecture."""
    problems = []
    name = image.get("name") or ""
    if not NAME_RE.match(name):
        problems.append("image name %r is not a plain extension name (letters, digits, '_.+-'; the image file "
                        "<name>.raw and its extension-release.<name> share it)" % name)
    if not SHA_RE.match(image.get("sha256") or ""):
        problems.append("image sha256 %r is not 64 lowercase hex digits" % image.get("sha256"))
    if not isinstance(image.get("size"), int) or image["size"] <= 0:
        problems.append("image size %r is not a positive integer" % image.get("size"))
    return problems


def host_architecture():
    machine = os.uname()[4]
    return SYSTEMD_ARCH.get(machine, machine)


def _store_image(host, fname):
    """The store file a link target names, or None when it points elsewhere."""
    if not fname:
        return None
    full = fname if os.path.isabs(fname) else os.path.join(host.store_dir, fname)
    if os.path.dirname(os.path.normpath(full)) != os.path.normpath(host.store_dir):
        return None
    return os.path.basename(full)


def _release_store_use(host):
    """Why the host looks installed by the release store (k0s_release), or an empty list."""
    found = []
    store = os.path.normpath(host.release_store)
    current = os.path.join(store, "current")
    if lstat_or_none(current) is not None:
        found.append("%s exists" % current)
    k0s = os.path.join(host.bin_dir, "k0s")
    target = _readlink(k0s)
    if target is not None and os.path.normpath(os.path.join(host.bin_dir, target)).startswith(store + "/"):
        found.append("%s -> %s" % (k0s, target))
    for unit in ("k0scontroller", "k0sworker"):
        path = os.path.join(host.unit_dir, unit + ".service")
        if lstat_or_none(path) is not None:
            found.append("%s exists (it would hide the image's unit)" % path)
    releases = os.path.join(store, "releases") + "/"
    try:
        pids = [p for p in os.listdir(host.proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            exe = os.readlink(os.path.join(host.proc, pid, "exe"))
        except OSError:
            continue
        if exe.startswith(releases):
            found.append("process %s runs %s" % (pid, exe))
            break
    return found


def sysext_status(host):
    """{hierarchy: [extension names]} as systemd-sysext reports them (JSON where supported, else the table)."""
    rc, out, err = host.run(["systemd-sysext", "status", "--json=short"])
    if rc == 0:
        try:
            return parse_status_json(out)
        except (ValueError, AttributeError, TypeError):
            pass
    rc, out, err = host.run(["systemd-sysext", "status", "--no-legend"])
    if rc != 0:
        raise SysextError("systemd-sysext status failed (rc %d): %s" % (rc, (err or out).strip()))
    return parse_status_table(out)


def parse_status_json(text):
    """`status --json=short`: a list of {hierarchy, extensions, since}; systemd 252 writes "none" (a string)
    for a hierarchy without extensions and a list of names otherwise."""
    result = {}
    for d in json.loads(text):
        ext = d.get("extensions")
        names = ext if isinstance(ext, list) else ([] if ext in (None, "none") else [ext])
        result[d["hierarchy"]] = [str(e) for e in names if e != "none"]
    return result


def parse_status_table(text):
    """The text table: `HIERARCHY EXTENSIONS SINCE`; more extensions of a hierarchy continue on the next lines."""
    result = {}
    cur = None
    for line in text.splitlines():
        cols = line.split()
        if not cols or cols[0] == "HIERARCHY":
            continue
        if cols[0].startswith("/"):
            cur = cols[0]
            result[cur] = []
            cols = cols[1:2]
        else:
            cols = cols[:1]
        if cur is not None and cols and cols[0] != "none":
            result[cur].append(cols[0])
    return result


def unit_state(host, unit):
    rc, out, err = host.run(["systemctl", "show", "-p", "ActiveState,SubState,MainPID,FragmentPath",
                             unit + ".service"])
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {"active": props.get("ActiveState", "unknown"), "sub": props.get("SubState", "unknown"),
            "main_pid": int(props.get("MainPID", "0") or 0), "unit_path": props.get("FragmentPath", "")}


def query(host, image, unit, merged_check=True):
    """Read only: every refusal, and what `present` would do. Never raises for a refusal (listed in
    ``problems``), so check mode and the role's query report all of them at once."""
    name = image.get("name") or ""
    problems = check_image_args(image)
    if unit is not None and not UNIT_RE.match(unit):
        problems.append("unit %r is neither k0scontroller nor k0sworker" % unit)
    tool = None
    for d in host.tool_path.split(":"):
        if os.access(os.path.join(d, "systemd-sysext"), os.X_OK):
            tool = os.path.join(d, "systemd-sysext")
            break
    if tool is None:
        problems.append("systemd-sysext is not installed on this host (systemd >= 248 ships it): deploy_sysext needs "
                        "it; use fleetsplit.k0s.deploy_k0s (the release store) on this host instead")
    want_arch = image.get("architecture") or ""
    have_arch = host_architecture()
    if want_arch not in ("", "_any") and want_arch != have_arch:
        problems.append("the image %s is built for ARCHITECTURE=%s but this host is %s: build the image from a "
                        "k0s for %s" % (name, want_arch, have_arch, have_arch))
    for d in (host.store_dir, host.extensions_dir):
        try:
            check_dir_chain(d)
        except HostFsError as e:
            problems.append(str(e))
    mixed = _release_store_use(host)
    if mixed:
        problems.append("k0s is installed here by the release store (%s); a sysext and the release store must not "
                        "both provide k0s: remove it with fleetsplit.k0s.reset_k0s first" % "; ".join(mixed))
    current = previous = None
    if name and not [p for p in problems if "image name" in p]:
        link = host.link_path(name)
        st = lstat_or_none(link)
        if st is not None:
            target = _readlink(link)
            current = _store_image(host, target)
            if current is None or not _own_image_re(name).match(current):
                problems.append("%s is not a link into %s (%s): a file fleetsplit did not place; remove or rename "
                                "it yourself, it is never overwritten"
                                % (link, host.store_dir, "-> " + target if target else "a regular file or directory"))
                current = None
        for d in host.search_dirs:
            for cand in (os.path.join(d, name + ".raw"), os.path.join(d, name)):
                if lstat_or_none(cand) is not None:
                    problems.append("%s shadows %s (systemd-sysext prefers %s): remove it" % (cand, link, d))
        prev = _store_image(host, _readlink(host.mark_path(name, "previous")))
        if prev and os.path.isfile(os.path.join(host.store_dir, prev)):
            previous = prev
    want = image_file(name, image.get("sha256") or "") if not problems else None
    have_image = bool(want) and _store_has(host, want, image)
    merged_mark = _store_image(host, _readlink(host.mark_path(name, "merged"))) if name else None
    result = {"problems": problems, "current": current, "previous": previous, "wanted": want,
              "transfer": bool(want) and not have_image, "architecture": have_arch, "merged": False,
              "merged_image": merged_mark}
    if tool is not None and merged_check and name and not check_image_args(image):
        try:
            result["merged"] = name in sysext_status(host).get("/usr", [])
        except SysextError as e:
            problems.append(str(e))
    result["switch"] = bool(want) and current != want
    result["refresh"] = bool(want) and (result["switch"] or not result["merged"] or merged_mark != want)
    return result


def _store_has(host, fname, image):
    path = os.path.join(host.store_dir, fname)
    st = lstat_or_none(path)
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size == image["size"]


def put_image(host, image, src):
    """Copy the uploaded image into the store (temp name beside it, then rename) after checking size and
    sha256 of the bytes actually written; the upload itself is left for the caller to remove."""
    want = image_file(image["name"], image["sha256"])
    st = lstat_or_none(src) if src else None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise SysextError("the uploaded image %s is missing on the host (bundle); the controller sends it when the "
                          "store lacks %s" % (src, want))
    if st.st_size != image["size"]:
        raise SysextError("the uploaded image %s has %d bytes, the controller said %d: transfer broken, run again"
                          % (src, st.st_size, image["size"]))
    make_dirs(host.store_dir, 0o700)
    set_owner_mode(host.store_dir, 0o700)
    check_dir_chain(host.store_dir)
    dest = os.path.join(host.store_dir, want)
    tmp = tmp_name(host.store_dir, want)
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != image["sha256"]:
            raise SysextError("the uploaded image %s has sha256 %s, the controller said %s: transfer broken or the "
                              "image changed during the run; run again" % (src, h.hexdigest(), image["sha256"]))
        set_owner_mode(tmp, 0o644)
        os.rename(tmp, dest)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(host.store_dir)
    return dest


def verify_stored(host, image):
    """The stored image still has the wanted sha256 (before it is merged again)."""
    path = os.path.join(host.store_dir, image_file(image["name"], image["sha256"]))
    got = sha256_file(path)
    if got != image["sha256"]:
        raise SysextError("%s has sha256 %s, not %s: the store was modified; remove the file and run again"
                          % (path, got, image["sha256"]))


def switch_link(host, name, fname, previous):
    """Point <extensions>/<name>.raw at the store's ``fname`` (one rename); remember ``previous``."""
    make_dirs(host.extensions_dir, 0o755)
    check_dir_chain(host.extensions_dir)
    if previous and previous != fname:
        atomic_symlink(previous, host.mark_path(name, "previous"))
    atomic_symlink(os.path.join(host.store_dir, fname), host.link_path(name))


def prune(host, name, keep):
    """Remove the store's own older images of ``name`` (current and previous stay)."""
    removed = []
    pattern = _own_image_re(name)
    for f in sorted(os.listdir(host.store_dir)):
        if pattern.match(f) and f not in keep:
            os.unlink(os.path.join(host.store_dir, f))
            removed.append(f)
    return removed


def activate(host, name, unit, restart, refresh=True):
    """Merge what the link names now, make systemd and the writable paths follow, (re)start the unit.
    systemd 252 has no EXTENSION_RELOAD_MANAGER, so the daemon-reload is ours."""
    steps = []
    if unit and not refresh:
        return service(host, unit, restart)
    for argv in (["systemd-sysext", "refresh"], ["systemctl", "daemon-reload"]):
        rc, out, err = host.run(argv)
        steps.append(" ".join(argv))
        if rc != 0:
            hint = ""
            if "resource busy" in err + out:
                hint = (" (no free loop device it can open: inside a container /dev may lack the node of a loop "
                        "device the kernel added later; see docs/sysext-hosts.md)")
            raise SysextError("%s failed (rc %d): %s%s" % (" ".join(argv), rc, (err or out).strip(), hint))
    if name not in sysext_status(host).get("/usr", []):
        raise SysextError("systemd-sysext refresh did not merge %s on /usr (systemd-sysext status does not list it). "
                          "In a container the root mount must be shared (mount --make-rshared /) and loop devices "
                          "usable (privileged); see docs/sysext-hosts.md" % name)
    atomic_symlink(os.readlink(host.link_path(name)), host.mark_path(name, "merged"))
    conf = "/usr/lib/tmpfiles.d/fleetsplit-k0s.conf"
    if os.path.exists(conf):
        argv = ["systemd-tmpfiles", "--create", conf]
        rc, out, err = host.run(argv)
        steps.append(" ".join(argv))
        if rc != 0:
            raise SysextError("%s failed (rc %d): %s" % (" ".join(argv), rc, (err or out).strip()))
    if unit:
        steps.extend(service(host, unit, restart))
    return steps


def service(host, unit, restart):
    state = unit_state(host, unit)
    # Debian's systemd names /lib/systemd/system (a link to usr/lib on merged-/usr systems).
    if not os.path.realpath(state["unit_path"] or "/nonexistent").startswith("/usr/lib/systemd/system/"):
        raise SysextError("%s.service comes from %r, not from the image's /usr/lib/systemd/system: was the image built "
                          "for this host's k0s_role?" % (unit, state["unit_path"]))
    if state["active"] == "active" and not restart:
        return []
    verb = "restart" if restart or state["active"] == "active" else "start"
    argv = ["systemctl", verb, unit + ".service"]
    rc, out, err = host.run(argv)
    if rc != 0:
        raise SysextError("%s failed (rc %d): %s; see journalctl -u %s" % (" ".join(argv), rc, (err or out).strip(), unit))
    return [" ".join(argv)]


def present(host, image, unit, bundle, check_mode):
    """Make the host run ``image``: store it (when missing), switch the link, refresh, restart."""
    plan = query(host, image, unit)
    if plan["problems"]:
        raise SysextError("; ".join(plan["problems"]))
    name, want = image["name"], plan["wanted"]
    svc = unit_state(host, unit) if unit else None
    start = bool(unit) and svc["active"] != "active"
    changed = plan["transfer"] or plan["switch"] or plan["refresh"] or start
    result = dict(plan, changed=changed, steps=[], removed=[], before=plan["current"], image_changed=plan["switch"])
    if check_mode or not changed:
        result["service"] = svc
        return result
    if plan["transfer"]:
        put_image(host, image, bundle)
        result["steps"].append("stored %s" % want)
    elif plan["switch"]:
        verify_stored(host, image)
    if plan["switch"]:
        switch_link(host, name, want, plan["current"])
        result["previous"] = plan["current"] or plan["previous"]
        result["current"] = want
    result["steps"].extend(activate(host, name, unit, restart=plan["switch"] and svc["active"] == "active",
                                    refresh=plan["refresh"]))
    keep = set(f for f in (want, result["previous"]) if f)
    result["removed"] = prune(host, name, keep)
    result["merged"] = True
    result["service"] = unit_state(host, unit) if unit else None
    return result


def rollback(host, image_name, unit, check_mode):
    """Back to the previous image: the link and the previous mark swap, refresh, restart."""
    image = {"name": image_name, "sha256": "0" * 64, "size": 1}   # placeholders: only the name matters here
    plan = query(host, image, unit)
    if plan["problems"]:
        raise SysextError("; ".join(plan["problems"]))
    if not plan["previous"]:
        raise SysextError("no previous image of %s in %s to roll back to" % (image_name, host.store_dir))
    result = dict(plan, changed=True, steps=[], removed=[], wanted=plan["previous"], before=plan["current"],
                  image_changed=True)
    result["current"], result["previous"] = plan["previous"], plan["current"]
    if check_mode:
        return result
    switch_link(host, image_name, plan["previous"], plan["current"])
    result["steps"] = activate(host, image_name, unit, restart=True)
    result["merged"] = True
    result["service"] = unit_state(host, unit) if unit else None
    return result
