"""module_utils/k0s_settings: the checks every value reaching a k0s unit, script or environment file passes
(the service role's check entry point, its filter and the k0s_service module share them), and the quoting of
environment files read back by a real /bin/sh and by systemd's EnvironmentFile= rules."""
import subprocess

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_settings
from systemd_syntax import env_file

DEFAULTS = dict(k0s_role="controller", k0s_bin_dir="/usr/bin", k0s_libexec_dir="/usr/libexec/k0s",
                k0s_data_dir="/var/lib/k0s", k0s_config_path="/etc/k0s/k0s.yaml",
                k0s_join_token_path="/etc/k0s/k0stoken", k0s_root="/",
                k0s_system_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                k0s_extra_args=[], k0s_env={}, k0s_openrc_conf={}, k0s_service_managers=[])

TRICKY = ["a b'c\"d$e%f\\g", " lead and trail ", "'", "''", '"', "\\", "$(id)", "`id`", "%n %%", "", "x=y", "ü€"]


def test_defaults_and_legal_values_pass():
    assert k0s_settings.problems(DEFAULTS) == []
    legal = dict(DEFAULTS, k0s_role="controller+worker", k0s_data_dir="/srv/k0s-1.2_x/data@a+b",
                 k0s_extra_args=["two words", "it's", "100%", "$HOME", "back\\slash"],
                 k0s_env={"HTTPS_PROXY": "http://u:p%40ss@proxy:3128", "_X1": 5, "ODD": TRICKY[0]},
                 k0s_root="/srv/image/", k0s_service_managers=["systemd", "openrc"])
    assert k0s_settings.problems(legal) == []


@pytest.mark.parametrize("var, value, part", [
    ("k0s_libexec_dir", "/usr/libexec/k0s\nExecStartPre=/bin/sh -c id", "k0s_libexec_dir contains the control"),
    ("k0s_data_dir", "/var/lib/k0s\n", "k0s_data_dir contains the control character \\n"),
    ("k0s_config_path", "/etc/k0s/k0s.yaml\r", "k0s_config_path contains the control character \\r"),
    ("k0s_bin_dir", "/usr/bin\t", "k0s_bin_dir contains the control character \\t"),
    ("k0s_join_token_path", "/etc/k0s/\x00t", "k0s_join_token_path contains"),
    ("k0s_root", "/srv/img\n", "k0s_root contains"),
    ("k0s_system_path", "/usr/bin\n:/bin", "k0s_system_path contains"),
    ("k0s_extra_args", ["--debug", "--x\n[Service]"], "k0s_extra_args[1] contains the control character \\n"),
    ("k0s_extra_args", "--debug\n--x", "k0s_extra_args contains the control character \\n"),
    ("k0s_env", {"A": "1\n[Service]\nExecStartPre=/bin/touch /pwned"}, "k0s_env.A contains the control character"),
    ("k0s_env", {"A\nExecStartPre": "1"}, "k0s_env: 'A\\nExecStartPre' is not a variable name"),
    ("k0s_env", {"1A": "1"}, "k0s_env: '1A' is not a variable name"),
    ("k0s_env", {"A": {"x": 1}}, "k0s_env.A must be a string"),
    ("k0s_openrc_conf", {"rc_ulimit": "-n 1\nrm -rf /"}, "k0s_openrc_conf.rc_ulimit contains"),
    ("k0s_openrc_conf", {"a-b": "1"}, "k0s_openrc_conf: 'a-b' is not a variable name"),
    ("k0s_role", "controler", "k0s_role is 'controler'"),
    ("k0s_role", "", "k0s_role is ''"),
    ("k0s_libexec_dir", "/usr/../x", "k0s_libexec_dir must not contain '.' or '..'"),
    ("k0s_libexec_dir", "usr/libexec", "k0s_libexec_dir must be an absolute path"),
    ("k0s_libexec_dir", "/usr//libexec", "k0s_libexec_dir must be a normalised path"),
    ("k0s_libexec_dir", "/usr/libexec/", "k0s_libexec_dir must be a normalised path"),
    ("k0s_libexec_dir", "/opt/a:b", "k0s_libexec_dir may only use"),
    ("k0s_data_dir", "/var/lib/k 0s", "k0s_data_dir may only use"),
    ("k0s_data_dir", "/var/%n", "k0s_data_dir may only use"),
    ("k0s_root", "/srv/../etc", "k0s_root must not contain"),
    ("k0s_service_managers", ["systemd", "runit"], "k0s_service_managers: runit not supported"),
])
def test_refusals_name_the_variable(var, value, part):
    got = k0s_settings.problems(dict(DEFAULTS, **{var: value}))
    assert len(got) == 1 and part in got[0], got


