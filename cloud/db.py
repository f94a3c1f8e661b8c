"""The cloud's metadata store: one SQLite file behind this small data layer.

Schema changes are numbered migrations applied in order at open; the
``schema_version`` table records the last one applied. Nothing is held only
in memory.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
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

    def user_by_name(self, name: str) -> User | None:
        row = self._con.execute("SELECT id, name, role FROM users WHERE name = ?", (name,)).fetchone()
        return User(*row) if row else None

    def create_user(self, name: str, role: str) -> User:
        with self._lock:
            cur = self._con.execute("INSERT INTO users (name, role, created_at) VALUES (?, ?, ?)",
                                    (name, role, time.time()))
        return User(int(cur.lastrowid or 0), name, role)

    def add_key(self, key_id: str, user: User, salt: bytes, digest: bytes) -> None:
        with self._lock:
            self._con.execute(
                "INSERT INTO api_keys (id, user_id, salt, digest, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, user.id, salt, digest, time.time()),
            )

    def key(self, key_id: str) -> KeyRecord | None:
        row = self._con.execute(
            "SELECT k.id, u.id, u.name, u.role, k.salt, k.digest, k.revoked_at "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        return KeyRecord(row[0], User(row[1], row[2], row[3]), row[4], row[5], row[6] is not None)

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cur = self._con.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                    (time.time(), key_id))
        return cur.rowcount == 1

    def close(self) -> None:
        self._con.close()
