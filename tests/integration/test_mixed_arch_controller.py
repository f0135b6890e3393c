"""Mixed-architecture fleets on the controller (issue 22): roles/split with k0s_executables, real ansible-playbook runs.

Every inventory host is this machine (connection local, so its architecture is this machine's: x86_64 -> amd64) with
its own paths under tmp_path; the executables are the real k0s fixtures. What an amd64 machine can prove on its own:
the refusals of k0s_executables, a host whose architecture has no executable (nothing written on any host), an
executable whose ELF machine is not its key, and the facts each host gets (k0s_splits and its own k0s_split).
Arm64 hosts themselves are the molecule scenario mixed-arch (docs/testing.md).
"""
import json
import platform

import pytest

from testlib import FIXTURES, REPO, local_host_vars, recap, run_playbook, sha256, tree_snapshot

HERE = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())
OTHER = {"amd64": "arm64", "arm64": "amd64"}.get(HERE)
pytestmark = pytest.mark.skipif(HERE != "amd64", reason="the fixtures are amd64 executables; this machine is %s"
                                % platform.machine())

SPLIT_PLAY = """
- hosts: all
  gather_facts: false
  roles:
    - role: fleetsplit.k0s.split
  tasks:
    - name: Record what every host got
      ansible.builtin.copy:
        content: >-
          {{ {'k0s_splits': k0s_splits, 'k0s_split': k0s_split, 'k0s_split_dir': k0s_split_dir,
              'k0s_split_source': k0s_split_source, 'k0s_split_source_sha256': k0s_split_source_sha256,
              'k0s_arch': k0s_arch, 'architecture': ansible_facts.architecture | default(none)} | to_json }}
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
"""


def inventory(tmp_path, controllers=(), workers=()):
    """Local hosts, each with its own store, bin, libexec and data dirs under tmp_path/<host> (none created)."""
    groups = {}
    for group, hosts in (("k0s_controllers", controllers), ("k0s_workers", workers)):
        groups[group] = {"hosts": {}}
        for host in hosts:
            groups[group]["hosts"][host] = local_host_vars(tmp_path / host)
    groups["all"] = {"vars": {"k0s_upgrade_backup": False}}   # the backup first: tests/integration/test_backup_playbook.py
    path = tmp_path / "inv.yml"
    path.write_text(json.dumps(groups))
    return path


