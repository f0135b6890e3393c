# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Taking a host back to the state before deploy_k0s (module k0s_reset, docs/reset.md): the read-only plan
(services, whether `k0s reset` runs, every path removed, what is kept) and its application, in the order
stop -> `k0s reset` -> units -> files. Every refusal is raised by the plan, before the first change.
Standard library only, no Ansible import, Python 3.6 syntax: it travels with every module run."""

import os
import shutil
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    TMP_MARK,
    HostFsError,
    check_dir_chain,
    fsync_dir,
    lstat_or_none,
)
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_images import RECORD as IMAGES_RECORD
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import path_problem, service_control
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_links import MIGRATE_SUFFIX
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_plan import service_manager
from ansible_collections.fleetsplit.k0s.plugins.module_utils.release_store import EXE, EXE_REL, check_layout

UNITS = ("k0scontroller", "k0sworker")
# What the release store owns (release_store.Store, release_build.Runner.lock): everything else in its root,
# encrypted backups for one, is kept, and the root goes only when it is empty then.
STORE_OWNED = ("releases", "current", "previous", "backup", "incoming", ".lock", "rolled-back.json")
ROLE_VARS = dict(store_dir="k0s_store_dir", bin_dir="k0s_bin_dir", libexec_dir="k0s_libexec_dir",
                 data_dir="k0s_data_dir", config_path="k0s_config_path", join_token_path="k0s_join_token_path",
                 kubelet_root_dir="k0s_kubelet_root_dir", root="root")
# Directories no reset removes as a whole (besides "/" and every top-level directory).
SYSTEM_DIRS = frozenset("/" + d for d in (
    "usr/bin", "usr/sbin", "usr/lib", "usr/lib32", "usr/lib64", "usr/libexec", "usr/local", "usr/share", "usr/src",
    "usr/include", "usr/local/bin", "usr/local/sbin", "usr/local/lib", "usr/local/libexec", "usr/local/share",
    "var/lib", "var/log", "var/cache", "var/tmp", "var/run", "var/spool", "var/opt", "var/mail", "var/backups",
    "etc/systemd", "etc/systemd/system", "etc/init.d", "etc/conf.d", "etc/runlevels", "etc/default", "etc/ssl",
    "etc/ssh", "etc/cni", "etc/kubernetes", "run/systemd", "run/openrc", "lib/systemd", "usr/lib/systemd",
    "usr/lib/modules", "lib/modules", "home", "root", "opt"))
EMPTY_DIRS = ("empty dir", "data-dir bin")   # removed only when empty
RUNNING = ("active", "activating", "reloading", "deactivating")


class ResetError(HostFsError):
    """A value or a host state the reset refuses; the message names the variable or path and what to do."""


def _inside(path, top):
    """``path`` is ``top`` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def dangerous_dir(path):
    """Why removing the directory ``path`` as a whole is refused, or None."""
    if path == "/" or path.count("/") < 2:
        return "it is %s" % ("the root directory" if path == "/" else "a top-level directory")
    if path in SYSTEM_DIRS:
        return "it is a system directory"
    return None


