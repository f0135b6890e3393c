# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The host side of the compact module transport (plugin_utils/compact_module.py).

A host module's logic is a ``run(module)`` function in module_utils that uses only a small part of
Ansible's AnsibleModule: ``params``, ``check_mode``, ``_diff``, ``warn``, ``fail_json``, ``exit_json``
and ``run_command``. The module file hands it an AnsibleModule (the AnsiballZ transport); the compact
transport hands it a HostModule built from parameters the controller already validated with Ansible's
own ArgumentSpecValidator, so the host receives our module_utils and nothing of ansible-core (about 40 KB
instead of 170-240 KB per module run; docs/distribution.md "What the controller still sends").

Standard library only, Python 3.6 syntax: this runs on the hosts.
"""

import json
import os
import subprocess
import sys
import traceback


class ModuleDone(BaseException):
    """Raised by exit_json/fail_json: ends ``run`` like AnsibleModule's sys.exit does (a BaseException, so the
    modules' ``except Exception`` clauses do not catch it); ``main`` returns its exit code."""

    def __init__(self, rc):
        BaseException.__init__(self, rc)
        self.rc = rc


class HostModule(object):
    """The part of AnsibleModule the host modules use, with the same behaviour: fail_json and exit_json
    print the one JSON result and end the run."""

    def __init__(self, params, check_mode=False, diff=False, path_options=()):
        self.params = dict(params)
        # Like AnsibleModule's "path" type, on the host: ~ and $VARS are the host's, not the controller's.
        for name in path_options:
            if isinstance(self.params.get(name), str):
                self.params[name] = os.path.expanduser(os.path.expandvars(self.params[name]))
        self.check_mode = bool(check_mode)
        self._diff = bool(diff)
        self._warnings = []

    def warn(self, msg):
        self._warnings.append(str(msg))

    def _emit(self, result):
        if self._warnings:
            result["warnings"] = list(result.get("warnings") or []) + self._warnings
        sys.stdout.write(json.dumps(result, sort_keys=True))
        sys.stdout.flush()

    def exit_json(self, **result):
        result.setdefault("changed", False)
        self._emit(result)
        raise ModuleDone(0)

    def fail_json(self, msg, **result):
        result["failed"] = True
        result["msg"] = msg
        self._emit(result)
        raise ModuleDone(1)

    def run_command(self, args):
        """argv only (never a shell), stdin closed, C locale: what AnsibleModule.run_command does for a list."""
        env = dict(os.environ, LANG="C", LC_ALL="C", LC_MESSAGES="C")
        proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, close_fds=True)
        out, err = proc.communicate()
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def main(request):
    """Run ``request["entry"]``'s ``run(module)`` with the request's parameters; returns the exit code (the
    bootstrap exits with it)."""
    module = HostModule(request["params"], request.get("check_mode"), request.get("diff"),
                        request.get("path_options") or ())
    try:
        entry = __import__(request["entry"], fromlist=["run"])
        entry.run(module)
        module.exit_json()
    except ModuleDone as done:
        return done.rc
    except Exception:   # what AnsiballZ reports as MODULE FAILURE: the traceback names the bug
        try:
            module.fail_json(msg="MODULE FAILURE: %s" % traceback.format_exc().strip().splitlines()[-1],
                             exception=traceback.format_exc())
        except ModuleDone as done:
            return done.rc
    return 1
