"""Version skew refusals of upgrade_k0s.yml and deploy_k0s.yml (roles/upgrade tasks/skew.yml), real ansible-playbook runs.

Every inventory host is this machine (connection local) with its own release store in tmp_path; each store's
`current` points at a release whose manifest.json records the k0s version, as the install role writes it
(release_build.write_manifest). The target is the k0s-small-zip fixture (v1.36.3+k0s.0), split for real.
Rules: k0sproject/k0s docs/version-skew-policy.md, k0sproject/k0sctl phase/validate_facts.go.
"""
import json
import re

from testlib import FIXTURES, REPO, local_host_vars, recap, run_playbook, tree_snapshot

TARGET = "v1.36.3+k0s.0"


def host_store(tmp_path, host, version):
    store = tmp_path / host / "store"
    if version:
        rid = "%s-0123456789ab" % version
        rel = store / "releases" / rid
        rel.mkdir(parents=True)
        (rel / "manifest.json").write_text(json.dumps({"format": 1, "release_id": rid, "k0s_version": version,
                                                       "pinned_mtime": None, "files": {}}, indent=2))
        (store / "current").symlink_to("releases/" + rid)
    else:
        store.mkdir(parents=True)
    return store


def inventory(tmp_path, controllers, workers):
    """{group: {host: version}} -> inventory file; every host local with paths under tmp_path/<host>."""
    groups = {}
    for group, hosts in (("k0s_controllers", controllers), ("k0s_workers", workers)):
        groups[group] = {"hosts": {}}
        for host, version in hosts.items():
            groups[group]["hosts"][host] = local_host_vars(tmp_path / host, host_store(tmp_path, host, version))
    path = tmp_path / "inv.yml"
    path.write_text(json.dumps(groups))
    return path


def upgrade(tmp_path, inv, *extra):
    return run_playbook(["-i", inv, str(REPO / "playbooks/upgrade_k0s.yml"),
                         "-e", "k0s_executable=%s" % (FIXTURES / "k0s-small-zip"),
                         "-e", "k0s_controller_cache_dir=%s" % (tmp_path / "cache")] + list(extra), cwd=tmp_path)


def skew_only(tmp_path, inv, target, *extra):
    """The role's skew entry point alone (what both playbooks run), for outcomes that would go on to restart k0s."""
    play = tmp_path / "skew.yml"
    play.write_text(json.dumps([{"name": "skew", "hosts": "all", "gather_facts": False,
                                 "vars": {"k0s_split": {"k0s_version": target}},
                                 "tasks": [{"ansible.builtin.import_role": {"name": "fleetsplit.k0s.upgrade",
                                                                            "tasks_from": "skew"}}]}]))
    return run_playbook(["-i", inv, play] + list(extra), cwd=tmp_path)


def snapshot(tmp_path, hosts):
    return {h: tree_snapshot(tmp_path / h) for h in hosts}


def test_upgrade_skipping_a_minor_stops_before_any_host_changes(tmp_path):
    hosts = {"c1": "v1.34.2+k0s.0"}, {"w1": "v1.34.2+k0s.0", "w2": None}
    inv = inventory(tmp_path, *hosts)
    before = snapshot(tmp_path, ["c1", "w1", "w2"])
    proc, out = upgrade(tmp_path, inv)
    assert proc.returncode != 0, out
    for host in ("c1", "w1"):
        assert ("%s runs k0s v1.34.2+k0s.0 and the target %s skips minor version v1.35: k0s upgrades one minor "
                "version at a time. Upgrade to the latest v1.35 patch release first" % (host, TARGET)) in out, out
    assert "w2 runs" not in out, "a fresh host is no skew"
    assert "Stage the target release" not in out, out
    assert snapshot(tmp_path, ["c1", "w1", "w2"]) == before
    assert recap(out)["c1"]["changed"] == 0 and recap(out)["w1"]["changed"] == 0


def test_upgrade_of_workers_alone_asks_the_controllers_outside_the_limit(tmp_path):
    inv = inventory(tmp_path, {"c1": "v1.35.4+k0s.0", "c2": "v1.36.0+k0s.0"}, {"w1": "v1.35.4+k0s.0"})
    before = snapshot(tmp_path, ["c1", "c2", "w1"])
    proc, out = upgrade(tmp_path, inv, "--limit", "w1,localhost")
    assert proc.returncode != 0, out
    assert ("w1 would switch to k0s v1.36.3+k0s.0 (v1.36) but controller c1 runs v1.35.4+k0s.0 (v1.35): a worker "
            "never runs a newer minor version than the controllers. Upgrade c1 first (include it in the run) (or set "
            "k0s_upgrade_allow_version_skew=true to force it).") in out, out
    assert "controller c2" not in out, "c2 already runs v1.36"
    assert "Stage the target release" not in out, out
    assert snapshot(tmp_path, ["c1", "c2", "w1"]) == before


def test_deploy_refuses_a_patch_downgrade_before_installing(tmp_path):
    inv = inventory(tmp_path, {"c1": "v1.36.4+k0s.0"}, {})
    before = snapshot(tmp_path, ["c1"])
    proc, out = run_playbook(["-i", inv, str(REPO / "playbooks/deploy_k0s.yml"),
                              "-e", "k0s_executable=%s" % (FIXTURES / "k0s-small-zip"),
                              "-e", "k0s_controller_cache_dir=%s" % (tmp_path / "cache"),
                              "-e", "k0s_cluster_bootstrap=false"], cwd=tmp_path)
    assert proc.returncode != 0, out
    assert ("c1 runs k0s v1.36.4+k0s.0, newer than the target v1.36.3+k0s.0: that is a downgrade, which k0s does not "
            "support.") in out, out
    assert snapshot(tmp_path, ["c1"]) == before
    # The install query ran first and reported the version: no slurp module run of its own on the host.
    assert re.search(r"Read the k0s version of each host's current release\] \*+\nskipping: \[c1\]", out), out


def test_rollback_is_exempt(tmp_path):
    # k0s_upgrade_rollback=true: no split, no skew check; the upgrade role then rolls back (nothing to go back to
    # here, so it fails later, on the host, not on the version).
    inv = inventory(tmp_path, {"c1": "v1.37.0+k0s.0"}, {})
    proc, out = upgrade(tmp_path, inv, "-e", "k0s_upgrade_rollback=true")
    check_play = out.split("PLAY [Check the version skew before anything changes]")[1].split("PLAY [")[0]
    assert "skipping: [c1]" in check_play and "Read the k0s version" not in check_play, out
    assert "nothing to roll back to" in out, "the run went on to the rollback itself: " + out


def test_forced_skew_warns_and_goes_on_and_a_safe_step_passes(tmp_path):
    inv = inventory(tmp_path, {"c1": "v1.35.4+k0s.0"}, {"w1": "v1.35.4+k0s.0", "w2": None})
    proc, out = skew_only(tmp_path, inv, "v1.37.1+k0s.0", "-e", "k0s_upgrade_allow_version_skew=true")
    assert proc.returncode == 0, out
    assert "k0s_upgrade_allow_version_skew=true, going ahead despite: c1 runs k0s v1.35.4+k0s.0 and the target " \
           "v1.37.1+k0s.0 skips minor version v1.36" in out, out
    proc, out = skew_only(tmp_path, inv, "v1.37.1+k0s.0")
    assert proc.returncode != 0 and "skips minor version v1.36" in out, out
    proc, out = skew_only(tmp_path, inv, TARGET)
    assert proc.returncode == 0, out
    assert "going ahead despite" not in out and recap(out)["w1"]["failed"] == 0, out