def check_params(p):
    """Path values: absolute and normal (k0s_settings' rule), no system directory removed as a whole, no two
    removed trees containing each other (release_store.check_layout plus the config dir and kubelet root)."""
    for key in ("store_dir", "bin_dir", "libexec_dir", "data_dir", "config_path", "join_token_path",
                "kubelet_root_dir", "root"):
        if p.get(key) is not None:
            problem = path_problem(ROLE_VARS[key], p[key], plain=False)
            if problem:
                raise ResetError(problem)
    trees = [("store_dir", p["store_dir"]), ("libexec_dir", p["libexec_dir"]), ("data_dir", p["data_dir"])]
    if not p.get("keep_config"):
        trees.append(("config_path", os.path.dirname(p["config_path"])))
    if p.get("kubelet_root_dir"):
        trees.append(("kubelet_root_dir", p["kubelet_root_dir"]))
    for key, d in trees:
        why = dangerous_dir(d)
        if why:
            what = "%s=%s" % (ROLE_VARS[key], p[key]) + (" (its directory %s)" % d if key == "config_path" else "")
            raise ResetError("refusing to reset with %s: %s, and reset removes it as a whole; set %s to the "
                             "directory deploy_k0s used%s" % (what, why, ROLE_VARS[key],
                                                              " or k0s_reset_keep_config=true"
                                                              if key == "config_path" else ""))
    check_layout(dict(p, link_data_dir=True))
    for i, (ka, a) in enumerate(trees):
        for kb, b in trees[i + 1:]:
            if _inside(a, b) or _inside(b, a):
                raise ResetError("%s=%s and %s=%s overlap (%s and %s contain each other), so removing one would "
                                 "remove the other; choose paths that do not contain each other"
                                 % (ROLE_VARS[ka], p[ka], ROLE_VARS[kb], p[kb], a, b))
    exe = os.path.join(p["bin_dir"], EXE)
    for key, d in trees:
        if _inside(exe, d):
            raise ResetError("k0s_bin_dir=%s lies inside %s=%s; choose a k0s_bin_dir outside it"
                             % (p["bin_dir"], ROLE_VARS[key], p[key]))
    for key in ("config_path", "join_token_path"):
        st = lstat_or_none(p[key])
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise ResetError("%s=%s is a directory; it must name a file" % (ROLE_VARS[key], p[key]))


def _unescape(field):
    """A mount point as /proc/self/mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo="/proc/self/mountinfo"):
    try:
        with open(mountinfo) as f:
            return [_unescape(line.split()[4]) for line in f if len(line.split()) > 4]
    except OSError:
        return []


def mounts_in(path, mounts):
    """Mount points at or below ``path``."""
    return sorted(m for m in mounts if _inside(m, path))


def find_k0s(store_dir):
    """The current release's k0s (<store>/current/bin/k0s) when it is there and executable, else None."""
    exe = os.path.join(store_dir, "current", EXE_REL)
    try:
        st = os.stat(exe)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not os.access(exe, os.X_OK):
        return None
    return exe


