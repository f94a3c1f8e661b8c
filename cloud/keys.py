"""API keys: ``pxo_<8 hex id>_<43 url-safe secret characters>``.

The id is visible and stored (so a leaked key can be recognised and revoked);
the key is stored only as HMAC-SHA256 under a per-key random salt, and
compared in constant time. Every request looks its key up again, so a revoked
key (or a disabled user's key) is refused at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from pxo.cloud.db import Database, KeyRecord, User

KEY_RE = re.compile(r"^(pxo_[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
KEY_ID_RE = re.compile(r"^pxo_[0-9a-f]{8}$")


def digest(salt: bytes, key: str) -> bytes:
    return hmac.new(salt, key.encode(), hashlib.sha256).digest()


def create_key(db: Database, user: User, label: str = "") -> str:
    """A new key for ``user``; the clear key is returned once and never stored."""
    key_id = f"pxo_{secrets.token_hex(4)}"
    key = f"{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    db.add_key(key_id, user, salt, digest(salt, key), label)
    return key


def key_id(key: str) -> str:
    m = KEY_RE.match(key)
    return m.group(1) if m else ""


def verify(db: Database, key: str) -> KeyRecord | None:
    """The key's record, or None for a malformed, unknown or revoked key (or a disabled user's)."""
    m = KEY_RE.match(key)
    if m is None:
        return None
    record = db.key(m.group(1))
    if record is None or record.revoked:
        return None
    if not hmac.compare_digest(record.digest, digest(record.salt, key)):
        return None
    return record


def bootstrap_admin(db: Database, name: str = "admin") -> str:
    """Create the admin user if needed and a new key for it (deploy time)."""
    user = db.user_by_name(name) or db.create_user(name, "admin")
    return create_key(db, user, "bootstrap")
