"""The embedded runtime's users: names and argon2id password hashes, for signing in.

`palette user create NAME` adds one; `POST /auth/login` checks a password here and answers
the same bearer token `palette token create` prints. Only a slow hash is kept: argon2id at
OWASP's recommended minimum (19 MiB, 2 passes, 1 lane; ~40 ms on one core), so a stolen
file costs a guesser that much per guess and a flood of logins cannot exhaust memory.

The users live in a small SQLite table of the data directory (`users.db`): every change is
one transaction, so a crash leaves the old or the new state, never half of one. The file is
created readable by its owner only (0600, as SQLite's journal next to it); a file others can
read is refused rather than trusted, as the signing secrets are (`palette/secrets.py`).

A user name is a user id (`contracts.identifiers.user_id_problem`): the token's `sub`.

Revoking tokens: each name has a token generation (0 until its first change). Changing a
password or deleting the user raises it, and a token carries the generation it was issued
at (`gen`), so every token issued before the change answers 401 from then on — also after
the name is created again. A count rather than a time, so a sign-in in the same second as
the change is not refused. The server re-reads the generations when the file changed (its
size and mtime) or a second has passed since (file times are coarse: a change within one
tick of the last read shows no new mtime), so the check costs one `stat` per request.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from contracts.identifiers import user_id_problem

USERS_FILE = "users.db"
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
"""Longer is refused before hashing: argon2 reads every byte of what it is given."""

PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
"""argon2id with OWASP's minimum parameters (m=19 MiB, t=2, p=1)."""


class UserError(ValueError):
    """A user command that cannot be done (a bad name or password, an unknown or taken name)."""


@dataclass(frozen=True, slots=True)
class LocalUser:
    name: str
    created_at: str
    password_changed_at: str


def password_problem(password: str) -> str | None:
    """Why `password` cannot be a user's password, or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the password must be at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"the password must be at most {MAX_PASSWORD_CHARS} characters"
    return None


class LocalUsers:
    """The users of one data directory; safe across threads and processes (one SQLite
    connection per call, each change one transaction)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / USERS_FILE
        self._dummy_hash = PASSWORD_HASHER.hash("palette: no such user")
        self._generations_lock = threading.Lock()
        self._generations: tuple[tuple[int, int, int] | None, dict[str, int]] = (None, {})

    def create(self, name: str, password: str) -> LocalUser:
        """Adds user `name`; UserError when the name is taken or invalid or the password too short."""
        self._check(name, password)
        digest = PASSWORD_HASHER.hash(password)
        now = _now()
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO users (name, password_hash, created_at, password_changed_at) VALUES (?, ?, ?, ?)",
                    (name, digest, now, now),
                )
            except sqlite3.IntegrityError:
                raise UserError(f"user {name!r} already exists") from None
        return LocalUser(name, now, now)

    def set_password(self, name: str, password: str) -> None:
        """Replaces `name`'s password; UserError for an unknown user or a bad password."""
        self._check(name, password)
        digest = PASSWORD_HASHER.hash(password)
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE users SET password_hash = ?, password_changed_at = ? WHERE name = ?", (digest, _now(), name)
            ).rowcount
            if not changed:
                raise UserError(f"no user {name!r}")
            _revoke_tokens(db, name)

    def delete(self, name: str) -> None:
        """Removes `name` and revokes its tokens; UserError when unknown."""
        with self._transaction() as db:
            if not db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise UserError(f"no user {name!r}")
            _revoke_tokens(db, name)

    def token_generation(self, name: str) -> int:
        """The generation a token of `name` must carry to be valid (0: never revoked)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return 0
        version = (info.st_mtime_ns, info.st_size, int(time.monotonic()))
        with self._generations_lock:
            seen, generations = self._generations
            if seen != version:
                with self._transaction() as db:
                    generations = dict(db.execute("SELECT name, generation FROM token_generations").fetchall())
                self._generations = (version, generations)
        return generations.get(name, 0)

    def all_users(self) -> list[LocalUser]:
        """Every user, by name."""
        with self._transaction() as db:
            rows = db.execute("SELECT name, created_at, password_changed_at FROM users ORDER BY name").fetchall()
        return [LocalUser(*row) for row in rows]

    def exists(self, name: str) -> bool:
        with self._transaction() as db:
            return db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None

    def verify(self, name: str, password: str) -> bool:
        """Whether `password` is `name`'s. An unknown user is checked against a dummy hash,
        so it takes as long as a wrong password and the answer's timing names no user."""
        stored = None
        if user_id_problem(name) is None and self.path.exists():
            with self._transaction() as db:
                row = db.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
            stored = row[0] if row else None
        try:
            return PASSWORD_HASHER.verify(stored or self._dummy_hash, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def _check(self, name: str, password: str) -> None:
        if problem := user_id_problem(name):
            raise UserError(problem)
        if problem := password_problem(password):
            raise UserError(problem)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed when the block ends, rolled back on error."""
        self._ensure_private_file()
        with closing(sqlite3.connect(self.path, timeout=30.0)) as db:
            with db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL,"
                    " created_at TEXT NOT NULL, password_changed_at TEXT NOT NULL)"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS token_generations (name TEXT PRIMARY KEY, generation INTEGER NOT NULL)"
                )
                yield db

    def _ensure_private_file(self) -> None:
        """Creates the file 0600 before SQLite opens it; refuses one others can read."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            if self.path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise PermissionError(
                    f"{self.path} is accessible to other users; run `chmod 600 {self.path}`"
                ) from None


def _revoke_tokens(db: sqlite3.Connection, name: str) -> None:
    db.execute(
        "INSERT INTO token_generations (name, generation) VALUES (?, 1)"
        " ON CONFLICT (name) DO UPDATE SET generation = generation + 1",
        (name,),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
