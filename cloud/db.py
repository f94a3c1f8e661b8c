"""The cloud's metadata store: one SQLite file behind this small data layer.

Schema changes are numbered migrations applied in order at open; the
``schema_version`` table records the last one applied. Nothing is held only
in memory.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIGRATIONS: tuple[str, ...] = (
    # 1: users and their API keys
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
        created_at REAL NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,            -- the key's visible prefix, e.g. 'pxo_3fa9c2d1'
        user_id INTEGER NOT NULL REFERENCES users(id),
        salt BLOB NOT NULL,             -- per-key random salt
        digest BLOB NOT NULL,           -- HMAC-SHA256(salt, key): the key itself is never stored
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 2: users can be disabled (their keys stop working), keys get a label and a
    # last-use time, and the collectors this cloud fronts are named clusters.
    # A cluster's token is what the cloud sends to its collector, so it is kept
    # as given (the file is private to the cloud's user, mode 0600).
    """
    ALTER TABLE users ADD COLUMN disabled_at REAL;
    ALTER TABLE api_keys ADD COLUMN label TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN last_used_at REAL;
    CREATE INDEX api_keys_user ON api_keys(user_id);
    CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,          -- the collector's host:port
        token TEXT NOT NULL DEFAULT '', -- sent as gRPC metadata, '' when the collector checks none
        is_default INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    """,
    # 3: mutual TLS to a cluster's collector: the cluster CA and the client certificate
    # and key the cloud presents (PEM; '' for plain gRPC). Like the token, the key is
    # kept as given (the file is 0600) and never returned by the API.
    """
    ALTER TABLE clusters ADD COLUMN tls_ca TEXT NOT NULL DEFAULT '';
    ALTER TABLE clusters ADD COLUMN tls_cert TEXT NOT NULL DEFAULT '';
    ALTER TABLE clusters ADD COLUMN tls_key TEXT NOT NULL DEFAULT '';
    """,
)


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user: User
    salt: bytes
    digest: bytes
    revoked: bool


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never its digest or salt."""

    id: str
    user: str
    role: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: str
    created_at: float
    disabled_at: float | None
    active_keys: int


@dataclass(frozen=True)
class Cluster:
    name: str
    address: str
    token: str
    is_default: bool
    created_at: float
    tls_ca: str = ""  # PEM, all three or none: mutual TLS to the collector
    tls_cert: str = field(default="", repr=False)
    tls_key: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)


