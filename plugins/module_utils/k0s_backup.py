# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The controller's store of encrypted k0s backups (docs/backup.md). Pure Python, no Ansible import.

Layout of ``k0s_backup_dir`` (0700, files 0600, every write a temp file renamed into place):

- ``k0s-backup-<UTC time>-<host>-<sha256[:12]>.tar.gz.age``: ``k0s backup``'s archive, age-encrypted on the host;
- ``<name>.sha256``: ``<sha256>  <name>`` (sha256sum's format);
- ``index.json``: ``{"version": 1, "backups": [{name, time, host, k0s_version, sha256, size, recipients}]}``, newest
  last; ``recipients`` are fingerprints (``k0s_age.recipient_fingerprint``), never keys;
- ``.incoming/``: where a fetch lands before ``record`` checks and renames it.

Retention keeps the newest ``keep`` entries of the index and removes the others' two files; a file the index does
not name is never removed. Restore picks one entry, checks size, the index's and the ``.sha256`` file's sha256,
then decrypts it with ``k0s_age`` into a caller's private directory: any failure leaves no plaintext behind.
"""

import datetime
import hashlib
import json
import os
import re
import stat
import tempfile

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_age

INDEX = "index.json"
INCOMING = ".incoming"
SUFFIX = ".tar.gz.age"
HOST_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
NAME_RE = re.compile(r"\Ak0s-backup-[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9][A-Za-z0-9._-]{0,62}-[0-9a-f]{12}\.tar\.gz\.age\Z")
VERSION_RE = re.compile(r"\Av[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?\+k0s\.[0-9]+\Z")
SHA_RE = re.compile(r"\A[0-9a-f]{64}\Z")


class BackupError(Exception):
    """A refusal with a message naming the problem."""


class BackupIntegrityError(BackupError):
    """A backup whose size or sha256 does not match its record: changed or truncated, never decrypted."""


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recipients(recipients, variable="k0s_backup_recipients"):
    """Fingerprints of the recipients; refuses an empty list or anything not ``age1...``."""
    if not recipients:
        raise BackupError("%s is empty: give the age public key(s) (age1..., from age-keygen) the backups are "
                          "encrypted to; no key is ever generated for you" % variable)
    if isinstance(recipients, str) or not isinstance(recipients, (list, tuple)):
        raise BackupError("%s must be a list of age public keys (age1...)" % variable)
    out = []
    for text in recipients:
        try:
            k0s_age.parse_recipient(text)
        except k0s_age.KeyFormatError as exc:
            raise BackupError("%s: %s" % (variable, exc)) from None
        out.append(k0s_age.recipient_fingerprint(text))
    if len(set(out)) != len(out):
        raise BackupError("%s names a recipient twice" % variable)
    return out


def _check_private_dir(path, what):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BackupError("%s %s is not a directory (a symlink is refused)" % (what, path))
    if st.st_uid != os.geteuid():
        raise BackupError("%s %s belongs to uid %d, not to this user" % (what, path, st.st_uid))


def ensure_store(store, check_mode=False):
    """Create or repair the store directory (0700) and its ``.incoming``; returns True when something changed."""
    if not os.path.isabs(store) or os.path.normpath(store) != store.rstrip("/") or "\n" in store:
        raise BackupError("k0s_backup_dir %r must be an absolute, normalised path" % (store,))
    changed = False
    for path in (store, os.path.join(store, INCOMING)):
        if not os.path.lexists(path):
            changed = True
            if not check_mode:
                os.makedirs(path, 0o700)
                os.chmod(path, 0o700)
            continue
        _check_private_dir(path, "k0s_backup_dir")
        if stat.S_IMODE(os.lstat(path).st_mode) != 0o700:
            changed = True
            if not check_mode:
                os.chmod(path, 0o700)
    return changed


def _write_private(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def load_index(store):
    path = os.path.join(store, INDEX)
    if not os.path.lexists(path):
        return []
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
        backups = data["backups"]
        if data.get("version") != 1 or not isinstance(backups, list):
            raise ValueError("unknown layout")
        for entry in backups:
            if not NAME_RE.match(entry["name"]) or not SHA_RE.match(entry["sha256"]):
                raise ValueError("bad entry %r" % entry.get("name"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError("%s is not a backup index written by fleetsplit (%s): repair or move it" % (path, exc)) from None
    return backups


def save_index(store, backups):
    text = json.dumps({"version": 1, "backups": backups}, indent=2, sort_keys=True) + "\n"
    _write_private(os.path.join(store, INDEX), text.encode("utf-8"))


def backup_name(when, host, sha256):
    if not HOST_RE.match(host or ""):
        raise BackupError("host name %r cannot name a backup file (letters, digits, '.', '_', '-')" % (host,))
    return "k0s-backup-%s-%s-%s%s" % (when.strftime("%Y%m%dT%H%M%SZ"), host, sha256[:12], SUFFIX)


def record(store, incoming, host, k0s_version, host_sha256, fingerprints, keep, now=None):
    """Take a fetched backup from ``incoming`` into the store: checks, rename, ``.sha256``, index, retention.

    Returns (entry, removed names)."""
    if not VERSION_RE.match(k0s_version or ""):
        raise BackupError("k0s version %r of the backup host does not parse (v<major>.<minor>.<patch>+k0s.<n>)"
                          % (k0s_version,))
    if keep < 1:
        raise BackupError("k0s_backup_keep must be at least 1, got %r" % (keep,))
    real = os.path.realpath(incoming)
    if os.path.dirname(real) != os.path.join(os.path.realpath(store), INCOMING):
        raise BackupError("%s is not in %s/%s" % (incoming, store, INCOMING))
    sha = sha256_file(real)
    if sha != host_sha256:
        raise BackupIntegrityError("the fetched backup's sha256 %s differs from the host's %s: the copy was damaged"
                                   % (sha, host_sha256))
    with open(real, "rb") as fh:
        if fh.read(len(k0s_age.INTRO)) != k0s_age.INTRO:
            raise BackupError("the fetched file is not age-encrypted (no age header): refusing to keep a plaintext "
                              "backup")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    name = backup_name(now, host, sha)
    entry = {"name": name, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "host": host, "k0s_version": k0s_version,
             "sha256": sha, "size": os.path.getsize(real), "recipients": list(fingerprints)}
    backups = [b for b in load_index(store) if b["name"] != name]
    _write_private(os.path.join(store, name + ".sha256"), ("%s  %s\n" % (sha, name)).encode("ascii"))
    os.chmod(real, 0o600)
    os.rename(real, os.path.join(store, name))
    backups.append(entry)
    backups.sort(key=lambda b: (b["time"], b["name"]))
    removed = retain(store, backups, keep)
    return entry, removed


def retain(store, backups, keep):
    """Keep the newest ``keep`` entries; remove the older ones' files and save the index. Returns removed names."""
    drop, kept = backups[:-keep] if len(backups) > keep else [], backups[-keep:]
    save_index(store, kept)
    for entry in drop:
        for path in (os.path.join(store, entry["name"]), os.path.join(store, entry["name"] + ".sha256")):
            if os.path.lexists(path):
                os.unlink(path)
    return [e["name"] for e in drop]


def select(store, choice):
    """The index entry named ``choice`` (a file name in the store) or the newest for ``latest``."""
    backups = load_index(store)
    if not backups:
        raise BackupError("%s has no backups (no %s entries): take one with fleetsplit.k0s.backup_k0s" % (store, INDEX))
    if choice in ("", "latest"):
        return backups[-1]
    if "/" in choice or choice in (".", ".."):
        raise BackupError("k0s_restore_file %r must be a file name in k0s_backup_dir (or 'latest'), not a path"
                          % (choice,))
    for entry in backups:
        if entry["name"] == choice:
            return entry
    raise BackupError("k0s_restore_file %r is not in %s/%s; known: %s"
                      % (choice, store, INDEX, ", ".join(b["name"] for b in backups)))


def verify(store, entry):
    """Size, then sha256 against the index and the ``.sha256`` file. Raises BackupIntegrityError."""
    path = os.path.join(store, entry["name"])
    if not os.path.isfile(path) or os.path.islink(path):
        raise BackupError("%s is missing (named by %s)" % (path, INDEX))
    size = os.path.getsize(path)
    if size < entry["size"]:
        raise BackupIntegrityError("%s is truncated: %d of %d bytes" % (path, size, entry["size"]))
    if size != entry["size"]:
        raise BackupIntegrityError("%s has %d bytes, the index recorded %d: it was changed" % (path, size, entry["size"]))
    try:
        with open(path + ".sha256", "rb") as fh:
            side = fh.read(200).decode("ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupIntegrityError("%s.sha256 cannot be read (%s)" % (path, exc)) from None
    if len(side) != 2 or side[1] != entry["name"] or side[0] != entry["sha256"]:
        raise BackupIntegrityError("%s.sha256 does not match the index entry: one of them was changed" % path)
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BackupIntegrityError("%s has sha256 %s, recorded %s: the backup was changed; refusing to restore it"
                                   % (path, actual, entry["sha256"]))
    return path


def read_identities(identity_file):
    """The identity file's keys; refuses a file others can read. Messages never quote its content."""
    try:
        st = os.stat(identity_file)
    except OSError as exc:
        raise BackupError("k0s_backup_identity_file %s: %s" % (identity_file, exc.strerror)) from None
    if not stat.S_ISREG(st.st_mode):
        raise BackupError("k0s_backup_identity_file %s is not a regular file" % identity_file)
    if st.st_mode & 0o077:
        raise BackupError("k0s_backup_identity_file %s is readable or writable by others (mode %04o): "
                          "chmod 600 it" % (identity_file, stat.S_IMODE(st.st_mode)))
    with open(identity_file, "rb") as fh:
        text = fh.read(1024 * 1024).decode("utf-8", "replace")
    try:
        return k0s_age.parse_identities(text, "k0s_backup_identity_file %s" % identity_file)
    except k0s_age.KeyFormatError as exc:
        raise BackupError(str(exc)) from None


def decrypt_to(store, entry, identity_file, out_dir):
    """Verify, then decrypt ``entry`` to ``out_dir/k0s_backup_<time>.tar.gz`` (0600); returns that path."""
    path = verify(store, entry)
    keys = read_identities(identity_file)
    _check_private_dir(out_dir, "restore directory")
    if stat.S_IMODE(os.lstat(out_dir).st_mode) & 0o077:
        raise BackupError("restore directory %s is not private (0700)" % out_dir)
    stamp = entry["time"].replace("-", "").replace(":", "")
    out = os.path.join(out_dir, "k0s_backup_%s.tar.gz" % stamp)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
            k0s_age.decrypt(src, dst, keys)
    except k0s_age.AgeError as exc:
        os.unlink(out)
        raise BackupError("%s: %s; nothing was restored" % (entry["name"], exc)) from None
    except BaseException:
        os.unlink(out)
        raise
    return out
