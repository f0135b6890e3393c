"""Encrypted backups (docs/backup.md): the age format of k0s_age against the real age CLI (keys generated in the test
by age-keygen and by the library), tampering (a flipped byte, a wrong key, a truncated file: each its own error, no
plaintext left), the controller's store (names, modes, index, .sha256, retention), and the test k0s's `backup` and
`restore` (k0s cmd/backup/backup_unix.go, cmd/restore/restore_unix.go, pkg/backup/*: the bytes round-trip)."""
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess

import pytest

from testlib import FakeController, load_fixtures
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_age
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_backup as kb

AGE = shutil.which("age")
needs_age = pytest.mark.skipif(AGE is None, reason="the age CLI is not installed (scripts/prepare-test-hosts installs it)")
SIZES = (0, 1, k0s_age.CHUNK - 1, k0s_age.CHUNK, k0s_age.CHUNK + 1, 3 * k0s_age.CHUNK + 777)


def keygen(tmp_path, name="key"):
    """(identity file, recipient) from the real age-keygen."""
    path = tmp_path / name
    out = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    recipient = out.stderr.strip().split()[-1]
    assert recipient.startswith("age1")
    return path, recipient


def age_encrypt(data, recipients, tmp_path):
    src = tmp_path / "plain.bin"
    src.write_bytes(data)
    dst = tmp_path / "enc.age"
    subprocess.run([AGE] + [a for r in recipients for a in ("-r", r)] + ["-o", str(dst), str(src)], check=True)
    return dst.read_bytes()


def lib_encrypt(data, recipients):
    out = io.BytesIO()
    k0s_age.encrypt(io.BytesIO(data), out, recipients)
    return out.getvalue()


# ---------------------------------------------------------------- the format
@needs_age
@pytest.mark.parametrize("size", SIZES)
def test_decrypts_what_age_encrypts(tmp_path, size):
    ident, rec = keygen(tmp_path)
    _other_ident, other = keygen(tmp_path, "other")
    data = os.urandom(size)
    enc = age_encrypt(data, [other, rec], tmp_path)
    assert enc.startswith(k0s_age.INTRO)
    assert k0s_age.decrypt_bytes(enc, k0s_age.parse_identities(ident.read_text())) == data


@needs_age
@pytest.mark.parametrize("size", (0, k0s_age.CHUNK, 2 * k0s_age.CHUNK + 5))
def test_age_decrypts_what_the_library_encrypts(tmp_path, size):
    ident, rec = keygen(tmp_path)
    data = os.urandom(size)
    (tmp_path / "x.age").write_bytes(lib_encrypt(data, [rec]))
    out = subprocess.run([AGE, "-d", "-i", str(ident), str(tmp_path / "x.age")], capture_output=True, check=True)
    assert out.stdout == data


def test_library_keys_round_trip():
    ident, rec = k0s_age.generate_identity()
    assert k0s_age.RECIPIENT_RE.match(rec) and k0s_age.SECRET_RE.match(ident)
    data = os.urandom(100000)
    assert k0s_age.decrypt_bytes(lib_encrypt(data, [rec]), k0s_age.parse_identities(ident)) == data


@pytest.mark.parametrize("bad", ["", "age1", "AGE1QQQ", "age1" + "b" * 58, "ssh-ed25519 AAAA", "age1" + "q" * 57 + "\n"])
def test_bad_recipients_refused(bad):
    with pytest.raises(k0s_age.KeyFormatError):
        k0s_age.parse_recipient(bad)


def test_identity_file_errors_never_quote_the_secret():
    ident, _rec = k0s_age.generate_identity()
    with pytest.raises(k0s_age.KeyFormatError) as err:
        k0s_age.parse_identities("# key\n" + ident[:-1] + "\n")
    assert ident[:-1] not in str(err.value) and "line 2" in str(err.value)
    with pytest.raises(k0s_age.KeyFormatError, match="holds no age identity"):
        k0s_age.parse_identities("# nothing\n")


