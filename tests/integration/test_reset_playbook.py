"""fleetsplit.k0s.reset_k0s run for real with ansible-playbook: two local hosts (a worker and a controller), each
deployed below its own temporary root by the release store's own code (release_build, as k0s_release does),
with the test k0s (a real k0s-format executable) as the release's k0s, so its `reset` runs for real. The
service files of a live host are the molecule scenario's part (a service manager is needed); here the
confirmation, check mode, keep_config, ordering, idempotence and the empty inventory."""
import json
import os
import shutil
import sys

import pytest

from testlib import REPO, ansible_env, recap, run_playbook, tree_snapshot

sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_reset import ResetHost  # noqa: E402  (the same deployed host as the library's tests)

PLAYBOOK = "fleetsplit.k0s.reset_k0s"


@pytest.fixture
def fleet(tmp_path):
    hosts = {}
    for name in ("w1", "c1"):
        h = ResetHost(tmp_path / name)
        h.deploy()
        # The service files live below / on a live host; this test host has none of its own.
        for rel in ("etc/systemd", "etc/init.d", "etc/conf.d", "etc/runlevels", "etc/k0s/k0sworker.env"):
            p = h.path(rel)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
        hosts[name] = h
    inv = {"all": {"children": {
        "k0s_workers": {"hosts": {"w1": None}}, "k0s_controllers": {"hosts": {"c1": None}}},
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    for name, h in hosts.items():
        inv["all"]["children"]["k0s_workers" if name == "w1" else "k0s_controllers"]["hosts"][name] = dict(
            k0s_bin_dir=h.bin, k0s_libexec_dir=h.libexec, k0s_data_dir=h.data, k0s_store_dir=h.store,
            k0s_config_path=h.config, k0s_join_token_path=h.token, k0s_system_path="/usr/bin:/bin")
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inv))
    return hosts, path, tmp_path


def play(inv, tmp_path, *args):
    # The test k0s's reset removes /run/k0s and /etc/cni leftovers below this root, never this machine's.
    env = ansible_env(FAKE_K0S_RESET_ROOT=str(tmp_path / "sysroot"))
    return run_playbook(["-i", inv, PLAYBOOK] + list(args), env=env)


@pytest.mark.parametrize("confirm", [None, "k0s_reset_confirm=yes", "k0s_reset_confirm=false",
                                     '{"k0s_reset_confirm": "True"}', '{"k0s_reset_confirm": 1}'])
def test_refuses_without_confirmation_and_changes_nothing(fleet, confirm):
    hosts, inv, tmp = fleet
    before = tree_snapshot(tmp)
    proc, out = play(inv, tmp, *(["-e", confirm] if confirm else []))
    assert proc.returncode != 0 and "Refusing to reset" in out and "k0s_reset_confirm to true" in out, out
    assert "Reset the workers" not in out, "no host reaches the reset plays"
    assert tree_snapshot(tmp) == before


def test_check_mode_needs_no_confirmation_shows_the_plan_and_changes_nothing(fleet):
    hosts, inv, tmp = fleet
    before = tree_snapshot(tmp)
    proc, out = play(inv, tmp, "--check", "--diff")
    assert proc.returncode == 0, out
    assert tree_snapshot(tmp) == before
    # The diff: what exists before (the removed paths), what stays after (nothing here).
    assert "-%s/usr/libexec/k0s" % hosts["w1"].root in out and "-%s" % hosts["c1"].token in out, out
    for h in hosts.values():
        assert "%s/current/bin/k0s reset --data-dir=%s --config=%s" % (h.store, h.data, h.config) in out, out
        for p in (os.path.join(h.bin, "k0s"), h.libexec, os.path.join(h.store, "releases"), h.token, h.config):
            assert '"%s"' % p in out, p
    assert recap(out)["w1"]["changed"] == 1 and recap(out)["c1"]["changed"] == 1


def test_confirmed_reset_workers_first_then_unchanged(fleet):
    hosts, inv, tmp = fleet
    with open(os.path.join(hosts["c1"].store, "backups-encrypted.age"), "wb") as f:
        f.write(b"age-encryption.org/v1\n")
    proc, out = play(inv, tmp, "-e", "k0s_reset_confirm=true")
    assert proc.returncode == 0, out
    workers, controllers = out.index("PLAY [Reset the workers]"), out.index("PLAY [Reset the controllers]")
    assert workers < out.index("changed: [w1]") < controllers < out.index("changed: [c1]"), out
    assert "removed %s" % hosts["w1"].data in out and "removed %s" % hosts["c1"].data in out, out
    for name, h in hosts.items():
        for p in (os.path.join(h.bin, "k0s"), h.libexec, h.data, h.token, h.path("etc/k0s")):
            assert not os.path.lexists(p), p
    assert not os.path.lexists(hosts["w1"].store)
    assert os.listdir(hosts["c1"].store) == ["backups-encrypted.age"], "a foreign entry is kept, with the store"
    snap = tree_snapshot(tmp)
    proc, out = play(inv, tmp, "-e", "k0s_reset_confirm=true")
    assert proc.returncode == 0 and all(r["changed"] == 0 for r in recap(out).values()), out
    assert tree_snapshot(tmp) == snap


def test_keep_config(fleet):
    hosts, inv, tmp = fleet
    proc, out = play(inv, tmp, "-e", '{"k0s_reset_confirm": true, "k0s_reset_keep_config": true}')
    assert proc.returncode == 0, out
    for h in hosts.values():
        assert os.listdir(h.path("etc/k0s")) == ["k0s.yaml"] and not os.path.lexists(h.token)
        assert not os.path.lexists(h.libexec) and not os.path.lexists(h.store)


def test_no_inventory_hosts_is_nothing_to_reset(tmp_path):
    before = tree_snapshot(tmp_path)
    proc, out = run_playbook(["-i", REPO / "playbooks/inventory/empty.yml", PLAYBOOK], env=ansible_env())
    assert proc.returncode == 0, out
    assert "Nothing to reset on this machine" in out and "delete that directory" in out, out
    assert tree_snapshot(tmp_path) == before


def test_a_refusal_on_one_host_stops_every_host_before_any_change(fleet):
    hosts, inv, tmp = fleet
    data = json.loads(inv.read_text())
    data["all"]["children"]["k0s_controllers"]["hosts"]["c1"]["k0s_libexec_dir"] = "/usr"
    inv.write_text(json.dumps(data))
    before = tree_snapshot(tmp)
    proc, out = play(inv, tmp, "-e", "k0s_reset_confirm=true")
    assert proc.returncode != 0 and "k0s_libexec_dir=/usr: it is a top-level directory" in out, out
    assert "PLAY [Reset the workers]" not in out and tree_snapshot(tmp) == before, "the worker w1 is untouched too"
