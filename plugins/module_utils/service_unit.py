# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The logic of the k0s_service module (``run(module)``, shared by its AnsiballZ and compact transports): the
unit or init script as `k0s install` writes it, its environment or conf.d file, enablement, and the running state
(restarted when the running k0s is not the current binary). Standard library only, Python 3.6 syntax.
"""

import hashlib
import os
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_settings
from ansible_collections.fleetsplit.k0s.plugins.module_utils.process_exe import process_executable
from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_hostfs import (
    HostFsError,
    atomic_write,
    check_dir_chain,
    lstat_or_none,
    make_dirs,
    os_error_message,
)


def secret_view(path, data):
    """What a diff shows of a file that may hold secrets."""
    if data is None:
        return ""
    return "# %s\n(secret content, sha256 %s)\n" % (path, hashlib.sha256(data).hexdigest())


class ServiceError(HostFsError):
    pass


def read_file(path):
    st = lstat_or_none(path)
    if st is None:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        raise ServiceError("refusing to replace %s: it is %s, not a regular file"
                           % (path, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a file"))
    with open(path, "rb") as f:
        return f.read(), st


class Service(object):

    def __init__(self, module):
        self.m = module
        self.p = module.params
        self.check = module.check_mode
        self.root = self.p["root"]
        self.live = os.path.normpath(self.root) == "/"
        self.changes = []
        self.result = dict(unit_changed=False, conf_changed=False, enabled_changed=False, action=None,
                           restart_reason=None, changes=self.changes)
        self.diff = dict(before="", after="")
        name, mgr = self.p["name"], self.p["manager"]
        if mgr == "systemd":
            self.unit_rel, self.unit_mode = "/etc/systemd/system/%s.service" % name, 0o644
            self.enable_link = ("/etc/systemd/system/multi-user.target.wants/%s.service" % name, self.unit_rel)
            self.conf_rel = None
            self.env_rel = "/etc/k0s/%s.env" % name
        else:
            self.unit_rel, self.unit_mode = "/etc/init.d/%s" % name, 0o755
            self.enable_link = ("/etc/runlevels/default/%s" % name, self.unit_rel)
            self.conf_rel = "/etc/conf.d/%s" % name

    def path(self, rel):
        return os.path.join(self.root, rel.lstrip("/"))

    def ensure_file(self, rel, content, mode, label, secret=False):
        path = self.path(rel)
        data = None if content is None else content.encode("utf-8")
        old, st = read_file(path)
        if secret:
            self.diff["before"] += secret_view(path, old)
            self.diff["after"] += secret_view(path, data)
        else:
            self.diff["before"] += "" if old is None else "# %s\n%s" % (path, old.decode("utf-8", "replace"))
            self.diff["after"] += "# %s\n%s" % (path, content)
        if data is None:   # remove a file we wrote before (its variables are gone)
            if old is None:
                return False
            check_dir_chain(os.path.dirname(path))
            if not self.check:
                os.unlink(path)
            self.changes.append("removed %s %s" % (label, path))
            return True
        same = old == data and st is not None and stat.S_IMODE(st.st_mode) == mode and (
            os.geteuid() != 0 or (st.st_uid, st.st_gid) == (0, 0))
        if same:
            return False
        check_dir_chain(os.path.dirname(path))
        if not self.check:
            if not os.path.isdir(os.path.dirname(path)):
                if self.live and rel == self.unit_rel and self.p["manager"] == "systemd":
                    raise ServiceError("%s does not exist: is systemd installed?" % os.path.dirname(path))
                make_dirs(os.path.dirname(path))
            atomic_write(path, data, mode)
        self.changes.append("%s %s %s" % ("wrote" if old is not None else "created", label, path))
        return True

    def run(self, *cmd, **kw):
        rc, out, err = self.m.run_command(list(cmd))
        if rc != 0 and not kw.get("ok_rc"):
            raise ServiceError("%s failed (rc=%d): %s" % (" ".join(cmd), rc, (err or out).strip()))
        return rc, out

    # ----- enablement
    def enable_in_root(self, want):
        link, target = self.enable_link
        path = self.path(link)
        st = lstat_or_none(path)
        have = st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(path) == target
        if want == have:
            return False
        if st is not None and not stat.S_ISLNK(st.st_mode):
            raise ServiceError("refusing to replace %s: it is not a symlink" % path)
        check_dir_chain(os.path.dirname(path))
        if not self.check:
            if st is not None:
                os.unlink(path)
            if want:
                make_dirs(os.path.dirname(path))
                os.symlink(target, path)
        self.changes.append("%s %s" % ("enabled (link %s)" % path if want else "disabled (removed %s)" % path,
                                       self.p["name"]))
        return True

    def enable_live(self, want):
        name = self.p["name"]
        if self.p["manager"] == "systemd":
            rc, out = self.run("systemctl", "is-enabled", name + ".service", ok_rc=True)
            have = rc == 0 and out.strip() in ("enabled", "enabled-runtime", "alias", "static", "indirect")
            cmd = ("systemctl", "enable" if want else "disable", name + ".service")
        else:
            have = os.path.lexists(os.path.join("/etc/runlevels/default", name))
            cmd = ("rc-update", "add" if want else "del", name, "default")
        if want == have:
            return False
        if not self.check:
            self.run(*cmd)
        self.changes.append("%s %s" % ("enabled" if want else "disabled", name))
        return True

    # ----- running state
    def is_running(self):
        name = self.p["name"]
        if self.p["manager"] == "systemd":
            rc, out = self.run("systemctl", "is-active", name + ".service", ok_rc=True)
            return out.strip() in ("active", "activating", "reloading")
        rc, out = self.run("rc-service", name, "status", ok_rc=True)
        return rc == 0

    def main_pid(self):
        name = self.p["name"]
        if self.p["manager"] == "systemd":
            rc, out = self.run("systemctl", "show", "--property=MainPID", "--value", name + ".service", ok_rc=True)
            pid = out.strip()
        else:   # supervise-daemon's child stores its pid before exec (src/supervise-daemon, rc_service_value_set)
            try:
                with open("/run/openrc/options/%s/child_pid" % name) as f:
                    pid = f.read().strip()
            except OSError:
                return None
        return int(pid) if pid.isdigit() and int(pid) > 0 else None

    def stale_process(self):
        """Why the running k0s is not the current ``binary`` (None when it is, or when that is unknown)."""
        pid = self.main_pid()
        if pid is None or not self.p["binary"]:
            return None
        exe = process_executable(pid)   # the emulated program under qemu-user, not the interpreter
        if exe is None:
            return None
        want = os.path.realpath(self.p["binary"])
        if exe == want:   # a replaced executable reads "<path> (deleted)": never equal
            return None
        return "k0s (pid %d) runs %s, not the current %s" % (pid, exe, want)

    def set_state(self, want, must_restart):
        name = self.p["name"]
        running = self.is_running()
        if want == "started" and running:
            reason = must_restart or self.stale_process()
            self.result["restart_reason"] = reason or None
            action = "restarted" if reason else None
        elif want == "started":
            action = "started"
        else:
            action = "stopped" if running else None
        if action is None:
            return None
        verb = {"started": "start", "restarted": "restart", "stopped": "stop"}[action]
        if not self.check:
            self.run(*k0s_settings.service_control(self.p["manager"], name, verb))
        why = self.result["restart_reason"]
        self.changes.append("%s %s%s" % (action, name, " (%s)" % why if action == "restarted" else ""))
        return action

    def apply(self):
        p = self.p
        r = self.result
        r["path"] = self.path(self.unit_rel)
        r["unit_changed"] = self.ensure_file(self.unit_rel, p["unit"], self.unit_mode,
                                             "unit" if p["manager"] == "systemd" else "init script")
        env_text = k0s_settings.env_file(p["env"], export=p["manager"] == "openrc" and not p["env_path"])
        if p["env_path"]:
            r["conf_changed"] = self.ensure_file(p["env_path"], env_text or None, 0o600, "environment file", secret=True)
            if p["conf"] is not None:
                r["conf_changed"] |= self.ensure_file(self.conf_rel, p["conf"], 0o600, "conf.d file", secret=True)
        elif p["manager"] == "openrc":
            if p["conf"] is not None or env_text:
                r["conf_changed"] = self.ensure_file(self.conf_rel, (p["conf"] or "") + env_text, 0o600,
                                                     "conf.d file", secret=True)
        else:
            r["conf_changed"] = self.ensure_file(self.env_rel, env_text or None, 0o600, "environment file",
                                                 secret=True)
        if not self.live:
            if p["enabled"] is not None:
                r["enabled_changed"] = self.enable_in_root(p["enabled"])
            return
        if p["manager"] == "systemd" and r["unit_changed"]:
            if not self.check:
                self.run("systemctl", "daemon-reload")
            self.changes.append("reloaded systemd")
        if p["enabled"] is not None:
            r["enabled_changed"] = self.enable_live(p["enabled"])
        if p["state"] is not None:
            must_restart = ("the k0s binaries or configuration changed" if p["restart"] else
                            "the unit changed" if r["unit_changed"] else
                            "the service environment changed" if r["conf_changed"] else None)
            r["action"] = self.set_state(p["state"], must_restart)


SPEC = dict(
    argument_spec=dict(
        name=dict(type="str", required=True),
        manager=dict(type="str", required=True, choices=["systemd", "openrc"]),
        unit=dict(type="str", required=True),
        conf=dict(type="str"),
        env=dict(type="dict", default={}, no_log=True),
        env_path=dict(type="path"),
        settings=dict(type="dict", default={}),
        binary=dict(type="path"),
        root=dict(type="path", default="/"),
        enabled=dict(type="bool"),
        state=dict(type="str", choices=["started", "stopped"]),
        restart=dict(type="bool", default=False),
    ),
)


def run(module):
    p = module.params
    if not k0s_settings.SERVICE_NAME.match(p["name"]):
        module.fail_json(msg="name %r is not a plain service name (letters, digits, ._@- only)" % p["name"])
    if p["conf"] is not None and p["manager"] != "openrc":
        module.fail_json(msg="conf is for OpenRC (/etc/conf.d/%s); a systemd unit carries its environment itself"
                         % p["name"])
    if not os.path.isabs(p["root"]):
        module.fail_json(msg="root must be an absolute path, got %r" % p["root"])
    # The role checked these already (its check entry point); a direct module user gets the same refusals.
    problems = k0s_settings.problems(p["settings"]) + k0s_settings.env_problems("k0s_env", p["env"])
    problems += [m for m in [p["env_path"] and k0s_settings.path_problem("env_path", p["env_path"])] if m]
    bad = k0s_settings.control_char(p["unit"].replace("\n", "").replace("\t", ""))
    if bad:
        problems.append("unit contains the control character %s" % bad)
    if problems:
        module.fail_json(msg="Refusing to write the k0s service: " + "; ".join(problems))
    svc = Service(module)
    try:
        svc.apply()
    except HostFsError as e:
        module.fail_json(msg=str(e), changes=svc.changes)
    except OSError as e:
        module.fail_json(msg=os_error_message(e), changes=svc.changes)
    res = svc.result
    res["changed"] = bool(svc.changes)
    if module._diff:
        res["diff"] = svc.diff
    module.exit_json(**res)
