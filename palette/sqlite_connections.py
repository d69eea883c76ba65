"""One SQLite connection per thread to one file, closed together: what the embedded event
store and read-model store share.

A sqlite3 connection carries its transaction, so threads must not share one; in WAL mode
each thread's connection reads a committed state while another thread writes. Connections
are in autocommit mode (callers BEGIN themselves) with a generous busy wait, since
writers of other processes (workers, `palette serve`) take turns on the same file.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def delete_database(path: Path | str) -> None:
    """Remove a SQLite database file with its journal, WAL and shared-memory files."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class ThreadConnections:
    def __init__(self, path: Path | str, synchronous: str = "FULL", journal_mode: str = "WAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pragmas = (
            f"PRAGMA journal_mode={journal_mode}",
            f"PRAGMA synchronous={synchronous}",
            "PRAGMA busy_timeout=30000",
        )
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            for pragma in self._pragmas:
                connection.execute(pragma)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def close(self) -> None:
        """Close every thread's connection; a later `get` opens a new one."""
        with self._lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()
        self._local = threading.local()
