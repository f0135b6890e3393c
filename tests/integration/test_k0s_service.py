"""fleetsplit.k0s.k0s_service run for real (as a module process) against temporary roots.

Live service managers are exercised by the molecule scenarios (systemd and OpenRC hosts); here the
file side: writes, modes, idempotence, check mode, diff, enablement links and every refusal.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

from systemd_syntax import env_file as parse_env_file
from testlib import COLLECTIONS, REPO

MODULE = REPO / "plugins" / "modules" / "k0s_service.py"
UNIT = "[Unit]\nDescription=k0s - Zero Friction Kubernetes\n\n[Service]\nExecStart=/usr/bin/k0s worker\n"


def run(tmp_path, expect_fail=False, check=False, diff=False, **args):
    argfile = tmp_path / "args.json"
    args.update(_ansible_check_mode=check, _ansible_diff=diff)
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    p = subprocess.run([sys.executable, str(MODULE), str(argfile)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)
    res = json.loads(p.stdout)
    assert bool(res.get("failed")) == expect_fail, res
    return res


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "image"
    r.mkdir()
    return r


def test_systemd_unit_in_root_is_written_once_and_enabled(tmp_path, root):
    args = dict(name="k0sworker", manager="systemd", unit=UNIT, root=str(root), enabled=True)
    # Check mode: reports, writes nothing, diff shows the new unit.
    r = run(tmp_path, check=True, diff=True, **args)
    assert r["changed"] and r["unit_changed"] and r["enabled_changed"]
    assert "ExecStart=/usr/bin/k0s worker" in r["diff"]["after"] and r["diff"]["before"] == ""
    assert not (root / "etc").exists()
    r = run(tmp_path, **args)
    unit = root / "etc/systemd/system/k0sworker.service"
    assert r["changed"] and r["path"] == str(unit) and unit.read_text() == UNIT
    st = unit.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and (st.st_uid, st.st_gid) == (0, 0)
    link = root / "etc/systemd/system/multi-user.target.wants/k0sworker.service"
    assert os.readlink(link) == "/etc/systemd/system/k0sworker.service"
    assert r["action"] is None, "nothing is started inside an image"
    ino = unit.stat().st_ino
    r = run(tmp_path, **args)
    assert not r["changed"] and r["changes"] == [] and unit.stat().st_ino == ino
    # A changed unit is replaced (new inode: temp file + rename), a wrong mode repaired.
    r = run(tmp_path, **{**args, "unit": UNIT + "Restart=always\n"})
    assert r["unit_changed"] and unit.stat().st_ino != ino and unit.read_text().endswith("Restart=always\n")
    os.chmod(unit, 0o666)
    assert run(tmp_path, **{**args, "unit": UNIT + "Restart=always\n"})["unit_changed"]
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    # enabled=false removes the link; unset leaves it alone.
    assert run(tmp_path, **{**args, "enabled": False})["enabled_changed"] and not os.path.lexists(link)
    args.pop("enabled")
    assert not run(tmp_path, **args)["enabled_changed"] and not os.path.lexists(link)
    assert not [e for e in os.listdir(unit.parent) if "fleetsplit-tmp" in e]


def test_openrc_script_and_conf_in_root(tmp_path, root):
    r = run(tmp_path, name="k0scontroller", manager="openrc", unit="#!/sbin/openrc-run\n", conf="rc_ulimit='-n 20000'\n",
            root=str(root), enabled=True)
    assert r["unit_changed"] and r["conf_changed"]
    script, conf = root / "etc/init.d/k0scontroller", root / "etc/conf.d/k0scontroller"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755 and stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert conf.read_text() == "rc_ulimit='-n 20000'\n"
    # k0s_env is exported from conf.d (0600), quoted for /bin/sh; taking it out again removes it.
    r = run(tmp_path, diff=True, name="k0scontroller", manager="openrc", unit="#!/sbin/openrc-run\n",
            conf="rc_ulimit='-n 20000'\n", env={"HTTPS_PROXY": "http://u:pw'$x@p:3128"}, root=str(root))
    assert r["conf_changed"] and "pw'" not in json.dumps(r)
    got = subprocess.run(["sh", "-c", '. "$1"; sh -c \'printf "%s" "$HTTPS_PROXY"\'', "sh", str(conf)],
                         capture_output=True, text=True, check=True).stdout
    assert got == "http://u:pw'$x@p:3128" and stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert run(tmp_path, name="k0scontroller", manager="openrc", unit="#!/sbin/openrc-run\n",
               conf="rc_ulimit='-n 20000'\n", root=str(root))["conf_changed"]
    assert conf.read_text() == "rc_ulimit='-n 20000'\n"
    assert os.readlink(root / "etc/runlevels/default/k0scontroller") == "/etc/init.d/k0scontroller"


def test_refusals_name_the_problem_and_change_nothing(tmp_path, root):
    base = dict(name="k0sworker", manager="systemd", unit=UNIT, root=str(root))
    d = root / "etc/systemd/system"
    d.mkdir(parents=True)
    # A symlink at the unit path is not written through.
    (tmp_path / "elsewhere").write_text("precious")
    os.symlink(tmp_path / "elsewhere", d / "k0sworker.service")
    r = run(tmp_path, expect_fail=True, **base)
    assert "symlink" in r["msg"] and str(d / "k0sworker.service") in r["msg"]
    assert (tmp_path / "elsewhere").read_text() == "precious"
    os.unlink(d / "k0sworker.service")
    # World-writable directory (no sticky bit).
    os.chmod(d, 0o777)
    r = run(tmp_path, expect_fail=True, **base)
    assert "world-writable" in r["msg"] and str(d) in r["msg"]
    assert os.listdir(d) == []
    os.chmod(d, 0o755)
    # conf.d is OpenRC only; names must be plain.
    assert "OpenRC" in run(tmp_path, expect_fail=True, conf="x=1\n", **base)["msg"]
    assert "plain service name" in run(tmp_path, expect_fail=True, **{**base, "name": "../evil"})["msg"]
    assert "absolute" in run(tmp_path, expect_fail=True, **{**base, "root": "relative/dir"})["msg"]
    assert os.listdir(d) == []


def test_systemd_environment_file_is_0600_and_never_shown(tmp_path, root):
    secret = "http://user:Pr0xy-pa55@proxy:3128"
    args = dict(name="k0sworker", manager="systemd", unit=UNIT + "EnvironmentFile=/etc/k0s/k0sworker.env\n",
                root=str(root), env={"HTTPS_PROXY": secret, "ODD": " a'b\"c$d%e\\f "})
    r = run(tmp_path, check=True, diff=True, **args)
    assert r["conf_changed"] and not (root / "etc/k0s").exists()
    r = run(tmp_path, diff=True, **args)
    env = root / "etc/k0s/k0sworker.env"
    assert r["conf_changed"] and stat.S_IMODE(env.stat().st_mode) == 0o600
    assert parse_env_file(env.read_text()) == args["env"], "systemd's EnvironmentFile= rules read it back"
    assert "Pr0xy-pa55" not in json.dumps(r) and "(secret content, sha256" in r["diff"]["after"]
    assert not run(tmp_path, **args)["changed"]
    # No variables left: the file goes.
    r = run(tmp_path, **{**args, "env": {}})
    assert r["conf_changed"] and not env.exists() and "removed environment file %s" % env in r["changes"]


@pytest.mark.parametrize("manager", ["systemd", "openrc"])
def test_env_path_gets_the_environment_for_both_managers(tmp_path, root, manager):
    """k3s's units read their env from a file of their own (install.sh FILE_K3S_ENV), not /etc/k0s or conf.d."""
    env_path = "/etc/systemd/system/k3s.service.env" if manager == "systemd" else "/etc/rancher/k3s/k3s.env"
    args = dict(name="k3s", manager=manager, unit=UNIT, root=str(root), env_path=env_path,
                env={"K3S_TOKEN": "T0k'en$x", "K3S_URL": "https://10.0.0.1:6443"})
    r = run(tmp_path, diff=True, **args)
    path = root / env_path.lstrip("/")
    assert r["conf_changed"] and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_env_file(path.read_text()) == args["env"] and "export" not in path.read_text()
    assert "T0k" not in json.dumps(r)
    assert not (root / "etc/k0s").exists() and not (root / "etc/conf.d").exists()
    assert not run(tmp_path, **args)["changed"]
    r = run(tmp_path, **{**args, "env": {}})
    assert r["conf_changed"] and not path.exists()
    r = run(tmp_path, expect_fail=True, **{**args, "env_path": "/etc/rancher/../k3s.env"})
    assert "env_path must not contain" in r["msg"]