K3S = dict(k3s_role="agent", k3s_bin_dir="/usr/local/bin", k3s_data_dir="/var/lib/rancher/k3s",
           k3s_store_dir="/var/lib/fleetsplit-k0s/k3s", k3s_server_url="https://10.0.0.1:6443",
           k3s_extra_args=["--node-label=a=b", "two words"], k3s_env={"K3S_TOKEN": "x'y"},
           k3s_service_managers=["openrc"])


@pytest.mark.parametrize("var, value, part", [
    ("k3s_role", "agnet", "k3s_role is 'agnet': set it to server or agent"),
    ("k3s_role", "", "k3s_role is ''"),
    ("k3s_server_url", "http://10.0.0.1:6443", "k3s_server_url must be an https:// URL"),
    ("k3s_server_url", "https://a b", "k3s_server_url must be an https:// URL"),
    ("k3s_server_url", "https://", "k3s_server_url must be an https:// URL"),
    ("k3s_server_url", "", "k3s_server_url is empty: an agent needs"),
    ("k3s_server_url", "https://x\n", "k3s_server_url contains the control character"),
    ("k3s_bin_dir", "/usr/local/bin\nExecStartPre=/bin/id", "k3s_bin_dir contains the control character"),
    ("k3s_data_dir", "/var/lib/rancher/../k3s", "k3s_data_dir must not contain"),
    ("k3s_store_dir", "var/lib/x", "k3s_store_dir must be an absolute path"),
    ("k3s_extra_args", ["--a", "--b\n[Service]"], "k3s_extra_args[1] contains the control character"),
    ("k3s_extra_args", {"a": 1}, "k3s_extra_args must be a list of strings or one string"),
    ("k3s_env", {"K3S_TOKEN": "se\ncret"}, "k3s_env.K3S_TOKEN contains the control character"),
    ("k3s_service_managers", ["runit"], "k3s_service_managers: runit not supported"),
])
def test_k3s_refusals_name_the_variable(var, value, part):
    assert k0s_settings.problems(K3S) == []
    assert k0s_settings.problems(dict(K3S, k3s_role="server", k3s_server_url="")) == [], "a server needs no URL"
    got = k0s_settings.problems(dict(K3S, **{var: value}))
    assert len(got) == 1 and part in got[0], got
    assert "se\ncret" not in got[0]


def test_env_messages_never_repeat_the_value():
    secret = "hunter2-\n-secret"
    got = k0s_settings.problems(dict(DEFAULTS, k0s_env={"PROXY_PASSWORD": secret}))
    assert got and "hunter2" not in " ".join(got)


@pytest.mark.parametrize("value", TRICKY)
def test_env_file_reads_back_exactly_in_sh_and_systemd(tmp_path, value):
    env = {"V": value, "W": "plain"}
    path = tmp_path / "env"
    path.write_text(k0s_settings.env_file(env, export=True))
    out = subprocess.run(["sh", "-c", '. "$1"; printf "%s\\0" "$V" "$W"; sh -c \'printf "%s" "$V"\'', "sh",
                          str(path)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.split("\0") == [value, "plain", value], "exported to children too"
    # systemd's reader (no "export" line there: systemd would take "export V W" for a key)
    assert env_file(k0s_settings.env_file(env)) == {"V": value, "W": "plain"}
