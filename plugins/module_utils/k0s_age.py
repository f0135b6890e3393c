# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The age file format (https://age-encryption.org/v1, C2SP age spec), X25519 recipients only.

Backups are encrypted on the hosts by the ``age`` command; the controller decrypts them here with the primitives
of ``cryptography`` (ansible-core's own dependency: X25519, HKDF-SHA256, HMAC-SHA256, ChaCha20-Poly1305), so no
other library is needed. ``encrypt`` exists for the tests and for controllers without ``age``; it writes what
``age -r`` writes. Decryption streams in 64 KiB chunks (bounded memory) and writes the plaintext only through the
caller's file object: every failure raises one of the ``AgeError`` subclasses, each with its own message, and the
caller discards what was written. Pure Python, no Ansible import.
"""

import base64
import hashlib
import hmac
import io
import os
import re

INTRO = b"age-encryption.org/v1\n"
X25519_INFO = b"age-encryption.org/v1/X25519"
CHUNK = 64 * 1024
TAG = 16
_B32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
RECIPIENT_RE = re.compile(r"\Aage1[" + _B32 + r"]{58}\Z")
SECRET_RE = re.compile(r"\AAGE-SECRET-KEY-1[" + _B32.upper() + r"]{58}\Z")


class AgeError(Exception):
    """A file that is not a valid age file for the given identities."""


class NotAgeError(AgeError):
    """No age v1 header."""


class WrongIdentityError(AgeError):
    """No identity unwraps the file key."""


class TamperedError(AgeError):
    """The header MAC or a payload chunk's authentication tag does not match."""


class TruncatedError(AgeError):
    """The file ends before the last chunk."""


class KeyFormatError(ValueError):
    """A recipient or identity that is not an age X25519 key (the message never quotes a secret)."""


def _crypto():
    try:
        from cryptography.hazmat.primitives import hashes, hmac as chmac  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives.asymmetric import x25519  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise ImportError("the Python library 'cryptography' (ansible-core's own dependency) is needed on the "
                          "controller to decrypt age backups: %s" % exc) from exc
    return hashes, chmac, x25519, ChaCha20Poly1305, HKDF, serialization


# ---------------------------------------------------------------- bech32 (BIP 173, no length limit, as age)
def _polymod(values):
    gen = (0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1ffffff) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp):
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data, frombits, tobits, pad):
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (tobits - bits)) & maxv)
    elif not pad and (bits >= frombits or (acc << (tobits - bits)) & maxv):
        raise KeyFormatError("bad bech32 padding")
    return out


def bech32_encode(hrp, data):
    values = _convertbits(data, 8, 5, True)
    chk = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    return hrp + "1" + "".join(_B32[v] for v in values + [(chk >> 5 * (5 - i)) & 31 for i in range(6)])


def bech32_decode(text):
    if text.lower() != text and text.upper() != text:
        raise KeyFormatError("mixed case")
    low = text.lower()
    pos = low.rfind("1")
    if pos < 1 or pos + 7 > len(low):
        raise KeyFormatError("no bech32 separator")
    hrp, values = low[:pos], []
    for ch in low[pos + 1:]:
        if ch not in _B32:
            raise KeyFormatError("character outside the bech32 alphabet")
        values.append(_B32.index(ch))
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise KeyFormatError("bech32 checksum mismatch")
    return hrp, bytes(_convertbits(values[:-6], 5, 8, False))


# ---------------------------------------------------------------- keys
def parse_recipient(text):
    """The 32-byte X25519 public key of an ``age1...`` recipient; KeyFormatError names what is wrong."""
    if not isinstance(text, str) or not RECIPIENT_RE.match(text):
        raise KeyFormatError("%r is not an age X25519 recipient (age1 followed by 58 lowercase bech32 characters, "
                             "as age-keygen prints it)" % (text,))
    hrp, key = bech32_decode(text)
    if hrp != "age" or len(key) != 32:
        raise KeyFormatError("%r is not an age X25519 recipient" % (text,))
    return key


