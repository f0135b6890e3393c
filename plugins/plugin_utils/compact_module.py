# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The compact module transport: runs a host module's ``run(module)`` (module_utils) on the host with only
the collection's own module_utils it imports, instead of an AnsiballZ payload.

Why: every AnsiballZ run ships ansible-core's module_utils (basic.py, distro, six, parameters, ...), 170-240 KB
over ssh per module run whatever the module does. With pull distribution that code was nearly all the controller
still sent (docs/distribution.md); the compact request of k0s_release is about 40 KB, of k0s_join_token 9 KB.

What stays Ansible's: the arguments are validated on the controller by ansible-core's ArgumentSpecValidator
(the module's own spec), the host's Python is the one a module run would use (``_configure_module``:
ansible_python_interpreter or discovery), become, the task environment, the connection, and no_log values are
removed from the result as AnsibleModule removes them. The request (parameters included) goes through the
connection's stdin when it pipelines, else as a file in the task's private remote temporary directory, as
non-pipelined modules do. ``async`` tasks and ``k0s_module_transport: ansiballz`` take the AnsiballZ path.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import tempfile
import zlib

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError
from ansible.module_utils.json_utils import _filter_non_json_lines
from ansible.plugins.action import ActionBase

PREFIX = "ansible_collections.fleetsplit.k0s.plugins.module_utils"
UTILS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
HOST_MAIN = PREFIX + ".host_module"
TRANSPORTS = ("compact", "ansiballz")

# Python 3.6 syntax; reads the request (stdin, or the file named by argv[1]), imports only from it.
BOOTSTRAP = r"""
import sys, json, zlib, importlib.abc, importlib.util
raw = open(sys.argv[1], 'rb').read() if len(sys.argv) > 1 else sys.stdin.buffer.read()
req = json.loads(zlib.decompress(raw).decode('utf-8'))
src = req.pop('sources')
class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in src:
            return importlib.util.spec_from_loader(name, self, is_package=src[name][0])
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        package, code = src[module.__name__]
        name = '<fleetsplit.k0s>/' + module.__name__.replace('.', '/') + ('/__init__.py' if package else '.py')
        exec(compile(code, name, 'exec'), module.__dict__)
sys.meta_path.insert(0, Finder())
sys.exit(__import__(req['host_main'], fromlist=['main']).main(req))
"""


def _module_file(name):
    """(path, is_package) of a module_utils module by dotted name, or None when it is not one of ours."""
    rel = name[len(PREFIX):].lstrip(".").replace(".", os.sep)
    for path, package in ((os.path.join(UTILS_DIR, rel, "__init__.py"), True), (os.path.join(UTILS_DIR, rel + ".py"), False)):
        if os.path.isfile(path):
            return path, package
    if os.path.isdir(os.path.join(UTILS_DIR, rel)):
        return None, True   # a namespace package (no __init__.py)
    return None


def _imports(name, source, package):
    """Dotted names of the collection's module_utils that ``source`` imports (absolute and relative)."""
    found = set()
    here = name if package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith(PREFIX):
                found.add(base)
                found.update(base + "." + a.name for a in node.names if _module_file(base + "." + a.name))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PREFIX))
    return found


def host_sources(entry):
    """{dotted name: [is_package, source]} of ``entry``, the host main and every module_utils they import,
    with the parent packages; refuses an import that does not resolve to a file of the collection."""
    sources, todo = {}, [entry, HOST_MAIN]
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        found = _module_file(name)
        if found is None:
            raise AnsibleActionFail("compact module transport: %s is not a module of %s" % (name, UTILS_DIR))
        path, package = found
        source = ""
        if path is not None:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        sources[name] = [package, source]
        todo.extend(_imports(name, source, package))
        if name.rpartition(".")[0].startswith(PREFIX):
            todo.append(name.rpartition(".")[0])   # a package is imported before its modules
    parts = PREFIX.split(".")
    for i in range(1, len(parts) + 1):
        sources.setdefault(".".join(parts[:i]), [True, ""])
    return sources


def cached_sources(entry, cache_dir=None):
    """``host_sources(entry)``, kept for the run in Ansible's private local temp dir (as Ansible keeps its AnsiballZ
    zips there): every task and host runs in a fresh worker process, and walking the imports of k0s_release's
    14 files costs ~50 ms. The key covers the path, size and mtime of every module_utils file."""
    cache_dir = cache_dir or C.DEFAULT_LOCAL_TMP
    stamp = hashlib.sha256(entry.encode("utf-8"))
    for root, dirs, files in os.walk(UTILS_DIR):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            st = os.stat(os.path.join(root, name))
            stamp.update(("%s\0%d\0%d\n" % (os.path.join(root, name), st.st_size, st.st_mtime_ns)).encode("utf-8"))
    path = os.path.join(cache_dir, "fleetsplit-compact-%s.json" % stamp.hexdigest()[:32])
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    sources = host_sources(entry)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".fleetsplit-compact-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sources, f)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sources


def _shebang_interpreter(action, module_name, args, task_vars):
    """The host's Python as a module run would use it: ansible_python_interpreter, or interpreter discovery
    (whose result the task returns as a fact, as module runs do)."""
    built = action._configure_module(module_name, dict(args), task_vars)
    shebang = getattr(built[0], "shebang", None) if len(built) == 2 else built[1]   # 2.19: (_BuiltModule, path)
    if not shebang or not shebang.startswith("#!"):
        raise AnsibleActionFail("compact module transport: no Python interpreter for %s (shebang %r)"
                                % (module_name, shebang))
    return shebang[2:].strip()


