"""The compact module transport without Ansible's executor: the request plugin_utils/compact_module.py builds, run by
a real Python through its BOOTSTRAP (stdin and file forms), against the real module_utils of k0s_join_token,
k0s_service and k0s_release; what it ships (no ansible-core code, every import of the entry) and Ansible's own
argument validation on the controller side."""
import ast
import json
import os
import stat
import subprocess
import sys
import zlib

import pytest

from ansible.errors import AnsibleActionFail
from ansible_collections.fleetsplit.k0s.plugins.module_utils import join_token_file, release_build, service_unit
from ansible_collections.fleetsplit.k0s.plugins.plugin_utils import compact_module as cm
from test_host_python_floor import PYTHON36, needs_36

ENTRIES = {"k0s_join_token": join_token_file, "k0s_service": service_unit, "k0s_release": release_build}
TOKEN = "abcdef.0123456789abcdef"


def host_run(entry, params, check_mode=False, diff=False, python=sys.executable, via_file=None, env=None):
    """(rc, result) of the request run by ``python`` as a host would (isolated: no site-packages, no PYTHONPATH)."""
    mod = sys.modules[entry]
    checked = cm.validate(mod.SPEC, params)
    params, paths = checked[0], checked[2]
    payload = cm.request_payload(entry, params, paths, check_mode, diff)
    argv = [python, "-I", "-c", cm.BOOTSTRAP]
    if via_file is not None:
        via_file.write_bytes(payload)
        argv.append(str(via_file))
    proc = subprocess.run(argv, input=None if via_file else payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env or {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}, check=False)
    return proc.returncode, json.loads(proc.stdout.decode()), proc.stderr.decode()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_sources_are_the_entry_closure_and_no_ansible_core(name):
    sources = cm.host_sources(ENTRIES[name].__name__)
    assert ENTRIES[name].__name__ in sources and cm.HOST_MAIN in sources
    for dotted, (package, code) in sources.items():
        assert dotted.startswith("ansible_collections"), dotted
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("ansible."), "%s imports %s" % (dotted, node.module)
                if node.module.startswith(cm.PREFIX):
                    assert node.module in sources, "%s imports %s, which is not shipped" % (dotted, node.module)
        parent = dotted.rpartition(".")[0]
        assert not parent or parent in sources, "parent package %s missing" % parent
    # What this is for: far below an AnsiballZ payload (170-240 KB of ansible-core module_utils).
    size = len(cm.request_payload(ENTRIES[name].__name__, {}))
    assert size < 60000, size


def test_join_token_written_through_stdin_and_file(tmp_path):
    path = tmp_path / "etc" / "k0stoken"
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(path), token=TOKEN), check_mode=True)
    assert rc == 0 and res["changed"] is True and not path.parent.exists(), "check mode writes nothing"
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(path), token=TOKEN))
    assert rc == 0 and res["changed"] and path.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(path), token=TOKEN), via_file=tmp_path / "req")
    assert rc == 0 and res == {"changed": False, "changes": [], "path": str(path)}
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(path), state="overwritten"),
                            via_file=tmp_path / "req")
    assert rc == 0 and res["changed"] and path.read_text().startswith("# overwritten")


def test_failures_are_results_and_module_failures_name_the_error(tmp_path):
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(tmp_path / "t"), token="two\nlines"))
    assert rc == 1 and res["failed"] and "one non-empty line" in res["msg"]
    # A service name that could reach a command line is refused on the host too.
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(tmp_path / "t"), token=TOKEN,
                                                           service_name="k0s;reboot", service_manager="systemd"))
    assert rc == 1 and "not a plain service name" in res["msg"] and not (tmp_path / "t").exists()
    # A broken entry (a bug, not a refusal) comes back as MODULE FAILURE with its traceback, as AnsiballZ's.
    payload = json.loads(zlib.decompress(cm.request_payload(join_token_file.__name__, {})))
    payload["params"] = {}   # run() reads params["path"]: KeyError
    proc = subprocess.run([sys.executable, "-I", "-c", cm.BOOTSTRAP],
                          input=zlib.compress(json.dumps(payload).encode()), stdout=subprocess.PIPE, check=False)
    res = json.loads(proc.stdout)
    assert proc.returncode == 1 and res["msg"].startswith("MODULE FAILURE: KeyError") and "Traceback" in res["exception"]


def test_token_create_failure_names_k0s_and_returns_no_token(tmp_path):
    """state=created with a k0s that cannot make tokens (a real failing program): the error is k0s's, rc kept."""
    k0s = tmp_path / "k0s"
    k0s.write_text("#!/bin/sh\necho 'Error: failed to read admin config' >&2\nexit 1\n")
    k0s.chmod(0o755)
    rc, res, err = host_run(join_token_file.__name__, dict(state="created", k0s=str(k0s), role="worker", count=2,
                                                           data_dir=str(tmp_path)))
    assert rc == 1 and res["tokens"] == [] and "after 0 of 2 tokens: Error: failed to read admin config" in res["msg"]