def run_split(tmp_path, hosts, extra):
    inv = inventory(tmp_path, workers=hosts)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "split.yml").write_text(SPLIT_PLAY)
    evars = dict(k0s_controller_cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"))
    evars.update(extra)
    return run_playbook(["-i", inv, tmp_path / "split.yml", "-e", json.dumps(evars)], cwd=tmp_path)


def seen(tmp_path, host):
    return json.loads((tmp_path / "out" / ("%s.json" % host)).read_text())


@pytest.mark.parametrize("value,message", [
    ({"x86_64": str(FIXTURES / "k0s-small-zip")}, "unknown keys: x86_64"),
    ({"amd64": ""}, "empty or non-string paths for: amd64"),
    ({"amd64": str(FIXTURES / "k0s-small-zip"), "arm64": 3}, "empty or non-string paths for: arm64"),
])
def test_malformed_executables_are_refused_naming_the_variable(tmp_path, value, message):
    proc, out = run_split(tmp_path, ["w1"], {"k0s_executables": value})
    assert proc.returncode != 0, out
    assert "k0s_executables must map architecture keys (amd64, arm64, arm) to k0s files on the controller" in out, out
    assert message in out, out
    assert not (tmp_path / "cache").exists(), "nothing may be split or downloaded before the refusal"


def test_executables_that_are_not_a_mapping_are_refused(tmp_path):
    proc, out = run_split(tmp_path, ["w1"], {"k0s_executables": [str(FIXTURES / "k0s-small-zip")]})
    assert proc.returncode != 0, out
    assert "k0s_executables" in out and "dict" in out, out
    assert not (tmp_path / "cache").exists()


def test_executables_and_executable_together_are_refused(tmp_path):
    proc, out = run_split(tmp_path, ["w1"], {"k0s_executables": {"amd64": str(FIXTURES / "k0s-small-zip")},
                                             "k0s_executable": str(FIXTURES / "k0s-small-zip")})
    assert proc.returncode != 0, out
    assert "k0s_executable is set too: use one of them" in out, out
    assert not (tmp_path / "cache").exists()


def test_each_host_gets_its_architecture_split_and_the_whole_map(tmp_path, fixture_index):
    exe = FIXTURES / "k0s-small-zip"
    # The other key is configured but no host has it: it is neither split nor checked.
    proc, out = run_split(tmp_path, ["w1", "w2"], {"k0s_executables": {"amd64": str(exe),
                                                                       OTHER: str(FIXTURES / "k0s-small-legacy")}})
    assert proc.returncode == 0, out
    digest = sha256(exe)
    for host in ("w1", "w2"):
        got = seen(tmp_path, host)
        assert got["architecture"] == platform.machine(), "the split role gathered the platform facts"
        assert sorted(got["k0s_splits"]) == ["amd64"]
        entry = got["k0s_splits"]["amd64"]
        assert entry["source"] == str(exe) and entry["source_sha256"] == digest
        assert entry["dir"] == str(tmp_path / "cache" / "split" / digest)
        assert entry["split"]["k0s_version"] == fixture_index["k0s-small-zip"]["version"]
        assert entry["split"]["elf_machine"] == platform.machine()
        assert got["k0s_split"] == entry["split"] and got["k0s_split_dir"] == entry["dir"]
        assert got["k0s_split_source"] == str(exe) and got["k0s_split_source_sha256"] == digest
        assert got["k0s_arch"] == "amd64"
    assert [p.name for p in (tmp_path / "cache" / "split").iterdir()] == [digest]


def test_single_executable_publishes_one_entry_without_facts(tmp_path):
    exe = FIXTURES / "k0s-small-zip"
    proc, out = run_split(tmp_path, ["w1"], {"k0s_executable": str(exe)})
    assert proc.returncode == 0, out
    got = seen(tmp_path, "w1")
    assert got["architecture"] is None, "a single executable needs no facts"
    assert sorted(got["k0s_splits"]) == ["amd64"] and got["k0s_arch"] == "amd64"
    assert got["k0s_splits"]["amd64"]["split"] == got["k0s_split"]
    assert got["k0s_split_source"] == str(exe)


def test_every_key_is_split_in_overlay_mode_and_a_wrong_elf_machine_is_refused(tmp_path):
    """k0s_split_all_arches (overlay play): keys no host has are split too, so each is checked against its ELF."""
    exe = FIXTURES / "k0s-small-zip"
    proc, out = run_split(tmp_path, ["localhost"], {"k0s_executables": {"amd64": str(exe), OTHER: str(exe)},
                                                    "k0s_split_all_arches": True})
    assert proc.returncode != 0, out
    assert "k0s_executables.%s (%s) is built for %s, not %s. Give each architecture a k0s built for it." % (
        OTHER, exe, platform.machine(), OTHER) in out, out
    assert "k0s_executables.amd64" not in out, out
    assert "Record what every host got" not in out, out


def test_a_host_without_an_executable_fails_the_run_before_anything_changes(tmp_path):
    """deploy_k0s with k0s_executables lacking this machine's key: every host named with its machine and key, the
    configured keys named, no host's store created, nothing split."""
    inv = inventory(tmp_path, controllers=["c1"], workers=["w1", "w2"])
    before = {h: tree_snapshot(tmp_path / h) if (tmp_path / h).exists() else None for h in ("c1", "w1", "w2")}
    proc, out = run_playbook(["-i", inv, str(REPO / "playbooks/deploy_k0s.yml"),
                              "-e", json.dumps({"k0s_executables": {OTHER: str(FIXTURES / "k0s-small-zip")},
                                                "k0s_controller_cache_dir": str(tmp_path / "cache")})], cwd=tmp_path)
    assert proc.returncode != 0, out
    m = platform.machine()
    assert ("No k0s executable for the architecture of c1 (%s -> amd64), w1 (%s -> amd64), w2 (%s -> amd64). "
            "k0s_executables has %s: add k0s_executables.<key> for each key above" % (m, m, m, OTHER)) in out, out
    assert "Nothing was changed." in out
    for host in ("c1", "w1", "w2"):
        assert not (tmp_path / host / "store").exists(), host
        assert (tmp_path / host).exists() is False or tree_snapshot(tmp_path / host) == before[host]
        assert recap(out)[host]["changed"] == 0, out
    # run_once: the failure ends the play for every host (counted on the one that ran it).
    assert "TASK [fleetsplit.k0s.install" not in out and "PLAY [Deploy k0s to hosts]" in out, out
    assert not (tmp_path / "cache" / "split").exists(), "nothing split"


TWO_SPLITS_PLAY = """
# Two real splits on the controller, each host taking one (as host_split.yml does from k0s_splits in a mixed
# fleet; both fixtures are amd64 here), then the install role: the query must bundle per split, each with its
# own hosts, so a host receives only its split's streams.
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Split A
      ansible.builtin.include_role:
        name: fleetsplit.k0s.split
      vars:
        k0s_executable: "{{ exe_a }}"
    - name: Keep A
      ansible.builtin.set_fact:
        split_a: "{{ k0s_splits }}"
    - name: Split B
      ansible.builtin.include_role:
        name: fleetsplit.k0s.split
      vars:
        k0s_executable: "{{ exe_b }}"
    - name: Keep B
      ansible.builtin.set_fact:
        split_b: "{{ k0s_splits }}"
- hosts: all:!localhost
  gather_facts: false
  tasks:
    - name: Take this host's split
      vars:
        _entry: "{{ (hostvars['localhost']['split_' ~ which].values() | first) }}"
      ansible.builtin.set_fact:
        k0s_split: "{{ _entry['split'] }}"
        k0s_split_dir: "{{ _entry.dir }}"
    - name: Install
      ansible.builtin.import_role:
        name: fleetsplit.k0s.install
    - name: Record what was sent
      ansible.builtin.copy:
        content: "{{ {'missing': k0s_install_query.missing, 'bundle': __k0s_bundle_args} | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      delegate_to: localhost
      changed_when: false
"""


def test_install_bundles_per_split_each_host_gets_only_its_own(tmp_path, fixture_index):
    a, b = fixture_index["k0s-small-zip"], arm64_fixtures(fixture_index, "k0s-small-zip-v2")[0]
    inv = inventory(tmp_path, workers=["h1", "h2", "h3"])
    doc = json.loads(inv.read_text())
    for host, which in (("h1", "a"), ("h2", "b"), ("h3", "a")):
        doc["k0s_workers"]["hosts"][host]["which"] = which
    inv.write_text(json.dumps(doc))
    (tmp_path / "out").mkdir()
    (tmp_path / "two.yml").write_text(TWO_SPLITS_PLAY)
    evars = dict(exe_a=a["path"], exe_b=b["path"], out_dir=str(tmp_path / "out"),
                 k0s_controller_cache_dir=str(tmp_path / "cache"), k0s_service_managers=["systemd"])

    proc, out = run_playbook(["-i", inv, tmp_path / "two.yml", "-e", json.dumps(evars)], cwd=tmp_path)
    assert proc.returncode == 0, out
    for host, fx in (("h1", a), ("h2", b), ("h3", a)):
        got = seen(tmp_path, host)
        assert set(got["missing"]) == set(fx["binaries"]) | {"k0s"}, host
        # The bundle came from this host's split dir and carries exactly its streams.
        assert got["bundle"]["bundle_src"].startswith(str(tmp_path / "cache" / "split" / sha256(fx["path"]))), host
        assert set(m["name"] for m in got["bundle"]["bundle_members"]) == set(fx["binaries"]) | {"k0s"}, host
        for name, meta in fx["binaries"].items():
            assert sha256(tmp_path / host / "libexec" / name) == meta["sha256"], (host, name)
    assert seen(tmp_path, "h1")["bundle"]["bundle_src"] == seen(tmp_path, "h3")["bundle"]["bundle_src"]

    proc, out = run_playbook(["-i", inv, tmp_path / "two.yml", "-e", json.dumps(evars)], cwd=tmp_path)
    assert proc.returncode == 0, out
    assert all(recap(out)[h]["changed"] == 0 for h in ("h1", "h2", "h3")), out


def arm64_fixtures(index, *ids):
    """Part B's cross-built fixtures (tests/fixtures/build_fixtures.py --set arch)."""
    missing = [i for i in ids if i not in index]
    if missing:
        pytest.skip("fixtures %s not built (build_fixtures.py --set arch)" % ", ".join(missing))
    return [index[i] for i in ids]


def test_overlay_mode_splits_every_architecture(tmp_path, fixture_index):
    amd, arm = fixture_index["k0s-small-zip"], arm64_fixtures(fixture_index, "k0s-small-zip-arm64")[0]
    proc, out = run_split(tmp_path, ["localhost"], {"k0s_executables": {"amd64": amd["path"], "arm64": arm["path"]},
                                                    "k0s_split_all_arches": True})
    assert proc.returncode == 0, out
    got = seen(tmp_path, "localhost")
    assert sorted(got["k0s_splits"]) == ["amd64", "arm64"]
    assert got["k0s_splits"]["amd64"]["split"]["elf_machine"] == "x86_64"
    assert got["k0s_splits"]["arm64"]["split"]["elf_machine"] == "aarch64"
    assert got["k0s_splits"]["arm64"]["source_sha256"] == sha256(arm["path"])
    assert got["k0s_splits"]["arm64"]["dir"] == str(tmp_path / "cache" / "split" / sha256(arm["path"]))
    # localhost (no key of its own in overlay mode) carries the first key's split.
    assert got["k0s_arch"] == "amd64" and got["k0s_split"] == got["k0s_splits"]["amd64"]["split"]
    assert sorted(p.name for p in (tmp_path / "cache" / "split").iterdir()) == sorted(
        [sha256(amd["path"]), sha256(arm["path"])])


def test_keep_one_still_keeps_every_architecture_of_the_run(tmp_path, fixture_index):
    amd, arm = fixture_index["k0s-small-zip"], arm64_fixtures(fixture_index, "k0s-small-zip-arm64")[0]
    proc, out = run_split(tmp_path, ["localhost"], {"k0s_executables": {"amd64": amd["path"], "arm64": arm["path"]},
                                                    "k0s_split_all_arches": True, "k0s_controller_cache_keep": 1})
    assert proc.returncode == 0, out
    assert sorted(p.name for p in (tmp_path / "cache" / "split").iterdir()) == sorted(
        [sha256(amd["path"]), sha256(arm["path"])]), "the second split pruned the first"


def test_executables_of_different_versions_are_refused(tmp_path, fixture_index):
    amd = fixture_index["k0s-small-zip"]
    arm = arm64_fixtures(fixture_index, "k0s-small-zip-v2-arm64")[0]
    assert amd["version"] != arm["version"]
    proc, out = run_split(tmp_path, ["localhost"], {"k0s_executables": {"amd64": amd["path"], "arm64": arm["path"]},
                                                    "k0s_split_all_arches": True})
    assert proc.returncode != 0, out
    assert ("All k0s executables of a run must carry the same k0s version; got amd64: %s (%s), arm64: %s (%s)."
            % (amd["version"], amd["path"], arm["version"], arm["path"])) in out, out
    assert "Record what every host got" not in out, out


def test_a_host_key_given_an_executable_of_another_machine_is_refused(tmp_path, fixture_index):
    arm = arm64_fixtures(fixture_index, "k0s-small-zip-arm64")[0]
    proc, out = run_split(tmp_path, ["w1", "w2"], {"k0s_executables": {"amd64": arm["path"]}})
    assert proc.returncode != 0, out
    assert ("k0s_executables.amd64 (%s) is built for aarch64, not amd64. Give each architecture a k0s built for it."
            % arm["path"]) in out, out
    assert "Record what every host got" not in out, out


def test_single_executable_of_another_machine_stops_every_host_before_install(tmp_path, fixture_index):
    """One k0s_executable (no facts needed) built for arm64 on x86_64 hosts: the install query names every host and
    the play ends for all of them before the first change (any_errors_fatal), not only for the mismatching ones."""
    arm = arm64_fixtures(fixture_index, "k0s-small-zip-arm64")[0]
    inv = inventory(tmp_path, controllers=["c1"], workers=["w1", "w2"])
    proc, out = run_playbook(["-i", inv, str(REPO / "playbooks/deploy_k0s.yml"),
                              "-e", json.dumps({"k0s_executable": arm["path"], "k0s_cluster_bootstrap": False,
                                                "k0s_controller_cache_dir": str(tmp_path / "cache")})], cwd=tmp_path)
    assert proc.returncode != 0, out
    for host in ("c1", "w1", "w2"):
        assert ("%s is %s but the k0s executable is built for aarch64; use a k0s build for %s on this host."
                % (host, platform.machine(), platform.machine())) in out, out
        assert not (tmp_path / host / "store").exists(), host
        assert not (tmp_path / host / "bin").exists(), host
    assert "Upload, build and switch" not in out, out


def test_upgrade_checks_the_hosts_of_the_run_before_any_change(tmp_path):
    """upgrade_k0s: the check play learns each host's architecture and records the run's hosts (after --limit) for
    the localhost split play; a host without an executable stops the run before any host changes."""
    inv = inventory(tmp_path, controllers=["c1"], workers=["w1", "w2"])
    evars = json.dumps({"k0s_executables": {OTHER: str(FIXTURES / "k0s-small-zip")},
                        "k0s_controller_cache_dir": str(tmp_path / "cache")})
    m = platform.machine()
    proc, out = run_playbook(["-i", inv, str(REPO / "playbooks/upgrade_k0s.yml"), "-e", evars], cwd=tmp_path)
    assert proc.returncode != 0, out
    assert "No k0s executable for the architecture of c1 (%s -> amd64), w1 (%s -> amd64), w2 (%s -> amd64)." % (
        m, m, m) in out, out
    assert "PLAY [Upgrade k0s controllers, one at a time]" not in out, out

    proc, out = run_playbook(["-i", inv, str(REPO / "playbooks/upgrade_k0s.yml"), "-e", evars,
                              "--limit", "w1,localhost"], cwd=tmp_path)
    assert proc.returncode != 0, out
    assert "No k0s executable for the architecture of w1 (%s -> amd64). k0s_executables has %s" % (m, OTHER) in out, out
    for host in ("c1", "w1", "w2"):
        assert not (tmp_path / host).exists(), host
    assert not (tmp_path / "cache" / "split").exists()


def test_prepare_k0sctl_hosts_installs_each_host_its_architecture(tmp_path, fixture_index):
    """prepare_k0sctl_hosts with k0s_executables: this host gets the amd64 k0s (the arm64 one, configured for other
    hosts, is not even split), and k0sctl.yaml's spec.k0s.version is the common version it prints."""
    import subprocess

    import yaml
    from test_k0sctl_playbook import _inventory

    amd, arm = fixture_index["k0s-small-zip"], arm64_fixtures(fixture_index, "k0s-small-zip-arm64")[0]
    root = tmp_path / "root"
    for d in ("usr/bin", "usr/libexec", "var/lib"):
        (root / d).mkdir(parents=True)
    evars = {"k0s_executables": {"amd64": amd["path"], "arm64": arm["path"]},
             "k0s_controller_cache_dir": str(tmp_path / "cache"), "k0sctl_install_path": str(root / "usr/bin/k0s"),
             "k0s_libexec_dir": str(root / "usr/libexec/k0s"), "k0s_data_dir": str(root / "var/lib/k0s"),
             "k0s_store_dir": str(root / "var/lib/fleetsplit-k0s"), "k0sctl_config_path": str(tmp_path / "k0sctl.yaml")}
    proc, out = run_playbook(["-i", _inventory(tmp_path, ["node1"]), REPO / "playbooks" / "prepare_k0sctl_hosts.yml",
                              "-e", json.dumps(evars)], cwd=tmp_path)
    assert proc.returncode == 0, out
    printed = subprocess.run([str(root / "usr/bin/k0s"), "version"], capture_output=True, check=True).stdout
    doc = yaml.safe_load((tmp_path / "k0sctl.yaml").read_text())
    assert printed.decode().strip() == doc["spec"]["k0s"]["version"] == amd["version"]
    for name, meta in amd["binaries"].items():
        assert sha256(root / "usr/libexec/k0s" / name) == meta["sha256"], name
    assert [p.name for p in (tmp_path / "cache" / "split").iterdir()] == [sha256(amd["path"])]
