"""backup_k0s, restore_k0s and upgrade_k0s's backup first, with ansible-playbook for real (docs/backup.md).

The controller host is this machine (connection local) with its paths under tmp_path: the test k0s (the
k0s-small-zip fixture, whose `backup`/`restore` follow k0s's cmd/backup and cmd/restore) runs `k0s controller` on
loopback, the real `age` encrypts, the controller-side module records and decrypts. Restores that get past the
controller's checks stop and start a service, which only the molecule scenario `backup` does (on a real host); here
the refusals that come before the host is touched."""
import hashlib
import json
import os
import shutil
import stat
import tarfile

import pytest

from testlib import FIXTURES, FakeController, ansible_env, local_host_vars, run_playbook, tree_snapshot
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_age
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_backup as kb

pytestmark = [pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed "
                                 "(scripts/prepare-test-hosts installs it)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="k0s backup runs as root only (as real k0s)")]


class Lab:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.base = tmp_path / "c1"
        self.hv = local_host_vars(self.base)
        self.exe = self.base / "bin" / "k0s"
        self.exe.parent.mkdir(parents=True)
        shutil.copy(str(FIXTURES / "k0s-small-zip"), str(self.exe))
        config = self.base / "etc" / "k0s.yaml"
        config.parent.mkdir(parents=True)
        config.write_text("apiVersion: k0s.k0sproject.io/v1beta1\nkind: ClusterConfig\n")
        self.store = tmp_path / "backups"
        # The host's temporary directories go here, not /var/tmp: another pytest run on the machine (test-unit and
        # test-compat side by side) backs up there too and its directory would count as this test's leftover.
        self.host_tmp = tmp_path / "host-tmp"
        self.host_tmp.mkdir(mode=0o700)
        self.identity, self.recipient = k0s_age.generate_identity()
        self.identity_file = tmp_path / "identity"
        self.identity_file.write_text(self.identity + "\n")
        self.identity_file.chmod(0o600)
        self.ctl = FakeController(str(self.exe), self.base / "data")
        self.inv = tmp_path / "inv.yml"
        self.inv.write_text(json.dumps({"k0s_controllers": {"hosts": {"c1": self.hv}},
                                        "all": {"vars": {"k0s_backup_dir": str(self.store),
                                                         "k0s_backup_host_tmp_dir": str(self.host_tmp)}}}))

    def run(self, playbook, *extra, recipients=True):
        evars = {"k0s_backup_recipients": [self.recipient]} if recipients else {}
        env = ansible_env(FAKE_K0S_STATUS_FILE=self.ctl.env["FAKE_K0S_STATUS_FILE"])
        return run_playbook(["-i", self.inv, "playbooks/%s.yml" % playbook, "-e", json.dumps(evars)] + list(extra),
                            env=env)


@pytest.fixture(name="lab")
def fixture_lab(tmp_path):
    lab = Lab(tmp_path)
    with lab.ctl:
        yield lab


def host_leftovers(lab):
    return sorted(p for p in os.listdir(str(lab.host_tmp)) if p.endswith((".k0s-backup", ".k0s-restore")))


def test_backup_encrypted_recorded_and_retained(lab):
    before = host_leftovers(lab)
    for _attempt in range(3):
        proc, out = lab.run("backup_k0s", "-e", "k0s_backup_keep=2")
        assert proc.returncode == 0, out
        assert "c1: backup k0s-backup-" in out
    assert host_leftovers(lab) == before
    index = kb.load_index(str(lab.store))
    assert len(index) == 2 and all(e["host"] == "c1" and e["k0s_version"] == "v1.36.3+k0s.0" for e in index)
    assert stat.S_IMODE(lab.store.stat().st_mode) == 0o700
    names = sorted(os.listdir(lab.store))
    assert names == sorted([kb.INCOMING, kb.INDEX] + [e["name"] for e in index] + [e["name"] + ".sha256" for e in index])
    for name in names:
        if name != kb.INCOMING:
            assert stat.S_IMODE((lab.store / name).stat().st_mode) == 0o600
    raw = (lab.store / index[-1]["name"]).read_bytes()
    assert raw.startswith(k0s_age.INTRO) and hashlib.sha256(raw).hexdigest() == index[-1]["sha256"]
    out_dir = lab.tmp / "plain"
    out_dir.mkdir(mode=0o700)
    plain = kb.decrypt_to(str(lab.store), index[-1], str(lab.identity_file), str(out_dir))
    with tarfile.open(plain) as tar:
        ca = tar.extractfile("pki/ca.crt").read()
        assert tar.extractfile("k0s.yaml").read() == (lab.base / "etc" / "k0s.yaml").read_bytes()
    assert ca == (lab.base / "data" / "pki" / "ca.crt").read_bytes()
    assert lab.recipient not in (lab.store / kb.INDEX).read_text()


def test_check_mode_writes_nothing(lab):
    before = host_leftovers(lab)
    proc, out = lab.run("backup_k0s", "--check")
    assert proc.returncode == 0, out
    assert "c1: would back up k0s v1.36.3+k0s.0" in out
    assert not lab.store.exists() and host_leftovers(lab) == before


@pytest.mark.parametrize("case", ["no-recipient", "bad-recipient", "no-age", "no-config"])
def test_backup_refusals_before_any_write(lab, case):
    extra, kw = [], {}
    if case == "no-recipient":
        kw, expect = {"recipients": False}, "k0s_backup_recipients is empty"
    elif case == "bad-recipient":
        extra, expect = ["-e", json.dumps({"k0s_backup_recipients": ["age1nope"]})], "is not an age X25519 recipient"
    elif case == "no-age":
        extra, expect = ["-e", "k0s_backup_age=/nonexistent/age"], "(Debian, Ubuntu, Alpine) or set k0s_backup_age"
    else:
        (lab.base / "etc" / "k0s.yaml").unlink()
        expect = "archives the config file"
    data = tree_snapshot(lab.base / "data")
    proc, out = lab.run("backup_k0s", *extra, **kw)
    assert proc.returncode == 2 and expect in " ".join(out.split()), out
    assert tree_snapshot(lab.base / "data") == data
    assert not list(lab.store.glob("*.age"))
    if case in ("no-recipient", "bad-recipient"):
        assert not lab.store.exists()


def test_backup_needs_a_running_controller(tmp_path):
    lab = Lab(tmp_path)
    proc, out = lab.run("backup_k0s")
    assert proc.returncode == 2 and "runs k0s as a controller" in " ".join(out.split()), out


def test_upgrade_refuses_without_recipients_before_the_split(lab):
    cache = lab.tmp / "cache"
    proc, out = lab.run("upgrade_k0s", "-e", "k0s_executable=%s" % (FIXTURES / "k0s-small-zip-v2"),
                        "-e", "k0s_controller_cache_dir=%s" % cache, recipients=False)
    text = " ".join(out.split())
    assert proc.returncode == 2 and "k0s_backup_recipients is empty" in text and "k0s_upgrade_backup=false" in text, out
    assert not cache.exists()


def test_restore_refuses_before_touching_the_host(lab):
    proc, out = lab.run("backup_k0s")
    assert proc.returncode == 0, out
    entry = kb.load_index(str(lab.store))[-1]
    path = lab.store / entry["name"]
    pristine = path.read_bytes()
    data = tree_snapshot(lab.base / "data")
    ident = ["-e", "k0s_backup_identity_file=%s" % lab.identity_file]

    proc, out = lab.run("restore_k0s", recipients=False)
    assert proc.returncode == 2 and "k0s_backup_identity_file is empty" in " ".join(out.split()), out

    # No release of the backup's version in the host's store.
    proc, out = lab.run("restore_k0s", *ident, recipients=False)
    assert proc.returncode == 2 and "has no release of that version" in " ".join(out.split()), out

    flipped = bytearray(pristine)
    flipped[len(flipped) // 2] ^= 1
    path.write_bytes(bytes(flipped))
    proc, out = lab.run("restore_k0s", *ident, recipients=False)
    assert proc.returncode == 2 and "the backup was changed; refusing to restore it" in " ".join(out.split()), out

    path.write_bytes(pristine[:-10])
    proc, out = lab.run("restore_k0s", *ident, recipients=False)
    assert proc.returncode == 2 and "is truncated" in out, out
    assert tree_snapshot(lab.base / "data") == data
    assert not [p for p in host_leftovers(lab) if p.endswith(".k0s-restore")]