class Reset(object):
    """One run: ``params`` (the module's, checked by check_params), ``run(cmd, env)`` -> (rc, out, err) runs a host
    command, ``check_mode`` changes nothing. plan() is read-only and raises every refusal; apply() follows it."""

    def __init__(self, params, run, check_mode=False, mountinfo="/proc/self/mountinfo"):
        self.p = p = dict(params)
        self.run = run
        self.check = check_mode
        self.root = p.get("root") or "/"
        self.live = self.root == "/"
        self.mountinfo = mountinfo
        self.changes = []
        self.result = dict(changed=False, changes=self.changes, stopped=[], disabled=[], removed=[], kept={},
                           k0s_reset=dict(executable=None, command=None, ran=False, rc=None, output=""),
                           services=[])
        self.steps = []   # (what, path) in removal order, filled by plan()

    # ----- paths
    def sys_path(self, rel):
        return os.path.join(self.root, rel.lstrip("/"))

    def keep(self, path, why):
        self.result["kept"][path] = why

    # ----- services
    def managers(self):
        """The running service manager (release_plan's detection, as the install query reports it), if k0s supports it."""
        m = service_manager() if self.live else None
        return [m] if m in ("systemd", "openrc") else []

    def service_files(self, unit):
        """Every file the service role, k0s_service or `k0s install` writes for ``unit`` (systemd and OpenRC)."""
        files = [self.sys_path("/etc/systemd/system/%s.service" % unit),
                 self.sys_path("/etc/systemd/system/multi-user.target.wants/%s.service" % unit),
                 self.sys_path("/etc/init.d/%s" % unit), self.sys_path("/etc/conf.d/%s" % unit)]
        runlevels = self.sys_path("/etc/runlevels")
        if os.path.isdir(runlevels):
            files += [os.path.join(runlevels, lv, unit) for lv in sorted(os.listdir(runlevels))]
        env = self.sys_path("/etc/k0s/%s.env" % unit)
        if self.p.get("keep_config"):
            if os.path.lexists(env):
                self.keep(env, "k0s_reset_keep_config: the service environment stays with the configuration")
        else:
            files.append(env)
        return [f for f in files if os.path.lexists(f)]

    def service_state(self, unit, manager):
        """(running, enabled) of ``unit`` as its manager reports it (read-only)."""
        if manager == "systemd":
            rc, out, err = self.run(["systemctl", "is-active", unit + ".service"])
            running = out.strip() in RUNNING
            rc, out, err = self.run(["systemctl", "is-enabled", unit + ".service"])
            enabled = rc == 0 and out.strip() not in ("", "disabled", "masked", "static")
            return running, enabled
        if not os.path.exists("/etc/init.d/%s" % unit):
            return False, False
        rc, out, err = self.run(["rc-service", unit, "status"])
        levels = [lv for lv in (os.listdir("/etc/runlevels") if os.path.isdir("/etc/runlevels") else [])
                  if os.path.lexists(os.path.join("/etc/runlevels", lv, unit))]
        return rc == 0 or "crashed" in out, levels   # a crashed service may still have its supervisor

    def plan_services(self):
        managers = self.managers()
        for unit in UNITS:
            files = self.service_files(unit)
            for m in managers:
                running, enabled = self.service_state(unit, m)
                if running or enabled:
                    levels = enabled if isinstance(enabled, list) else None
                    self.result["services"].append(dict(name=unit, manager=m, running=running,
                                                        enabled=bool(enabled), levels=levels))
            for f in files:
                self.steps.append(("service file", f))

    # ----- k0s reset
    def reset_command(self, exe):
        p = self.p
        cmd = [exe, "reset", "--data-dir=%s" % p["data_dir"]]
        if os.path.isfile(p["config_path"]):
            cmd.append("--config=%s" % p["config_path"])
        if p.get("kubelet_root_dir"):
            cmd.append("--kubelet-root-dir=%s" % p["kubelet_root_dir"])
        return cmd

    def plan_k0s(self, mounts):
        p, r = self.p, self.result["k0s_reset"]
        exe = find_k0s(p["store_dir"])
        if exe is not None:
            # What k0s reset removes itself (cmd/reset/reset.go -> pkg/cleanup: services.go, directories.go, cni_linux.go).
            r.update(executable=exe, command=self.reset_command(exe),
                     removes=["the k0s service it finds (k0scontroller, k0sworker)",
                              "kubelet root dir %s" % (p.get("kubelet_root_dir") or os.path.join(p["data_dir"], "kubelet")),
                              "data dir %s (mounts below it unmounted first)" % p["data_dir"], "run dir /run/k0s",
                              "CNI leftovers in /etc/cni/net.d (calico, kube-router)"])
            return
        r["why_not"] = ("no executable k0s at %s (nothing installed, or a half-installed host): the data dir is "
                        "removed directly" % os.path.join(p["store_dir"], "current", EXE_REL))
        for key in ("data_dir", "kubelet_root_dir"):
            d = p.get(key)
            if not d or lstat_or_none(d) is None:
                continue
            below = mounts_in(d, mounts)
            if below:
                raise ResetError("%s is mounted (%s) and there is no k0s to unmount it (%s); unmount it, or "
                                 "restore the release and run again" % (", ".join(below), ROLE_VARS[key],
                                                                        r["why_not"]))
            self.steps.append(("tree", d))

    # ----- files
    def plan_files(self, mounts):
        p = self.p
        exe_link = os.path.join(p["bin_dir"], EXE)
        st = lstat_or_none(exe_link)
        if st is not None:
            if stat.S_ISLNK(st.st_mode) and _inside(os.path.normpath(os.path.join(
                    p["bin_dir"], os.readlink(exe_link))), p["store_dir"]):
                self.steps.append(("file", exe_link))
            else:
                self.keep(exe_link, "not a link into %s (not installed by fleetsplit)" % p["store_dir"])
        # Temporary names of runs that were killed (release_build.Runner.cleanup) and the libexec migration.
        lib_parent, lib_base = os.path.split(p["libexec_dir"])
        for d, prefixes in ((p["bin_dir"], (".%s%s" % (EXE, TMP_MARK),)),
                            (lib_parent, (".%s%s" % (lib_base, TMP_MARK), ".%s%s" % (lib_base, MIGRATE_SUFFIX)))):
            if os.path.isdir(d):
                for e in sorted(os.listdir(d)):
                    if e.startswith(prefixes):
                        self.steps.append(("tree", os.path.join(d, e)))
        self.plan_tree(p["libexec_dir"], "libexec_dir", mounts)
        data_bin = os.path.join(p["data_dir"], "bin")
        if self.result["k0s_reset"]["executable"] is not None:
            # What k0s reset leaves in the data dir (it empties a data dir that is a mount point itself).
            self.steps.append(("data-dir links", data_bin))
            self.steps.append(("data-dir record", os.path.join(p["data_dir"], IMAGES_RECORD)))
            self.steps.append(("data-dir bin", data_bin))
        self.plan_store(mounts)
        self.steps.append(("file", p["join_token_path"]))
        if p.get("keep_config"):
            if os.path.lexists(p["config_path"]):
                self.keep(p["config_path"], "k0s_reset_keep_config")
        else:
            self.steps.append(("file", p["config_path"]))
            self.plan_config_dir(os.path.dirname(p["config_path"]))

    def plan_config_dir(self, conf_dir):
        """The configuration directory (/etc/k0s) goes when what fleetsplit wrote there is gone: the config, the
        env files and the token (steps already), temporary names of killed writes. Anything else (containerd.d
        drop-ins, files of yours) is kept with the directory, as k0s_store_dir's foreign entries are."""
        if not os.path.isdir(conf_dir) or os.path.islink(conf_dir):
            return
        ours = set(step[1] for step in self.steps)
        for e in sorted(os.listdir(conf_dir)):
            path = os.path.join(conf_dir, e)
            if TMP_MARK in e:
                self.steps.append(("file", path))
            elif path not in ours:
                self.keep(path, "not written by fleetsplit (a drop-in or a file of yours): never touched")
        self.steps.append(("empty dir", conf_dir))

    def plan_tree(self, path, key, mounts):
        if lstat_or_none(path) is None:
            return
        below = mounts_in(path, mounts)
        if below:
            raise ResetError("refusing to remove %s (%s): %s is mounted there; unmount it and run again"
                             % (path, ROLE_VARS[key], ", ".join(below)))
        self.steps.append(("tree", path))

    def plan_store(self, mounts):
        root = self.p["store_dir"]
        st = lstat_or_none(root)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISLNK(st.st_mode):   # never reset through a link: the caller names the real store
                raise ResetError("k0s_store_dir=%s is a symlink to %s; set k0s_store_dir to that directory"
                                 % (root, os.path.realpath(root)))
            raise ResetError("k0s_store_dir=%s is not a directory; move it away or set k0s_store_dir to the store "
                             "deploy_k0s used" % root)
        below = mounts_in(root, mounts)
        if below:
            raise ResetError("refusing to remove the release store %s (k0s_store_dir): %s is mounted there; "
                             "unmount it and run again" % (root, ", ".join(below)))
        for e in sorted(os.listdir(root)):
            path = os.path.join(root, e)
            if e in STORE_OWNED or TMP_MARK in e or ".tmp-" in e:
                self.steps.append(("tree", path))
            else:
                self.keep(path, "not a release store entry (a backup or a file of yours): never touched")
        self.steps.append(("empty dir", root))

    def plan(self):
        check_params(self.p)
        for d in (self.p["store_dir"], self.p["bin_dir"], self.p["libexec_dir"], self.p["data_dir"],
                  os.path.dirname(self.p["config_path"]), os.path.dirname(self.p["join_token_path"])):
            check_dir_chain(os.path.dirname(d) if d != "/" else d)
        mounts = mount_points(self.mountinfo)
        self.plan_services()
        self.plan_k0s(mounts)
        self.plan_files(mounts)
        return self.steps

    # ----- what exists, what would go
    def pending(self):
        """The steps that would remove something now, as (what, path)."""
        out = []
        for what, path in self.steps:
            if what == "data-dir links":
                out += [(what, lk) for lk in self.data_links(path)]
            elif what in EMPTY_DIRS:
                if os.path.isdir(path) and not os.path.islink(path) and not self.empty_dir_stays(path):
                    out.append((what, path))
            elif os.path.lexists(path):
                out.append((what, path))
        return out

    def data_links(self, data_bin):
        """<data_dir>/bin/<name> links to <libexec_dir>/<name> (release_links); anything else there is k0s's."""
        if not os.path.isdir(data_bin) or os.path.islink(data_bin):
            return []
        out = []
        for e in sorted(os.listdir(data_bin)):
            path = os.path.join(data_bin, e)
            if os.path.islink(path) and os.readlink(path) == os.path.join(self.p["libexec_dir"], e):
                out.append(path)
        return out

    def empty_dir_stays(self, path):
        """A directory removed only when empty: it stays while it holds entries nobody removes."""
        gone = set(p for w, p in self.steps if w not in EMPTY_DIRS)
        gone.update(lk for w, p in self.steps if w == "data-dir links" for lk in self.data_links(p))
        return any(os.path.join(path, e) not in gone for e in os.listdir(path))

    # ----- apply
    def remove(self, what, path):
        st = lstat_or_none(path)
        if st is None:
            return
        if what in EMPTY_DIRS:
            if self.empty_dir_stays(path) if self.check else os.listdir(path):
                self.keep(path, "not empty")
                return
            if not self.check:
                os.rmdir(path)
        elif not self.check:
            # rmtree never follows a symlink below the directory (only the link goes); a link itself is unlinked.
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            fsync_dir(os.path.dirname(path))
        self.result["removed"].append(path)
        self.changes.append("removed %s %s" % (what, path))

    def stop_services(self):
        for s in self.result["services"]:
            unit, m = s["name"], s["name"] + ".service"
            if s["running"]:
                self.command(service_control(s["manager"], unit, "stop"))
                self.result["stopped"].append(unit)
                self.changes.append("stopped %s (%s)" % (unit, s["manager"]))
            if s["enabled"]:
                if s["manager"] == "systemd":
                    self.command(["systemctl", "disable", m])
                else:
                    for lv in s["levels"]:
                        self.command(["rc-update", "del", unit, lv])
                self.result["disabled"].append(unit)
                self.changes.append("disabled %s (%s)" % (unit, s["manager"]))

    def command(self, cmd, env=None):
        if self.check:
            return 0, "", ""
        rc, out, err = self.run(cmd, env)
        if rc != 0:
            raise ResetError("%s failed (rc=%d): %s" % (" ".join(cmd), rc, (err or out).strip()))
        return rc, out, err

    def run_k0s_reset(self):
        r = self.result["k0s_reset"]
        if r["executable"] is None:
            return
        self.changes.append("ran %s" % " ".join(r["command"]))
        if self.check:
            return
        env = dict(PATH="%s:%s" % (self.p["libexec_dir"], self.p.get("system_path") or os.defpath))
        rc, out, err = self.run(r["command"], env)
        r.update(ran=True, rc=rc, output=(out + err).strip())
        if rc != 0:
            raise ResetError("%s failed (rc=%d), nothing else was removed (run the reset again once the cause is "
                             "fixed; the binaries are still there): %s" % (" ".join(r["command"]), rc, r["output"]))

    def apply(self):
        """The plan, then: stop and disable, `k0s reset`, units, files. Raises ResetError (result filled so far)."""
        self.plan()
        pend = self.pending()
        self.result["changed"] = bool(self.result["services"] or self.result["k0s_reset"]["executable"] or pend)
        self.stop_services()
        self.run_k0s_reset()
        # systemd forgets a unit only on a reload, whoever removed its file (k0s reset uninstalls it too).
        reload = any(w == "service file" and p.endswith(".service") for w, p in self.steps) or any(
            s["manager"] == "systemd" for s in self.result["services"])
        for what, path in self.steps:
            if what.startswith("data-dir") and self.check:
                continue   # k0s reset removes the data dir: the plan names only what is left after it
            if what == "data-dir links":
                for lk in self.data_links(path):
                    self.remove("data-dir link", lk)
                continue
            self.remove(what, path)
        if reload and "systemd" in self.managers():
            self.command(["systemctl", "daemon-reload"])
            if not self.check:   # a unit that failed stays listed until this (rc 1 when none is known: fine)
                self.run(["systemctl", "reset-failed"] + ["%s.service" % u for u in UNITS], None)
            self.changes.append("reloaded systemd")
        return self.result

    def query(self):
        """The plan without any change (check mode of apply without the changed flag)."""
        self.check = True
        return self.apply()
