"""k0s_versions: parsing and ordering k0s versions, and the version skew refusals of upgrade_k0s/deploy_k0s
(rules: k0sproject/k0s docs/version-skew-policy.md; k0sctl phase/validate_facts.go validateDowngrade)."""
import base64
import json

import pytest

from ansible_collections.fleetsplit.k0s.plugins.filter.k0s_version import k0s_version_skew
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_versions as kv

FORCE = " (or set k0s_upgrade_allow_version_skew=true to force it)."


def test_parse_release_and_rc():
    v = kv.parse("v1.36.3+k0s.0")
    assert (v.major, v.minor, v.patch, v.pre, v.hotfix) == (1, 36, 3, (), 0)
    rc = kv.parse("v1.36.0-rc.1+k0s.2")
    assert (rc.pre, rc.hotfix, rc.minor_line, str(rc)) == (("rc", "1"), 2, "v1.36", "v1.36.0-rc.1+k0s.2")


@pytest.mark.parametrize("text", ["1.36.3+k0s.0", "v1.36.3", "v1.36+k0s.0", "v1.36.3+k0s.", "v01.36.3+k0s.0",
                                  "v1.36.3-rc.01+k0s.0", "v1.36.3+k0s.0 ", "v1.36.3-+k0s.0", "", None, 136])
def test_malformed_versions_are_refused_with_the_expected_form(text):
    with pytest.raises(kv.VersionError) as e:
        kv.parse(text)
    assert repr(text) in str(e.value)
    assert "v<major>.<minor>.<patch>" in str(e.value) or "leading zeros" in str(e.value)


@pytest.mark.parametrize("older,newer", [
    ("v1.35.9+k0s.0", "v1.36.0+k0s.0"),
    ("v1.36.2+k0s.0", "v1.36.3+k0s.0"),
    ("v1.36.3+k0s.0", "v1.36.3+k0s.1"),          # k0s hotfix
    ("v1.36.0-rc.1+k0s.0", "v1.36.0+k0s.0"),     # pre-release before the release
    ("v1.36.0-rc.1+k0s.0", "v1.36.0-rc.2+k0s.0"),
    ("v1.36.0-rc.9+k0s.0", "v1.36.0-rc.10+k0s.0"),  # numeric, not text, order
    ("v1.36.0-beta.1+k0s.0", "v1.36.0-rc.1+k0s.0"),
    ("v1.36.0-rc+k0s.0", "v1.36.0-rc.1+k0s.0"),  # fewer identifiers first
    ("v1.9.0+k0s.0", "v1.10.0+k0s.0"),
])
def test_ordering(older, newer):
    assert kv.compare(older, newer) == -1
    assert kv.compare(newer, older) == 1
    assert kv.compare(newer, newer) == 0


def run_check(target, current, run, controllers, unreadable=None):
    return kv.skew_problems(target, current, run, controllers, unreadable)


def test_one_minor_step_patch_upgrades_and_fresh_hosts_pass():
    cur = {"c1": "v1.35.4+k0s.0", "w1": "v1.35.4+k0s.0", "w2": None, "w3": "v1.36.1+k0s.0"}
    assert run_check("v1.36.3+k0s.0", cur, ["c1", "w1", "w2", "w3"], ["c1"]) == []
    assert run_check("v1.36.0-rc.1+k0s.0", {"c1": "v1.35.4+k0s.0"}, ["c1"], ["c1"]) == []


def test_skipping_a_minor_is_refused_with_both_versions_and_the_way_out():
    p = run_check("v1.36.3+k0s.0", {"c1": "v1.34.2+k0s.0"}, ["c1"], ["c1"])
    assert p == ["c1 runs k0s v1.34.2+k0s.0 and the target v1.36.3+k0s.0 skips minor version v1.35: k0s upgrades "
                 "one minor version at a time. Upgrade to the latest v1.35 patch release first, then to "
                 "v1.36.3+k0s.0" + FORCE]
    p = run_check("v1.37.0+k0s.0", {"w9": "v1.34.2+k0s.0"}, ["w9"], [])
    assert "skips minor version v1.35, v1.36:" in p[0]
    p = run_check("v2.0.0+k0s.0", {"w9": "v1.36.2+k0s.0"}, ["w9"], [])
    assert p == ["w9 runs k0s v1.36.2+k0s.0 and the target v2.0.0+k0s.0 is another major version: k0s upgrades "
                 "one minor version at a time" + FORCE]


@pytest.mark.parametrize("have", ["v1.36.4+k0s.0", "v1.36.3+k0s.1", "v1.37.0-rc.1+k0s.0", "v1.36.3-rc.1+k0s.0x"])
def test_downgrades_are_refused_patch_and_hotfix_too(have):
    p = run_check("v1.36.3+k0s.0", {"w1": have}, ["w1"], [])
    if have.endswith("x"):
        assert p == ["w1: %r is not a k0s version: expected v<major>.<minor>.<patch>[-<pre-release>]+k0s.<n>, "
                     "for example v1.36.3+k0s.0 or v1.36.0-rc.1+k0s.0" % have]
        return
    assert p == ["w1 runs k0s %s, newer than the target v1.36.3+k0s.0: that is a downgrade, which k0s does not "
                 "support. Choose a target of at least %s, or go back one release with playbooks/rollback_k0s.yml "
                 "or rollback_fleet.yml" % (have, have) + FORCE]


