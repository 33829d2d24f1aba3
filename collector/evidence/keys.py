"""The collector's Ed25519 signing key: created once in the state directory, shown as a fingerprint.

Files: `evidence-key.pem` (PKCS#8, mode 0600: the private key, never printed or logged) and
`evidence-key.pub` (SubjectPublicKeyInfo PEM: give it to the assessor, or write down the fingerprint).
The fingerprint is the first 128 bits of SHA-256 over the raw 32-byte public key, in hex, shown in groups
of four (`3f2a-9c1b-…`); records carry it without dashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_FILE = "evidence-key.pem"
PUBLIC_FILE = "evidence-key.pub"


class KeyFileError(ValueError):
    """A key file or key text that cannot be used; the message names it and the fix."""


def raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(pub: Ed25519PublicKey) -> str:
    """32 hex digits (128 bits of SHA-256 over the raw public key)."""
    return hashlib.sha256(raw_public(pub)).hexdigest()[:32]


def show_fingerprint(fp: str) -> str:
    """`3f2a-9c1b-…`: what an assessor writes down."""
    return "-".join(fp[i:i + 4] for i in range(0, len(fp), 4))


def normal_fingerprint(text: str) -> str:
    """A fingerprint as typed (dashes, spaces, colons, upper case) to the record form; raises KeyFileError."""
    fp = re.sub(r"[\s:\-]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{32}", fp):
        raise KeyFileError(f"'{text}' is not a key fingerprint (32 hex digits, e.g. 3f2a-9c1b-…, as "
                        "`collector keys show` prints it)")
    return fp


def public_b64(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(pub)).decode()


def public_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError(f"not an Ed25519 public key ({exc})") from None


def load_public(text_or_path: str) -> Ed25519PublicKey:
    """A public key from a PEM file, PEM text, or the base64 of the raw 32 bytes."""
    text = text_or_path
    path = Path(text_or_path)
    if "BEGIN" not in text and len(text) < 4096 and path.is_file():
        text = path.read_text(encoding="ascii", errors="replace")
    if "PRIVATE KEY" in text:
        raise KeyFileError(f"{text_or_path}: this is a private key; give the public key ({PUBLIC_FILE})")
    if "BEGIN PUBLIC KEY" in text:
        try:
            pub = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise KeyFileError(f"{text_or_path}: not a PEM public key ({exc})") from None
        if not isinstance(pub, Ed25519PublicKey):
            raise KeyFileError(f"{text_or_path}: not an Ed25519 key")
        return pub
    try:
        return public_from_b64(text.strip())
    except KeyFileError:
        raise KeyFileError(f"{text_or_path}: neither a public key file ({PUBLIC_FILE}) nor the base64 public key "
                        "`collector keys show` prints") from None


@dataclass(frozen=True)
class Signer:
    """A private key in memory and its fingerprint; `repr` never shows the key."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @cached_property
    def fingerprint(self) -> str:  # once: a hub names its key in every receipt
        return fingerprint(self.public)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data)).decode()

    def __repr__(self) -> str:
        return f"Signer(fingerprint={self.fingerprint})"


def check_signature(pub: Ed25519PublicKey, sig: str, data: bytes) -> bool:
    try:
        pub.verify(base64.b64decode(sig, validate=True), data)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    """Created with mode 0600 from the first byte (never a moment readable by others); never overwritten."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def _write_public(path: Path, pub: Ed25519PublicKey) -> None:
    tmp = path.with_suffix(".pub.tmp")
    tmp.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.replace(tmp, path)


def init(state_dir: Path) -> tuple[Signer, bool]:
    """The key pair of this state directory, created when there is none; returns (signer, created)."""
    existing = load(state_dir)
    if existing is not None:
        return existing, False
    state_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    try:
        _write_private(state_dir / PRIVATE_FILE, key)
    except FileExistsError:  # another process created it first: use that one
        again = load(state_dir)
        assert again is not None
        return again, False
    _write_public(state_dir / PUBLIC_FILE, key.public_key())
    return Signer(key), True


def load(state_dir: Path) -> Signer | None:
    """The state directory's key, or None when there is none yet; raises KeyFileError on a bad or open file."""
    path = state_dir / PRIVATE_FILE
    if not path.exists():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path}: mode {mode:o} lets others read the signing key; `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM private key (restore it from the backup)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    pub_path = state_dir / PUBLIC_FILE
    if not pub_path.exists():
        _write_public(pub_path, key.public_key())
    return Signer(key)


def replace(state_dir: Path, new: Ed25519PrivateKey) -> Path:
    """Install a new key (rotation): the old private key is kept as `evidence-key.<fingerprint>.pem` (0600)."""
    old = load(state_dir)
    path = state_dir / PRIVATE_FILE
    kept = path
    if old is not None:
        kept = state_dir / f"evidence-key.{old.fingerprint}.pem"
        os.replace(path, kept)
    _write_private(path, new)
    _write_public(state_dir / PUBLIC_FILE, new.public_key())
    return kept


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