@pytest.mark.parametrize("args, message", [
    (dict(env={"A": "1\nExecStartPre=/bin/true"}), "k0s_env.A contains the control character \\n"),
    (dict(env={"A\n[Service]": "1"}), "k0s_env: 'A\\n[Service]' is not a variable name"),
    (dict(settings={"k0s_libexec_dir": "/usr/libexec/k0s\n[Service]"}), "k0s_libexec_dir contains"),
    (dict(settings={"k0s_data_dir": "/var/lib/k0s\n"}), "k0s_data_dir contains"),
    (dict(settings={"k0s_config_path": "/etc/k0s/../shadow"}), "k0s_config_path must not contain"),
    (dict(settings={"k0s_extra_args": ["--x\ny"]}), "k0s_extra_args[0] contains"),
    (dict(settings={"k0s_role": "controler"}), "k0s_role is 'controler'"),
    (dict(unit=UNIT + "Environment=A=\rB\n"), "unit contains the control character \\r"),
])
def test_module_refuses_hostile_values_naming_them_and_writes_nothing(tmp_path, root, args, message):
    base = dict(name="k0sworker", manager="systemd", unit=UNIT, root=str(root))
    r = run(tmp_path, expect_fail=True, **{**base, **args})
    assert message in r["msg"], r["msg"]
    assert list(root.rglob("*")) == []


def test_directories_are_0755_whatever_the_umask(tmp_path, root):
    args = dict(name="k0sworker", manager="systemd", unit=UNIT, root=str(root), enabled=True,
                env={"A": "1"})
    old = os.umask(0o077)
    try:
        run(tmp_path, **args)
    finally:
        os.umask(old)
    for d in ("etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/multi-user.target.wants", "etc/k0s"):
        assert stat.S_IMODE((root / d).stat().st_mode) == 0o755, d