@pytest.fixture(name="sealed")
def fixture_sealed(tmp_path):
    """(encrypted bytes of 3 chunks and a bit, plaintext, identities), by the real age when installed."""
    data = os.urandom(3 * k0s_age.CHUNK + 100)
    if AGE:
        ident, rec = keygen(tmp_path)
        return age_encrypt(data, [rec], tmp_path), data, k0s_age.parse_identities(ident.read_text())
    ident, rec = k0s_age.generate_identity()
    return lib_encrypt(data, [rec]), data, k0s_age.parse_identities(ident)


def flip(data, offset):
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def test_flipped_payload_byte_is_a_tag_mismatch(sealed):
    enc, _data, keys = sealed
    header_end = enc.index(b"\n---") + 1
    header_end = enc.index(b"\n", header_end) + 1
    for offset in (header_end + 16 + 3, header_end + 16 + k0s_age.CHUNK + 16 + 9, len(enc) - 1):
        with pytest.raises(k0s_age.TamperedError, match="authentication tag mismatch in payload chunk"):
            k0s_age.decrypt_bytes(flip(enc, offset), keys)


def test_flipped_header_byte_is_refused(sealed):
    enc, _data, keys = sealed
    mac_at = enc.index(b"\n--- ") + 6
    with pytest.raises(k0s_age.TamperedError, match="MAC"):
        k0s_age.decrypt_bytes(enc[:mac_at] + (b"A" if enc[mac_at:mac_at + 1] != b"A" else b"B") + enc[mac_at + 1:], keys)
    nonce_at = enc.index(b"\n---")
    nonce_at = enc.index(b"\n", nonce_at + 1) + 2
    with pytest.raises(k0s_age.TamperedError):
        k0s_age.decrypt_bytes(flip(enc, nonce_at), keys)


def test_wrong_key_is_its_own_error(sealed):
    enc, _data, _keys = sealed
    other, _rec = k0s_age.generate_identity()
    with pytest.raises(k0s_age.WrongIdentityError, match="none of the identities"):
        k0s_age.decrypt_bytes(enc, k0s_age.parse_identities(other))


def test_truncated_file_is_refused(sealed):
    enc, _data, keys = sealed
    # At chunk boundaries (the last chunk holds 100 bytes + tag): what is left authenticates, but is not the end.
    for cut in (len(enc) - 116, len(enc) - 116 - (k0s_age.CHUNK + 16)):
        with pytest.raises(k0s_age.TruncatedError, match="truncated"):
            k0s_age.decrypt_bytes(enc[:cut], keys)
    with pytest.raises(k0s_age.TruncatedError, match="header"):
        k0s_age.decrypt_bytes(enc[:40], keys)
    with pytest.raises(k0s_age.AgeError):
        k0s_age.decrypt_bytes(enc[:-1], keys)


def test_not_age_is_refused():
    with pytest.raises(k0s_age.NotAgeError, match="not an age file"):
        k0s_age.decrypt_bytes(b"\x1f\x8b\x08\x00plain gzip", [bytes(32)])


# ---------------------------------------------------------------- the store
@pytest.fixture(name="store")
def fixture_store(tmp_path):
    ident, rec = k0s_age.generate_identity()
    key = tmp_path / "identity.txt"
    key.write_text("# test\n" + ident + "\n")
    key.chmod(0o600)
    store = tmp_path / "backups"
    assert kb.ensure_store(str(store)) is True
    assert kb.ensure_store(str(store)) is False
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    return store, rec, key


def put(store, rec, data, host="fs-backup-1", minute=0, keep=5, version="v1.36.3+k0s.0"):
    import datetime
    incoming = store / kb.INCOMING / ("%s.age" % host)
    incoming.write_bytes(lib_encrypt(data, [rec]))
    sha = hashlib.sha256(incoming.read_bytes()).hexdigest()
    when = datetime.datetime(2026, 11, 27, 16, minute, 0, tzinfo=datetime.timezone.utc)
    return kb.record(str(store), str(incoming), host, version, sha, kb.check_recipients([rec]), keep, now=when)


