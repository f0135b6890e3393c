# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Checks and quoting for the role variables that end up in a k0s unit, init script or environment file.

Pure Python, no Ansible import: used by the k0s_service module on hosts (Python 3.6 syntax) and by the
k0s_settings_problems filter on the controller, so the preflight and the module refuse the same values.

Quoting targets (read in systemd's sources and man pages):
- EnvironmentFile= (src/basic/env-file.c, parse_env_file_internal): a single-quoted value is taken
  literally; after the closing quote the parser is back before a value, so a following "..." segment is
  read too, but a backslash outside quotes switches to a state where later quotes are literal. Values are
  therefore written as '...' segments joined by "'" for each single quote: POSIX sh reads the same text
  to the same value, so one format serves systemd's EnvironmentFile= and OpenRC's conf.d (sourced by
  /bin/sh). No variable or specifier expansion happens in an EnvironmentFile.
- Control characters are refused everywhere: a newline would end a unit line or a shell command.
"""

import posixpath
import re

ROLES = ("controller", "worker", "controller+worker")
K3S_ROLES = ("server", "agent")   # the k3s role: `k3s server` / `k3s agent`
MANAGERS = ("systemd", "openrc")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Path components safe unquoted in a unit (ConditionFileIsExecutable= takes no quotes), in PATH (no ":")
# and in a comment or script; no "%" (systemd specifiers) and no "$".
PLAIN_COMPONENT = re.compile(r"[A-Za-z0-9._+@-]+")
CONTROL = re.compile(u"[\x00-\x1f\x7f-\x9f]")   # C0, DEL and C1
# A service (unit or init script) name: letters, digits, ._@- only, never starting with - or .
SERVICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]*\Z")


def service_control(manager, name, verb):
    """The argv that starts, stops or restarts the service ``name`` with its manager (systemd or OpenRC)."""
    return ["systemctl", verb, name + ".service"] if manager == "systemd" else ["rc-service", name, verb]


# Variables holding one absolute path that reaches a unit, script or command line.
PATH_VARS = ("k0s_bin_dir", "k0s_libexec_dir", "k0s_data_dir", "k0s_config_path", "k0s_join_token_path",
             "k3s_bin_dir", "k3s_data_dir", "k3s_store_dir")
# Variables whose names and values go to an environment or conf.d file.
ENV_VARS = ("k0s_env", "k0s_openrc_conf", "k3s_env")
# Variables holding extra command-line arguments of the service.
ARGS_VARS = ("k0s_extra_args", "k3s_extra_args")


def control_char(value):
    """The first control character of ``value`` as a readable escape, or None."""
    m = CONTROL.search(value)
    return None if m is None else repr(m.group(0))[1:-1]


def path_problem(name, value, plain=True):
    """Why ``value`` is not acceptable as variable ``name`` (an absolute, normalised path), or None."""
    if not isinstance(value, str) or not value:
        return "%s must be a non-empty absolute path, got %r" % (name, value)
    bad = control_char(value)
    if bad:
        return "%s contains the control character %s: %r" % (name, bad, value)
    if not value.startswith("/"):
        return "%s must be an absolute path, got %r" % (name, value)
    parts = value.split("/")[1:]
    if ".." in parts or "." in parts:
        return "%s must not contain '.' or '..' components, got %r" % (name, value)
    if value != "/" and (posixpath.normpath(value) != value or value.startswith("//")):
        return "%s must be a normalised path (no '//' or trailing '/'), got %r" % (name, value)
    if plain and value != "/" and not all(PLAIN_COMPONENT.fullmatch(p) for p in parts):
        return ("%s may only use letters, digits and ._+@- in its components (it goes unquoted into the unit's"
                " PATH and conditions), got %r" % (name, value))
    return None


def env_problems(name, env):
    if not isinstance(env, dict):
        return ["%s must be a mapping of variable names to values" % name]
    out = []
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            out.append("%s: %r is not a variable name ([A-Za-z_][A-Za-z0-9_]*)" % (name, key))
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            out.append("%s.%s must be a string, got %s" % (name, key, type(value).__name__))
            continue
        bad = control_char(str(value))
        if bad:
            # The value itself is not repeated: it may be a secret.
            out.append("%s.%s contains the control character %s" % (name, key, bad))
    return out


def extra_args_problems(args, name="k0s_extra_args"):
    items = [args] if isinstance(args, str) else args
    if not isinstance(items, list):
        return ["%s must be a list of strings or one string, got %s" % (name, type(args).__name__)]
    out = []
    for i, arg in enumerate(items):
        if isinstance(arg, (dict, list)) or arg is None:
            out.append("%s[%d] must be a string, got %s" % (name, i, type(arg).__name__))
            continue
        bad = control_char(str(arg))
        if bad:
            where = name if isinstance(args, str) else "%s[%d]" % (name, i)
            out.append("%s contains the control character %s: %r" % (where, bad, str(arg)))
    return out


def server_url_problems(url, role=None):
    """k3s_server_url (K3S_URL): empty, or https:// as k3s's install.sh demands (verify_k3s_url); an agent
    needs one."""
    if not isinstance(url, str):
        return ["k3s_server_url must be a string, got %s" % type(url).__name__]
    bad = control_char(url)
    if bad:
        return ["k3s_server_url contains the control character %s: %r" % (bad, url)]
    if url and (not url.startswith("https://") or re.search(r"\s", url) or len(url) == len("https://")):
        return ["k3s_server_url must be an https:// URL without spaces (as k3s's install.sh requires), got %r" % url]
    if not url and role == "agent":
        return ["k3s_server_url is empty: an agent needs the server's URL, e.g. https://<server>:6443"]
    return []


def problems(settings):
    """Every problem of the values in ``settings`` (variable name -> value; absent ones are not checked),
    each message naming the variable. Empty list = all fine."""
    out = []
    if "k0s_role" in settings and settings["k0s_role"] not in ROLES:
        out.append("k0s_role is %r: set it to one of %s, or put the host in the k0s_controllers and/or"
                   " k0s_workers group" % (settings["k0s_role"], ", ".join(ROLES)))
    if "k3s_role" in settings and settings["k3s_role"] not in K3S_ROLES:
        out.append("k3s_role is %r: set it to server or agent, or put the host in the k3s_servers or k3s_agents"
                   " group" % (settings["k3s_role"],))
    if "k3s_server_url" in settings:
        out.extend(server_url_problems(settings["k3s_server_url"], settings.get("k3s_role")))
    for name in PATH_VARS:
        if name in settings:
            msg = path_problem(name, settings[name])
            if msg:
                out.append(msg)
    if "k0s_root" in settings:
        msg = path_problem("k0s_root", settings["k0s_root"].rstrip("/") or "/", plain=False)
        if msg:
            out.append(msg)
    if "k0s_system_path" in settings:
        value = settings["k0s_system_path"]
        for part in (value.split(":") if isinstance(value, str) and value else [value]):
            msg = path_problem("k0s_system_path", part)
            if msg:
                out.append(msg)
                break
    for name in ENV_VARS:
        if name in settings:
            out.extend(env_problems(name, settings[name]))
    for name in ARGS_VARS:
        if name in settings:
            out.extend(extra_args_problems(settings[name], name))
    for name in ("k0s_service_managers", "k3s_service_managers"):
        wrong = [m for m in settings.get(name) or [] if m not in MANAGERS]
        if wrong:
            out.append("%s: %s not supported (systemd, openrc)" % (name, ", ".join(map(str, wrong))))
    return out


def sh_quote(value):
    """``value`` quoted so that POSIX sh and systemd's EnvironmentFile= parser both read it back exactly."""
    return "'" + str(value).replace("'", "'\"'\"'") + "'"


def env_file(env, export=False):
    """NAME='value' lines (sorted for a stable file); ``export`` adds an export line for /bin/sh."""
    names = sorted(env)
    lines = ["%s=%s\n" % (k, sh_quote(env[k])) for k in names]
    if export and names:
        lines.append("export %s\n" % " ".join(names))
    return "".join(lines)