class Conflict(Exception):
    """A name that must be unique is taken, or a change would break an invariant."""


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # The store holds key digests and cluster tokens: private to the cloud's user.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA foreign_keys=ON")
        self._con.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._con.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in filter(str.strip, script.split(";")):
                        self._con.execute(stmt)
                    self._con.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                    self._con.execute("COMMIT")
                except Exception:
                    self._con.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        return int(self._con.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)

    # -- users -------------------------------------------------------------------

    def user_by_name(self, name: str) -> User | None:
        row = self._con.execute("SELECT id, name, role FROM users WHERE name = ? AND disabled_at IS NULL",
                                (name,)).fetchone()
        return User(*row) if row else None

    def create_user(self, name: str, role: str) -> User:
        with self._lock:
            try:
                cur = self._con.execute("INSERT INTO users (name, role, created_at) VALUES (?, ?, ?)",
                                        (name, role, time.time()))
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a user named {name!r} already exists") from exc
        return User(int(cur.lastrowid or 0), name, role)

    def users(self) -> list[UserInfo]:
        rows = self._con.execute(
            "SELECT u.name, u.role, u.created_at, u.disabled_at, "
            "(SELECT count(*) FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL) "
            "FROM users u ORDER BY u.name").fetchall()
        return [UserInfo(*r) for r in rows]

    def disable_user(self, name: str) -> bool:
        """Disable a user and revoke all its keys, in one transaction; False when unknown.

        Refuses (Conflict) to disable the last active admin."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                row = self._con.execute("SELECT id, role FROM users WHERE name = ? AND disabled_at IS NULL",
                                        (name,)).fetchone()
                if row is None:
                    self._con.execute("ROLLBACK")
                    return False
                if row[1] == "admin":
                    admins = self._con.execute(
                        "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL").fetchone()[0]
                    if admins <= 1:
                        raise Conflict("cannot remove the last admin")
                now = time.time()
                self._con.execute("UPDATE users SET disabled_at = ? WHERE id = ?", (now, row[0]))
                self._con.execute("UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                                  (now, row[0]))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        return True

    # -- keys --------------------------------------------------------------------

    def add_key(self, key_id: str, user: User, salt: bytes, digest: bytes, label: str = "") -> None:
        with self._lock:
            self._con.execute(
                "INSERT INTO api_keys (id, user_id, salt, digest, created_at, label) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, user.id, salt, digest, time.time(), label),
            )

    def key(self, key_id: str) -> KeyRecord | None:
        row = self._con.execute(
            "SELECT k.id, u.id, u.name, u.role, k.salt, k.digest, k.revoked_at, u.disabled_at "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        return KeyRecord(row[0], User(row[1], row[2], row[3]), row[4], row[5],
                         row[6] is not None or row[7] is not None)

    def list_keys(self, *, user: str | None = None) -> list[KeyInfo]:
        sql = ("SELECT k.id, u.name, u.role, k.label, k.created_at, k.last_used_at, k.revoked_at "
               "FROM api_keys k JOIN users u ON u.id = k.user_id")
        args: tuple[str, ...] = ()
        if user is not None:
            sql += " WHERE u.name = ?"
            args = (user,)
        return [KeyInfo(*r) for r in self._con.execute(sql + " ORDER BY k.created_at, k.id", args).fetchall()]

    def touch_key(self, key_id: str, *, every: float = 60.0) -> None:
        """Record a key's use (at most once a minute, so reads do not become writes)."""
        now = time.time()
        with self._lock:
            self._con.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ? AND "
                              "(last_used_at IS NULL OR last_used_at < ?)", (now, key_id, now - every))

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cur = self._con.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                    (time.time(), key_id))
        return cur.rowcount == 1

    # -- clusters ----------------------------------------------------------------

    _CLUSTER = "SELECT name, address, token, is_default, created_at, tls_ca, tls_cert, tls_key FROM clusters"

    @staticmethod
    def _cluster(r: tuple[Any, ...]) -> Cluster:
        return Cluster(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7])

    def clusters(self) -> list[Cluster]:
        return [self._cluster(r) for r in self._con.execute(self._CLUSTER + " ORDER BY name").fetchall()]

    def cluster(self, name: str | None) -> Cluster | None:
        """The named cluster, or the default one when ``name`` is None or empty."""
        if name:
            row = self._con.execute(self._CLUSTER + " WHERE name = ?", (name,)).fetchone()
        else:
            row = self._con.execute(self._CLUSTER + " WHERE is_default = 1").fetchone()
        return self._cluster(row) if row else None

    def put_cluster(self, name: str, address: str, token: str, *, make_default: bool = False,
                    tls: tuple[str, str, str] = ("", "", "")) -> Cluster:
        """Add or update a cluster (address, token and TLS as given: ``tls`` is (CA, certificate, key)
        PEM, or empty for plain gRPC); the first cluster is the default."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                has_default = self._con.execute("SELECT count(*) FROM clusters WHERE is_default = 1 "
                                                "AND name != ?", (name,)).fetchone()[0]
                default = make_default or not has_default
                if default:
                    self._con.execute("UPDATE clusters SET is_default = 0")
                self._con.execute(
                    "INSERT INTO clusters (name, address, token, is_default, created_at, tls_ca, tls_cert, tls_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET address = excluded.address, token = excluded.token, "
                    "is_default = max(is_default, excluded.is_default), tls_ca = excluded.tls_ca, "
                    "tls_cert = excluded.tls_cert, tls_key = excluded.tls_key",
                    (name, address, token, int(default), time.time(), *tls))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        found = self.cluster(name)
        assert found is not None
        return found

    def delete_cluster(self, name: str) -> bool:
        with self._lock:
            row = self._con.execute("SELECT is_default FROM clusters WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            if row[0]:
                raise Conflict(f"{name!r} is the default cluster: make another cluster the default first")
            self._con.execute("DELETE FROM clusters WHERE name = ?", (name,))
        return True

    def close(self) -> None:
        self._con.close()