def recipient_fingerprint(text):
    """A short public name for a recipient in the index: sha256 of the recipient string, 16 hex digits."""
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def parse_identities(text, source="the identity file"):
    """The X25519 secret keys (32 bytes each) of an age identity file. Messages never quote a line."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not SECRET_RE.match(line):
            raise KeyFormatError("%s line %d is not an age X25519 identity (AGE-SECRET-KEY-1...); "
                                 "only age-keygen identities are supported" % (source, number))
        hrp, key = bech32_decode(line)
        if hrp != "age-secret-key-" or len(key) != 32:
            raise KeyFormatError("%s line %d is not an age X25519 identity" % (source, number))
        keys.append(key)
    if not keys:
        raise KeyFormatError("%s holds no age identity (AGE-SECRET-KEY-1...)" % source)
    return keys


def generate_identity():
    """(identity string, recipient string): what age-keygen prints; for tests."""
    _h, _m, x25519, _c, _k, serialization = _crypto()
    priv = x25519.X25519PrivateKey.generate()
    raw = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return bech32_encode("age-secret-key-", raw).upper(), bech32_encode("age", pub)


# ---------------------------------------------------------------- primitives
def _hkdf(ikm, salt, info):
    hashes, _m, _x, _c, hkdf, _s = _crypto()
    return hkdf(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _b64enc(data):
    return base64.b64encode(data).rstrip(b"=")


def _b64dec(data):
    if b"=" in data or b"\r" in data:
        raise TamperedError("age header: non-canonical base64")
    try:
        out = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except ValueError as exc:
        raise TamperedError("age header: bad base64 (%s)" % exc) from exc
    if _b64enc(out) != data:
        raise TamperedError("age header: non-canonical base64")
    return out


def _chunk_nonce(counter, last):
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# ---------------------------------------------------------------- header
def _read_line(fh, limit=4096):
    line = fh.readline(limit)
    if not line:
        raise TruncatedError("the file ends inside the age header")
    if not line.endswith(b"\n"):
        raise TruncatedError("the file ends inside the age header") if len(line) < limit else \
            TamperedError("age header line too long")
    return line


def read_header(fh):
    """(stanzas, header bytes up to '---', mac): stanzas are (type, args, body) tuples."""
    intro = fh.readline(len(INTRO))
    if intro != INTRO:
        raise NotAgeError("not an age file (no 'age-encryption.org/v1' header): it was not encrypted by age, "
                          "or is not a backup")
    raw = bytearray(intro)
    stanzas = []
    while True:
        line = _read_line(fh)
        if line.startswith(b"--- "):
            raw += b"---"
            mac = _b64dec(line[4:-1])
            if len(mac) != 32:
                raise TamperedError("age header: bad MAC length")
            return stanzas, bytes(raw), mac
        raw += line
        if not line.startswith(b"-> "):
            raise TamperedError("age header: malformed stanza line")
        args = line[3:-1].split(b" ")
        body = bytearray()
        while True:
            bline = _read_line(fh)
            raw += bline
            if len(bline) - 1 > 64:
                raise TamperedError("age header: stanza body line too long")
            body += _b64dec(bline[:-1])
            if len(bline) - 1 < 64:
                break
        stanzas.append((args[0].decode("ascii", "replace"), args[1:], bytes(body)))


def _unwrap(stanzas, identities):
    _h, _m, x25519, chacha, _k, serialization = _crypto()
    for secret in identities:
        priv = x25519.X25519PrivateKey.from_private_bytes(secret)
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        for kind, args, body in stanzas:
            if kind != "X25519":
                continue
            if len(args) != 1 or len(body) != 32:
                raise TamperedError("age header: malformed X25519 stanza")
            share = _b64dec(args[0])
            if len(share) != 32:
                raise TamperedError("age header: malformed X25519 stanza")
            shared = priv.exchange(x25519.X25519PublicKey.from_public_bytes(share))
            if shared == bytes(32):
                raise TamperedError("age header: X25519 share is a low-order point")
            wrap_key = _hkdf(shared, share + pub, X25519_INFO)
            try:
                return chacha(wrap_key).decrypt(bytes(12), body, None)
            except Exception:  # pylint: disable=broad-except
                continue  # InvalidTag: this stanza is for another recipient
    kinds = sorted(set(k for k, _a, _b in stanzas))
    raise WrongIdentityError("none of the identities unwraps the backup's file key (recipient types in the file: %s):"
                             " the backup was encrypted to other recipients, or its header was changed"
                             % (", ".join(kinds) or "none"))


# ---------------------------------------------------------------- payload
def decrypt(src, dst, identities):
    """Decrypt age file object ``src`` into file object ``dst``; returns the plaintext size."""
    _h, chmac, _x, chacha, _k, _s = _crypto()
    hashes = _crypto()[0]
    stanzas, raw, mac = read_header(src)
    file_key = _unwrap(stanzas, identities)
    check = chmac.HMAC(_hkdf(file_key, b"", b"header"), hashes.SHA256())
    check.update(raw)
    if not hmac.compare_digest(check.finalize(), mac):
        raise TamperedError("age header MAC mismatch: the backup's header was changed")
    nonce = src.read(16)
    if len(nonce) != 16:
        raise TruncatedError("the file ends before the payload nonce: truncated")
    aead = chacha(_hkdf(file_key, nonce, b"payload"))
    counter, total = 0, 0
    chunk = src.read(CHUNK + TAG)
    while True:
        if len(chunk) < TAG:
            raise TruncatedError("the file ends inside payload chunk %d: truncated" % counter)
        following = src.read(CHUNK + TAG) if len(chunk) == CHUNK + TAG else b""
        last = not following
        try:
            plain = aead.decrypt(_chunk_nonce(counter, last), chunk, None)
        except Exception:  # pylint: disable=broad-except
            if last and len(chunk) == CHUNK + TAG:
                try:
                    aead.decrypt(_chunk_nonce(counter, False), chunk, None)
                except Exception:  # pylint: disable=broad-except
                    pass
                else:
                    raise TruncatedError("the file ends after payload chunk %d, which is not the last one: truncated"
                                         % counter) from None
            raise TamperedError("authentication tag mismatch in payload chunk %d: the backup was changed%s"
                                % (counter, " or cut short" if last else "")) from None
        if last and not plain and counter > 0:
            raise TamperedError("age payload: empty last chunk after data")
        dst.write(plain)
        total += len(plain)
        if last:
            return total
        counter += 1
        chunk = following


def encrypt(src, dst, recipients):
    """Encrypt file object ``src`` to ``dst`` for ``age1...`` recipients (as ``age -r``)."""
    hashes, chmac, x25519, chacha, _k, serialization = _crypto()
    file_key = os.urandom(16)
    header = bytearray(INTRO)
    for text in recipients:
        pub = parse_recipient(text)
        eph = x25519.X25519PrivateKey.generate()
        share = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(pub))
        body = chacha(_hkdf(shared, share + pub, X25519_INFO)).encrypt(bytes(12), file_key, None)
        header += b"-> X25519 " + _b64enc(share) + b"\n"
        enc = _b64enc(body)
        lines = [enc[i:i + 64] for i in range(0, len(enc), 64)]
        if len(lines[-1]) == 64:
            lines.append(b"")
        header += b"\n".join(lines) + b"\n"
    header += b"---"
    mac = chmac.HMAC(_hkdf(file_key, b"", b"header"), hashes.SHA256())
    mac.update(bytes(header))
    dst.write(bytes(header) + b" " + _b64enc(mac.finalize()) + b"\n")
    nonce = os.urandom(16)
    dst.write(nonce)
    aead = chacha(_hkdf(file_key, nonce, b"payload"))
    counter = 0
    chunk = src.read(CHUNK)
    while True:
        following = src.read(CHUNK) if len(chunk) == CHUNK else b""
        last = not following
        dst.write(aead.encrypt(_chunk_nonce(counter, last), chunk, None))
        if last:
            return
        counter += 1
        chunk = following


def decrypt_bytes(data, identities):
    out = io.BytesIO()
    decrypt(io.BytesIO(data), out, identities)
    return out.getvalue()
