"""The Redis ledger's local spool: batches that could not reach Redis, kept on disk until they can, in order.

A spool is a SQLite file (not a JSON-lines file): appending a batch and
deleting a replayed one are each one transaction, so a crash mid-write can
neither tear a record nor replay a deleted batch; several batches wait in
`id` order. Each batch keeps the writer id and sequence number it was given
first, so a batch replayed twice (Redis did apply it, but the reply was
lost) is skipped by Redis (see `proxy.ledger.redis`).

One live process per file: the spool holds an exclusive `flock` on
`<file>.lock`. `open` uses `base_path` when it is free, else
`<base_path>.<pid>-<n>`; and it adopts the spools that processes which have
died left beside it (moving their batches, in order, into its own), so
nothing spooled is lost when a worker restarts under another pid. All
methods block: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_RECORDS = 1_000_000  # spooled records kept at most (RELIABILITY 28: bounded); then dropped, counted

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, writer TEXT, seq INTEGER, n INTEGER, payload BLOB)"
)


@dataclass(slots=True)
class Batch:
    """Records bound for Redis as one unit: `seq` orders a writer's batches; `payloads` are JSON records."""

    writer: str
    seq: int
    payloads: list[bytes]
    spool_id: int | None = field(default=None, compare=False)  # its row in the spool, once spooled


class Spool:
    """A bounded, ordered, crash-safe queue of `Batch`es in a SQLite file; see the module docstring."""

    def __init__(self, base_path: str, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.base_path = base_path
        self.max_records = max_records
        self.path: str | None = None  # the file in use, once open
        self.records = 0  # records spooled now
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._mutex = threading.Lock()  # worker threads change; calls are sequential, this only makes sure

    def open(self) -> int:
        """Take a spool file, adopt the orphaned ones beside it; how many records wait to be replayed."""
        with self._mutex:
            self.path, self._lock_fd = self._claim()
            self._conn = _connect(self.path)
            for orphan in self._orphans():
                self._adopt(orphan)
            self.records = self._conn.execute("SELECT COALESCE(SUM(n), 0) FROM batches").fetchone()[0]
            return self.records

    def append(self, batch: Batch) -> bool:
        """Spool `batch` after the others; False (nothing written) when that would pass `max_records`."""
        with self._mutex:
            conn = self._open_conn()
            if self.records + len(batch.payloads) > self.max_records:
                return False
            with conn:
                cursor = conn.execute(
                    "INSERT INTO batches (writer, seq, n, payload) VALUES (?, ?, ?, ?)",
                    (batch.writer, batch.seq, len(batch.payloads), b"\n".join(batch.payloads)),
                )
            batch.spool_id = cursor.lastrowid
            self.records += len(batch.payloads)
            return True

    def oldest(self) -> Batch | None:
        """The batch spooled first, or None."""
        with self._mutex:
            row = (
                self._open_conn().execute("SELECT id, writer, seq, payload FROM batches ORDER BY id LIMIT 1").fetchone()
            )
        if row is None:
            return None
        spool_id, writer, seq, payload = row
        return Batch(writer, seq, bytes(payload).split(b"\n"), spool_id)

    def remove(self, batch: Batch) -> None:
        """Forget a batch that reached Redis."""
        with self._mutex:
            conn = self._open_conn()
            with conn:
                deleted = conn.execute("DELETE FROM batches WHERE id = ?", (batch.spool_id,)).rowcount
            if deleted:
                self.records -= len(batch.payloads)

    def close(self) -> None:
        """Close the file, deleting it when empty (a non-empty one waits for the next start); never raises."""
        with self._mutex:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            if self.path is not None and self._lock_fd is not None:
                if self.records == 0:
                    _unlink(self.path)
                _unlock(self.path, self._lock_fd)
            self._lock_fd = None

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the spool is not open")
        return self._conn

    def _claim(self) -> tuple[str, int]:
        """The first free file of `base_path`, `base_path.<pid>-0`, `-1`, ..., and the fd of its lock."""
        candidates = [self.base_path] + [f"{self.base_path}.{os.getpid()}-{n}" for n in range(1000)]
        for path in candidates:
            fd = _lock(path)
            if fd is not None:
                return path, fd
        raise OSError(f"no free spool file beside {self.base_path}")

    def _orphans(self) -> list[str]:
        """Spool files beside ours that no live process holds (their lock is free)."""
        base = Path(self.base_path)
        pattern = re.compile(re.escape(base.name) + r"(\.\d+-\d+)?")
        found = (str(p) for p in base.parent.iterdir() if pattern.fullmatch(p.name))
        return sorted(path for path in found if path != self.path)

    def _adopt(self, orphan: str) -> None:
        fd = _lock(orphan)
        if fd is None:
            return  # a live process holds it
        try:
            if not os.path.exists(orphan):
                return
            source = _connect(orphan)
            try:
                rows = source.execute("SELECT writer, seq, n, payload FROM batches ORDER BY id").fetchall()
            finally:
                source.close()
            assert self._conn is not None
            with self._conn:  # one transaction: all of the orphan's batches, or none
                self._conn.executemany("INSERT INTO batches (writer, seq, n, payload) VALUES (?, ?, ?, ?)", rows)
            # Deleted only after the copy committed; a crash in between copies it
            # again later, and Redis skips the batches it already holds.
            _unlink(orphan)
        finally:
            _unlock(orphan, fd)


def _connect(path: str) -> sqlite3.Connection:
    # Python's default transaction handling: `with conn:` commits (or rolls back) each change.
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # a commit survives the process crashing
    conn.execute(_SCHEMA)
    return conn


def _lock(path: str) -> int | None:
    """An fd holding `path.lock` exclusively, or None when another live process holds it."""
    lock_path = path + ".lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder may have deleted the lock file between our open and our
        # flock: then we locked an unlinked file, and must start again.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def _unlock(path: str, fd: int) -> None:
    """Release a lock taken by `_lock`, deleting the lock file when the spool itself is gone."""
    if not os.path.exists(path):
        _unlink_quietly(path + ".lock")  # deleted while still held, so no one can take a stale one
    os.close(fd)


def _unlink(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        _unlink_quietly(path + suffix)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