def test_paths_expand_on_the_host_not_the_controller(tmp_path):
    home = tmp_path / "hosthome"
    home.mkdir()
    params, _no_log, paths = cm.validate(join_token_file.SPEC, dict(path="~/k0stoken", token=TOKEN))
    assert "path" in paths and params["path"] == "~/k0stoken", "the controller leaves it to the host"
    rc, res, err = host_run(join_token_file.__name__, dict(path="~/k0stoken", token=TOKEN),
                            env={"PATH": os.environ["PATH"], "HOME": str(home)})
    assert rc == 0 and (home / "k0stoken").read_text() == TOKEN + "\n" and res["path"] == str(home / "k0stoken")


def test_validation_is_ansibles_and_no_log_values_are_collected():
    with pytest.raises(AnsibleActionFail, match="value of state must be one of"):
        cm.validate(join_token_file.SPEC, dict(state="bogus"))
    with pytest.raises(AnsibleActionFail, match="Unsupported parameters"):
        cm.validate(join_token_file.SPEC, dict(token=TOKEN, nonsense=1))
    with pytest.raises(AnsibleActionFail, match="state is present but all of the following are missing: token"):
        cm.validate(join_token_file.SPEC, dict(state="present"))
    params, no_log = cm.validate(join_token_file.SPEC, dict(token=TOKEN, count="3"))[:2]
    assert TOKEN in no_log and params["count"] == 3 and params["data_dir"] == "/var/lib/k0s"
    masked = cm._parse({"stdout": json.dumps({"msg": "bad token %s" % TOKEN})}, no_log)
    assert TOKEN not in json.dumps(masked)


def test_unparsable_output_is_a_clear_failure():
    res = cm._parse({"rc": 127, "stdout": "", "stderr": "python3: not found"}, set())
    assert res["failed"] and "printed no result (rc 127)" in res["msg"] and res["module_stderr"] == "python3: not found"


def test_service_check_mode_on_an_image_root(tmp_path):
    """k0s_service's logic through the transport: an offline root (no service manager needed), check mode then real."""
    args = dict(name="k0sworker", manager="systemd", unit="[Unit]\nDescription=k0s\n", root=str(tmp_path),
                enabled=True)
    rc, res, err = host_run(service_unit.__name__, args, check_mode=True, diff=True)
    assert rc == 0 and res["changed"] and res["diff"]["after"].startswith("# %s/etc/systemd/system/" % tmp_path)
    assert not (tmp_path / "etc").exists()
    rc, res, err = host_run(service_unit.__name__, args)
    unit = tmp_path / "etc/systemd/system/k0sworker.service"
    assert rc == 0 and unit.read_text() == args["unit"]
    assert os.readlink(tmp_path / "etc/systemd/system/multi-user.target.wants/k0sworker.service") == \
        "/etc/systemd/system/k0sworker.service"
    assert host_run(service_unit.__name__, args)[1]["changed"] is False


@needs_36
def test_python_36_host_runs_the_request(tmp_path):
    """The bootstrap, the importer and a module's logic on the oldest host Python (no ansible-core there at all)."""
    path = tmp_path / "k0stoken"
    rc, res, err = host_run(join_token_file.__name__, dict(path=str(path), token=TOKEN), python=PYTHON36)
    assert rc == 0 and res["changed"] and path.read_text() == TOKEN + "\n", err
    rc, res, err = host_run(release_build.__name__, dict(state="query", files=[], store_dir=str(tmp_path / "store"),
                                                         executable=dict(size=1, sha256="0" * 64, crc32=0),
                                                         bin_dir=str(tmp_path / "bin")), python=PYTHON36)
    assert rc == 0 and res["changed"] is False and res["up_to_date"] is False, err


def test_output_around_the_result_and_interpreter_words():
    res = cm._parse({"stdout": "motd line\n" + json.dumps({"changed": False, "path": "/x"}) + "\ntrailer\n"}, set())
    assert res == {"changed": False, "path": "/x"}
    assert cm.host_command("/usr/bin/env python3").startswith("/usr/bin/env python3 -c ")
    assert cm.host_command("/opt/py 3/python3;reboot").startswith("/opt/py '3/python3;reboot' -c ")


def test_sources_cached_for_the_run(tmp_path):
    entry = release_build.__name__
    first = cm.cached_sources(entry, str(tmp_path))
    assert first == json.loads(json.dumps(cm.host_sources(entry)))
    cached = [p for p in tmp_path.iterdir() if p.name.startswith("fleetsplit-compact-")]
    assert len(cached) == 1 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp file left"
    # The next worker reads the file (the key: the entry and every module_utils file's path, size and mtime).
    cached[0].write_text(json.dumps({"marker": [False, ""]}))
    assert cm.cached_sources(entry, str(tmp_path)) == {"marker": [False, ""]}
    assert cm.cached_sources(join_token_file.__name__, str(tmp_path)) != {"marker": [False, ""]}