def test_a_worker_never_gets_ahead_of_a_controller_outside_the_run():
    cur = {"c1": "v1.35.4+k0s.0", "c2": "v1.35.4+k0s.0", "w1": "v1.35.4+k0s.0", "w2": None}
    # --limit w1,w2: the controllers are not upgraded by this run
    p = run_check("v1.36.3+k0s.0", cur, ["w1", "w2"], ["c1", "c2"])
    assert p == ["w1, w2 would switch to k0s v1.36.3+k0s.0 (v1.36) but controller %s runs v1.35.4+k0s.0 (v1.35): "
                 "a worker never runs a newer minor version than the controllers. Upgrade %s first (include it in "
                 "the run)" % (c, c) + FORCE for c in ("c1", "c2")]
    # c1 in the run goes first; c2 outside still holds the workers back
    p = run_check("v1.36.3+k0s.0", cur, ["c1", "w1"], ["c1", "c2"])
    assert len(p) == 1 and p[0].startswith("w1 would switch to k0s v1.36.3+k0s.0 (v1.36) but controller c2 runs")
    # a controller already on the target minor (a newer patch too) is fine, so is a worker already on the target
    cur.update(c2="v1.36.1+k0s.0")
    assert run_check("v1.36.3+k0s.0", cur, ["c1", "w1"], ["c1", "c2"]) == []
    assert run_check("v1.36.3+k0s.0", {"c1": "v1.35.4+k0s.0", "w1": "v1.36.3+k0s.0"}, ["w1"], ["c1"]) == []
    # a controller outside the run with no release (not installed yet) holds nothing back
    assert run_check("v1.36.3+k0s.0", {"c1": None, "w1": "v1.35.4+k0s.0"}, ["w1"], ["c1"]) == []


def test_controllers_stay_within_one_minor_of_each_other():
    cur = {"c1": "v1.35.4+k0s.0", "c2": "v1.34.9+k0s.0"}
    p = run_check("v1.36.3+k0s.0", cur, ["c1"], ["c1", "c2"])
    assert p == ["controller c2 runs k0s v1.34.9+k0s.0, outside this run: moving the other controllers to "
                 "v1.36.3+k0s.0 puts the control plane more than one minor version apart. Include c2 in the run"
                 + FORCE]


def test_unknown_target_and_unreadable_controller():
    assert run_check(None, {}, ["w1"], []) == [
        "the target k0s executable carries no k0s version, so the version skew check cannot run: use an official "
        "k0s build" + FORCE]
    assert run_check("1.36", {}, ["w1"], [])[0].startswith("target: '1.36' is not a k0s version")
    p = run_check("v1.36.3+k0s.0", {}, ["w1"], ["c1"], {"c1": "unreachable (ssh: timeout)"})
    assert p == ["could not read the k0s version of c1: unreachable (ssh: timeout); the version skew check needs it"
                 + FORCE]


def slurped(version):
    doc = {"format": 1, "release_id": "r", "k0s_version": version, "files": {}}
    return {"content": base64.b64encode(json.dumps(doc).encode()).decode(), "encoding": "base64"}


def test_filter_reads_slurped_manifests():
    reads = {"c1": slurped("v1.34.1+k0s.0"), "w1": {"failed": False, "msg": "File not found: /x/current/manifest.json"},
             "c2": {"unreachable": True, "msg": "Failed to connect"}, "w2": slurped(None),
             "w3": {"content": base64.b64encode(b"{not json").decode()}}
    p = k0s_version_skew("v1.35.0+k0s.0", reads, ["c1", "w1", "w2", "w3"], ["c1", "c2"])
    assert p[0].startswith("could not read the k0s version of w3: its current release's manifest.json is not JSON")
    assert p[1] == ("could not read the k0s version of c2: unreachable (Failed to connect); the version skew check "
                    "needs it" + FORCE)
    assert len(p) == 2, p   # c1 1.34 -> 1.35 is one step; w1 fresh; w2 records no version
    assert k0s_version_skew("v1.36.0+k0s.0", {"c1": slurped("v1.34.1+k0s.0")}, ["c1"], ["c1"])[0].startswith(
        "c1 runs k0s v1.34.1+k0s.0 and the target v1.36.0+k0s.0 skips minor version v1.35")


def test_filter_reads_the_install_querys_versions():
    """deploy_k0s takes the versions from k0s_release's query (k0s_install_current) instead of slurping again."""
    def query(release, version, readable=True):
        return {"query": {"current_release": release, "current_k0s_version": version,
                          "current_manifest_readable": readable if release else None}}
    reads = {"c1": query("v1.34.1+k0s.0-0123", "v1.34.1+k0s.0"), "w1": query(None, None),
             "w2": query("r-without-version", None), "w3": query("r-broken", None, readable=False)}
    p = k0s_version_skew("v1.35.0+k0s.0", reads, ["c1", "w1", "w2", "w3"], ["c1"])
    assert p == ["could not read the k0s version of w3: its current release's manifest.json could not be read; the "
                 "version skew check needs it" + FORCE], p
    assert k0s_version_skew("v1.36.0+k0s.0", {"c1": reads["c1"]}, ["c1"], ["c1"])[0].startswith(
        "c1 runs k0s v1.34.1+k0s.0 and the target v1.36.0+k0s.0 skips minor version v1.35")