def validate(spec, args, module_name="module"):
    """Ansible's own validation of ``args`` against the module's ``spec``; path options are checked as text and
    expanded on the host (HostModule), as AnsibleModule does there. Returns (params, no_log_values, path_options)."""
    argument_spec = dict((k, dict(v)) for k, v in spec["argument_spec"].items())
    path_options = sorted(k for k, v in argument_spec.items() if v.get("type") == "path")
    for k in path_options:
        argument_spec[k]["type"] = "str"
    rest = dict((k, v) for k, v in spec.items() if k != "argument_spec")
    checked = ArgumentSpecValidator(argument_spec, **rest).validate(dict(args))
    if checked.error_messages:   # the first error, worded as AnsibleModule words it
        error = checked.errors[0]
        msg = error.msg
        if isinstance(error, UnsupportedError):
            msg = "Unsupported parameters for (%s) module: %s" % (module_name, msg)
        raise AnsibleActionFail(msg)
    return checked.validated_parameters, checked._no_log_values, path_options


def request_payload(entry, params, path_options=(), check_mode=False, diff=False, sources=None):
    """The bytes the host reads: zlib of the JSON request (BOOTSTRAP's input)."""
    request = {"host_main": HOST_MAIN, "entry": entry, "params": params, "path_options": list(path_options),
               "check_mode": bool(check_mode), "diff": bool(diff), "sources": sources or host_sources(entry)}
    return zlib.compress(json.dumps(request, sort_keys=True).encode("utf-8"), 9)


def host_command(python):
    """The shell command that runs BOOTSTRAP with ``python`` (the request follows on stdin or as argv[1]). Each word
    of the interpreter is quoted: ``/usr/bin/env python3`` works, shell syntax in it stays text."""
    return " ".join([shlex.quote(word) for word in shlex.split(python)] + ["-c", shlex.quote(BOOTSTRAP)])


def execute(action, module_name, spec, entry, args, task_vars):
    """Run ``module_name`` with ``args`` on the task's host: its ``entry`` module_utils ``run(module)`` through the
    compact transport, or the AnsiballZ module when the task is async or ``k0s_module_transport`` says so."""
    host_vars = task_vars
    if action._task.delegate_to:   # the variables of the host the module runs on
        host_vars = task_vars.get("ansible_delegated_vars", {}).get(action._task.delegate_to, task_vars)
    transport = str(action._templar.template(host_vars.get("k0s_module_transport", "compact")))
    if transport not in TRANSPORTS:
        raise AnsibleActionFail("k0s_module_transport must be one of %s, got %r" % (", ".join(TRANSPORTS), transport))
    if transport == "ansiballz" or action._task.async_val:
        return action._execute_module(module_name=module_name, module_args=args, task_vars=task_vars)
    params, no_log_values, path_options = validate(spec, args, module_name)
    python = _shebang_interpreter(action, module_name, params, task_vars)
    payload = request_payload(entry, params, path_options, action._task.check_mode, action._task.diff,
                              cached_sources(entry))
    command = host_command(python)
    environment = action._compute_environment_string()
    shell = action._connection._shell
    made_tmp = None
    if action._is_pipelining_enabled("new"):
        res = action._low_level_execute_command(" ".join(x for x in (environment, command) if x), in_data=payload)
    else:
        remote_tmp = shell.tmpdir
        if remote_tmp is None:
            remote_tmp = made_tmp = action._make_tmp_path()
        try:
            remote = shell.join_path(remote_tmp, "%s.request.z" % module_name.rpartition(".")[2])
            action._transfer_data(remote, payload)
            action._fixup_perms2((remote_tmp, remote))
            res = action._low_level_execute_command(
                " ".join(x for x in (environment, command, shlex.quote(remote)) if x))
        finally:
            if made_tmp is not None:
                action._remove_tmp_path(made_tmp)
    result = _parse(res, no_log_values)
    result["transport_bytes"] = len(payload)
    if action._discovered_interpreter_key:
        result.setdefault("ansible_facts", {})[action._discovered_interpreter_key] = action._discovered_interpreter
    return result


def _parse(res, no_log_values):
    stdout = res.get("stdout", "")
    try:
        result = json.loads(_filter_non_json_lines(stdout)[0])   # as module output: junk around the JSON dropped
        if not isinstance(result, dict):
            raise ValueError("not an object")
    except ValueError:
        result = {"failed": True, "rc": res.get("rc"),
                  "msg": "MODULE FAILURE: the host printed no result (rc %s); see stdout and stderr" % res.get("rc"),
                  "module_stdout": stdout, "module_stderr": res.get("stderr", "")}
    return remove_values(result, no_log_values)


class CompactAction(ActionBase):
    """The action of a host module whose logic is ``LOGIC.run(module)`` (a module_utils with ``SPEC`` and ``run``)."""

    TRANSFERS_FILES = False
    MODULE = None
    LOGIC = None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        result.update(execute(self, self.MODULE, self.LOGIC.SPEC, self.LOGIC.__name__, dict(self._task.args), task_vars))
        return result
