# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""k0s versions (``v1.36.3+k0s.0``, ``v1.36.0-rc.1+k0s.0``): parsing, ordering, and the version skew rules
a rolling upgrade must keep. Standard library only, no Ansible import, Python 3.6 syntax.

The rules follow k0s and k0sctl:
- k0s upgrades one minor version at a time, controllers first, and a kubelet is never newer than the
  control plane; control plane members stay within one minor of each other
  (k0sproject/k0s docs/version-skew-policy.md, "Supported skew" and "Upgrades");
- downgrades are not supported (same file, "Downgrades"); k0sctl refuses to apply a version older than the
  one the leader runs unless ``--disable-downgrade-check`` is given (k0sproject/k0sctl
  phase/validate_facts.go, validateDowngrade), a patch or hotfix downgrade included.
Ordering is semver precedence (pre-release before the release) with the k0s hotfix number (``+k0s.<n>``)
compared last, as k0sctl's version library does."""

import re
from collections import namedtuple

# The variable that turns the refusals below into warnings (roles/upgrade, argument_specs).
FORCE_VAR = "k0s_upgrade_allow_version_skew"

_VERSION = re.compile(r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
                      r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
                      r"\+k0s\.(0|[1-9][0-9]*)\Z")


class VersionError(ValueError):
    pass


class K0sVersion(namedtuple("K0sVersion", "major minor patch pre hotfix text")):
    """One parsed k0s version; compare with key() (namedtuple ordering would compare ``pre`` wrongly)."""

    @property
    def minor_line(self):
        return "v%d.%d" % (self.major, self.minor)

    def key(self):
        # Semver: a release sorts after its pre-releases; numeric identifiers before alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 1 if not self.pre else 0, pre, self.hotfix)

    def __str__(self):
        return self.text


def parse(text):
    """Parse a k0s version; raise VersionError naming the text and the expected form."""
    if not isinstance(text, str) or not _VERSION.match(text):
        raise VersionError("%r is not a k0s version: expected v<major>.<minor>.<patch>[-<pre-release>]+k0s.<n>, "
                           "for example v1.36.3+k0s.0 or v1.36.0-rc.1+k0s.0" % (text,))
    m = _VERSION.match(text)
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    if any(p.isdigit() and len(p) > 1 and p.startswith("0") for p in pre):
        raise VersionError("%r is not a k0s version: numeric pre-release parts have no leading zeros" % (text,))
    return K0sVersion(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, int(m.group(5)), text)


def compare(a, b):
    """-1, 0 or 1 as version a is older than, equal to or newer than b (strings or K0sVersion)."""
    ka = (a if isinstance(a, K0sVersion) else parse(a)).key()
    kb = (b if isinstance(b, K0sVersion) else parse(b)).key()
    return (ka > kb) - (ka < kb)


def _force():
    return " (or set %s=true to force it)" % FORCE_VAR


def step_problem(host, current, target):
    """Why switching host from current to target breaks k0s's rules, or None. Both K0sVersion."""
    if current.key() > target.key():
        return ("%s runs k0s %s, newer than the target %s: that is a downgrade, which k0s does not support. "
                "Choose a target of at least %s, or go back one release with playbooks/rollback_k0s.yml or "
                "rollback_fleet.yml%s." % (host, current, target, current, _force()))
    if target.major != current.major:
        return ("%s runs k0s %s and the target %s is another major version: k0s upgrades one minor version "
                "at a time%s." % (host, current, target, _force()))
    if target.minor > current.minor + 1:
        skipped = ", ".join("v%d.%d" % (current.major, m) for m in range(current.minor + 1, target.minor))
        return ("%s runs k0s %s and the target %s skips minor version %s: k0s upgrades one minor version at a "
                "time. Upgrade to the latest v%d.%d patch release first, then to %s%s."
                % (host, current, target, skipped, current.major, current.minor + 1, target, _force()))
    return None


def skew_problems(target, current, run, controllers, unreadable=None):
    """Every rule an upgrade to ``target`` would break, as messages naming hosts and versions.

    target: the version the run installs (None or "" when the executable carries none).
    current: host -> the k0s version of its current release; None/"" = no release (fresh) or no version
      recorded: nothing to compare, not a skew.
    run: the hosts this run switches to target. controllers: every controller of the cluster, also those
      outside the run (their current version is what workers are checked against).
    unreadable: host -> why its version could not be read (an unreachable controller outside the run).
    """
    unreadable = unreadable or {}
    if not target:
        return ["the target k0s executable carries no k0s version, so the version skew check cannot run: "
                "use an official k0s build%s." % _force()]
    try:
        tgt = parse(target)
    except VersionError as e:
        return ["target: %s" % e]
    problems, parsed = [], {}
    for host in list(run) + [c for c in controllers if c not in run]:
        if host in unreadable:
            problems.append("could not read the k0s version of %s: %s; the version skew check needs it%s."
                            % (host, unreadable[host], _force()))
        elif current.get(host):
            try:
                parsed[host] = parse(current[host])
            except VersionError as e:
                problems.append("%s: %s" % (host, e))
    for host in run:
        if host in parsed:
            problem = step_problem(host, parsed[host], tgt)
            if problem:
                problems.append(problem)
    # A controller of this run is on the target before any worker switches (controllers go first);
    # the others keep what they run now.
    workers = [h for h in run if h not in controllers and (h not in parsed or parsed[h].key() != tgt.key())]
    for ctl in controllers:
        if ctl in run or ctl not in parsed:
            continue
        have = parsed[ctl]
        if workers and (have.major, have.minor) < (tgt.major, tgt.minor):
            problems.append("%s would switch to k0s %s (%s) but controller %s runs %s (%s): a worker never runs a "
                            "newer minor version than the controllers. Upgrade %s first (include it in the run)%s."
                            % (", ".join(workers), tgt, tgt.minor_line, ctl, have, have.minor_line, ctl, _force()))
        if any(h in controllers for h in run) and (tgt.major != have.major or tgt.minor > have.minor + 1):
            problems.append("controller %s runs k0s %s, outside this run: moving the other controllers to %s puts "
                            "the control plane more than one minor version apart. Include %s in the run%s."
                            % (ctl, have, tgt, ctl, _force()))
    return problems