def test_record_names_modes_index(store):
    store, rec, _key = store
    entry, removed = put(store, rec, b"archive bytes")
    assert removed == []
    path = store / entry["name"]
    assert kb.NAME_RE.match(entry["name"]) and entry["name"].startswith("k0s-backup-20261127T160000Z-fs-backup-1-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((store / kb.INDEX).stat().st_mode) == 0o600
    assert (store / (entry["name"] + ".sha256")).read_text() == "%s  %s\n" % (entry["sha256"], entry["name"])
    index = json.loads((store / kb.INDEX).read_text())
    assert index["backups"] == [entry]
    assert entry["size"] == path.stat().st_size and entry["k0s_version"] == "v1.36.3+k0s.0"
    assert entry["recipients"] == [k0s_age.recipient_fingerprint(rec)] and rec not in (store / kb.INDEX).read_text()
    assert os.listdir(store / kb.INCOMING) == []


def test_record_refuses_damaged_copy_and_plaintext(store):
    store, rec, _key = store
    incoming = store / kb.INCOMING / "h.age"
    incoming.write_bytes(lib_encrypt(b"x", [rec]))
    with pytest.raises(kb.BackupIntegrityError, match="differs from the host's"):
        kb.record(str(store), str(incoming), "h", "v1.36.3+k0s.0", "0" * 64, [], 5)
    incoming.write_bytes(b"plain tar.gz")
    with pytest.raises(kb.BackupError, match="not age-encrypted"):
        kb.record(str(store), str(incoming), "h", "v1.36.3+k0s.0", hashlib.sha256(b"plain tar.gz").hexdigest(), [], 5)
    with pytest.raises(kb.BackupError, match="cannot name a backup file"):
        kb.backup_name(__import__("datetime").datetime.now(), "../x", "0" * 64)
    assert not (store / kb.INDEX).exists()


def test_retention_keeps_the_newest_and_foreign_files(store):
    store, rec, _key = store
    (store / "my-notes.txt").write_text("mine")
    names = [put(store, rec, b"n%d" % i, minute=i, keep=3)[0]["name"] for i in range(5)]
    index = kb.load_index(str(store))
    assert [e["name"] for e in index] == names[2:]
    for gone in names[:2]:
        assert not (store / gone).exists() and not (store / (gone + ".sha256")).exists()
    assert (store / "my-notes.txt").read_text() == "mine"
    assert sorted(os.listdir(store)) == sorted([kb.INCOMING, kb.INDEX, "my-notes.txt"] + names[2:]
                                               + [n + ".sha256" for n in names[2:]])


def test_select_latest_name_and_paths(store):
    store, rec, _key = store
    with pytest.raises(kb.BackupError, match="has no backups"):
        kb.select(str(store), "latest")
    first = put(store, rec, b"a", minute=1)[0]
    second = put(store, rec, b"b", minute=2)[0]
    assert kb.select(str(store), "latest") == second
    assert kb.select(str(store), first["name"]) == first
    for bad in ("../" + first["name"], "/etc/passwd", "nope"):
        with pytest.raises(kb.BackupError):
            kb.select(str(store), bad)


def test_decrypt_to_round_trip(store, tmp_path):
    store, rec, key = store
    data = os.urandom(200000)
    entry = put(store, rec, data)[0]
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    path = kb.decrypt_to(str(store), entry, str(key), str(out))
    assert open(path, "rb").read() == data and stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("damage", ["flip", "truncate", "sha256-file", "wrong-key", "key-mode"])
def test_tampered_backups_refused_with_nothing_restored(store, tmp_path, damage):
    store, rec, key = store
    entry = put(store, rec, os.urandom(150000))[0]
    path = store / entry["name"]
    raw = path.read_bytes()
    expect = kb.BackupIntegrityError
    if damage == "flip":
        path.write_bytes(flip(raw, len(raw) // 2))
        match = "sha256 .* recorded"
    elif damage == "truncate":
        path.write_bytes(raw[:-100])
        match = "truncated: %d of %d bytes" % (len(raw) - 100, len(raw))
    elif damage == "sha256-file":
        (store / (entry["name"] + ".sha256")).write_text("%s  %s\n" % ("1" * 64, entry["name"]))
        match = "does not match the index"
    elif damage == "wrong-key":
        other, _r = k0s_age.generate_identity()
        key.write_text(other + "\n")
        expect, match = kb.BackupError, "none of the identities unwraps.*nothing was restored"
    else:
        key.chmod(0o644)
        expect, match = kb.BackupError, "readable or writable by others"
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    with pytest.raises(expect, match=match):
        kb.decrypt_to(str(store), entry, str(key), str(out))
    assert os.listdir(out) == []


def test_integrity_passes_but_age_tag_fails_when_index_rewritten(store, tmp_path):
    """Someone who changes the file and rewrites the index and .sha256 still meets age's authentication."""
    store, rec, key = store
    entry = put(store, rec, os.urandom(100000))[0]
    path = store / entry["name"]
    raw = flip(path.read_bytes(), len(path.read_bytes()) - 50)
    path.write_bytes(raw)
    sha = hashlib.sha256(raw).hexdigest()
    entry = dict(entry, sha256=sha)
    kb.save_index(str(store), [entry])
    (store / (entry["name"] + ".sha256")).write_text("%s  %s\n" % (sha, entry["name"]))
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    with pytest.raises(kb.BackupError, match="authentication tag mismatch.*nothing was restored"):
        kb.decrypt_to(str(store), entry, str(key), str(out))
    assert os.listdir(out) == []


def test_recipient_checks():
    _i, rec = k0s_age.generate_identity()
    with pytest.raises(kb.BackupError, match="k0s_backup_recipients is empty.*no key is ever generated"):
        kb.check_recipients([])
    with pytest.raises(kb.BackupError, match="must be a list"):
        kb.check_recipients(rec)
    with pytest.raises(kb.BackupError, match="twice"):
        kb.check_recipients([rec, rec])
    with pytest.raises(kb.BackupError, match="k0s_backup_recipients: .* is not an age X25519 recipient"):
        kb.check_recipients(["age1nope"])


# ---------------------------------------------------------------- the test k0s
def files(root):
    out = {}
    for base, dirs, names in os.walk(root):
        for n in names + dirs:
            p = os.path.join(base, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st.st_mode):
                out[rel] = (stat.S_IMODE(st.st_mode), hashlib.sha256(open(p, "rb").read()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = (stat.S_IMODE(st.st_mode), "dir")
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="k0s backup and restore run as root only (as real k0s)")
def test_fake_k0s_backup_restore_round_trip(tmp_path):
    exe = load_fixtures()["k0s-small-zip"]["path"]
    data = tmp_path / "k0s"
    config = tmp_path / "k0s.yaml"
    config.write_text("apiVersion: k0s.k0sproject.io/v1beta1\nkind: ClusterConfig\n")
    (tmp_path / "save").mkdir()
    env = None
    with FakeController(exe, data) as ctl:
        env = ctl.env
        (data / "manifests" / "marker").mkdir(parents=True)
        (data / "manifests" / "marker" / "m.yaml").write_text("PLAINTEXT-MARKER\n")
        run = subprocess.run([exe, "backup", "--save-path", str(tmp_path / "save"), "--data-dir", str(data),
                              "--config", str(config)], env=env, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        busy = subprocess.run([exe, "restore", "x", "--data-dir", str(data)], env=env, capture_output=True, text=True, check=False)
        assert busy.returncode == 1 and "k0s must be down" in busy.stderr
    archives = os.listdir(tmp_path / "save")
    assert len(archives) == 1 and archives[0].startswith("k0s_backup_") and archives[0].endswith(".tar.gz")
    archive = tmp_path / "save" / archives[0]
    kept = {k: v for k, v in files(data).items() if k.split("/")[0] in ("pki", "manifests", "fake-cluster")}
    assert "fake-cluster/state.json" in kept and "pki/ca.key" in kept
    # Not running: backup refuses, restore over existing storage refuses and changes nothing.
    run = subprocess.run([exe, "backup", "--save-path", str(tmp_path / "save"), "--data-dir", str(data), "--config",
                          str(config)], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "unable to detect cluster status" in run.stderr
    before = files(data)
    run = subprocess.run([exe, "restore", str(archive), "--data-dir", str(data), "--config-out",
                          str(tmp_path / "c.yaml")], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "exists" in run.stderr and files(data) == before
    # Wiped: everything comes back, byte for byte and mode for mode.
    shutil.rmtree(data)
    run = subprocess.run([exe, "restore", str(archive), "--data-dir", str(data), "--config-out",
                          str(tmp_path / "c.yaml")], env=env, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert files(data) == kept
    assert (tmp_path / "c.yaml").read_bytes() == config.read_bytes()
