"""The SQLite ledger's file: schema, batch inserts and the queries, as plain blocking functions.

`SqliteLedger` runs the inserts on its writer thread and the queries in
worker threads; nothing here touches the event loop.

Money is stored as TEXT (`str(Decimal)`) and summed by `decimal_sum`, an
aggregate written in Python and registered on each reading connection: SQL
groups and counts, Python adds the Decimals, so totals are exact (an INTEGER
of nano-dollars would round prices finer than $0.001 per million tokens).

Several processes (`serve --workers N`) may share one file: each batch is one
`BEGIN IMMEDIATE` transaction, which takes the write lock first, so the call
ids it hands out (max(id) + 1, ...) cannot collide; waits for the lock are
bounded by the connection's busy timeout.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.experiments.report import Sample
from proxy.ledger.aggregate import ZERO, UsageRow, sort_key, utc_bucket, utc_day
from proxy.ledger.record import AttemptRow, CallRecord

SCHEMA_VERSION = 2
SLICE = 100  # rows per executemany
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's transaction

CALL_COLUMNS = tuple(f.name for f in fields(CallRecord) if f.name != "tries")
TRY_COLUMNS = tuple(f.name for f in fields(AttemptRow))
_TEXT_AT = (CALL_COLUMNS.index("prompt_text"), CALL_COLUMNS.index("answer_text"))
_MONEY_AT = (CALL_COLUMNS.index("cost_usd"), CALL_COLUMNS.index("saved_usd"))

_SCHEMA = f"""
CREATE TABLE calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT, route TEXT, provider TEXT, model TEXT,
    status INTEGER NOT NULL, cache_status TEXT NOT NULL, attempts INTEGER NOT NULL,
    latency_ms REAL NOT NULL, ttft_ms REAL, stream INTEGER NOT NULL,
    input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, reasoning_tokens INTEGER,
    cost_usd TEXT, saved_usd TEXT, variant TEXT, error TEXT,
    possibly_billed INTEGER NOT NULL, judge INTEGER NOT NULL, verdict TEXT, opponent TEXT,
    prompt_text TEXT, answer_text TEXT
);
CREATE INDEX calls_ts ON calls (ts);
CREATE INDEX calls_request_id ON calls (request_id);
CREATE TABLE attempts (
    call_id INTEGER NOT NULL, request_id TEXT NOT NULL, n INTEGER NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL, status INTEGER, outcome TEXT NOT NULL, error TEXT,
    first_byte_ms REAL, duration_ms REAL, possibly_billed INTEGER NOT NULL,
    PRIMARY KEY (call_id, n)
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""
# Each step takes a file from the version before it to the next; run in order inside the
# writer's first transaction, so a file is never left half-migrated.
_MIGRATIONS = {
    1: ("ALTER TABLE calls ADD COLUMN verdict TEXT", "ALTER TABLE calls ADD COLUMN opponent TEXT"),
}

_INSERT_CALL = f"INSERT INTO calls (id, {', '.join(CALL_COLUMNS)}) VALUES (?{', ?' * len(CALL_COLUMNS)})"
_INSERT_TRY = (
    f"INSERT INTO attempts (call_id, request_id, {', '.join(TRY_COLUMNS)}) VALUES (?, ?{', ?' * len(TRY_COLUMNS)})"
)
_DIMENSION_SQL = {
    "provider": "provider",
    "model": "model",
    "key": "key_id",
    "route": "route",
    "day": "utc_day(ts)",
    "hour": "utc_bucket('hour', ts)",
    "minute": "utc_bucket('minute', ts)",
}


def connect_writer(path: str) -> sqlite3.Connection:
    """The writing connection: WAL, the schema created or checked; RuntimeError for an unknown schema."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process (not
        # of the machine) without an fsync per batch.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")  # two processes starting at once: one creates, the other sees it
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        elif version < SCHEMA_VERSION:
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path}: ledger schema version {version}, this gateway reads {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def connect_reader(path: str) -> sqlite3.Connection:
    """A connection for one query, with the functions the queries use; sqlite3.Error when there is no ledger file.

    Opened read-write but `query_only`: a read-only open of a WAL file fails
    when its -shm file is gone and cannot be created by a read-only handle;
    "rw" (not "rwc") still refuses to create a missing file.
    """
    uri = Path(path).absolute().as_uri() + "?mode=rw"  # as_uri escapes "?" and "#" in the path
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    conn.execute("PRAGMA query_only = ON")
    conn.create_function("utc_day", 1, utc_day, deterministic=True)
    conn.create_function("utc_bucket", 2, utc_bucket, deterministic=True)
    conn.create_aggregate("decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]  # typeshed: int in, int out
    return conn


class _DecimalSum:
    """SQL `decimal_sum(text)`: the exact sum of TEXT decimals, as TEXT; NULLs are skipped."""

    def __init__(self) -> None:
        self.total = ZERO

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return str(self.total)


def call_row(rec: CallRecord, store_text: bool) -> list[Any]:
    """The `calls` columns of `rec`, without the id."""
    row: list[Any] = [getattr(rec, name) for name in CALL_COLUMNS]
    for at in _MONEY_AT:
        if row[at] is not None:
            row[at] = str(row[at])
    if not store_text:
        for at in _TEXT_AT:
            row[at] = None
    return row


def insert(conn: sqlite3.Connection, records: Sequence[CallRecord], store_text: bool) -> None:
    """Insert `records` and their tries in one transaction (sqlite3.Error when it did not commit).

    Rows go in slices of `SLICE` with a `time.sleep(0)` between them: the
    GIL is then handed to a waiting event loop instead of after the 5 ms
    switch interval (max loop stall 5-10 ms -> ~3 ms in a 10,000-record burst).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        next_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM calls").fetchone()[0]
        for start in range(0, len(records), SLICE):
            calls: list[tuple[Any, ...]] = []
            tries: list[tuple[Any, ...]] = []
            for call_id, rec in enumerate(records[start : start + SLICE], next_id + start):
                calls.append((call_id, *call_row(rec, store_text)))
                tries.extend((call_id, rec.request_id, *(getattr(t, n) for n in TRY_COLUMNS)) for t in rec.tries)
            conn.executemany(_INSERT_CALL, calls)
            conn.executemany(_INSERT_TRY, tries)
            time.sleep(0)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _record(row: Sequence[Any], tries: list[AttemptRow]) -> CallRecord:
    values = dict(zip(CALL_COLUMNS, row, strict=True))
    for name in ("cost_usd", "saved_usd"):
        if values[name] is not None:
            values[name] = Decimal(values[name])
    for name in ("stream", "possibly_billed", "judge"):
        values[name] = bool(values[name])
    return CallRecord(**values, tries=tries)


def _attempt(row: Sequence[Any]) -> AttemptRow:
    values = dict(zip(TRY_COLUMNS, row, strict=True))
    values["possibly_billed"] = bool(values["possibly_billed"])
    return AttemptRow(**values)


def parse_cursor(cursor: str) -> tuple[float, int]:
    """(ts, id) of a cursor made by `select_calls`; ValueError when it is not one."""
    ts, _, call_id = cursor.partition(":")
    try:
        return float(ts), int(call_id)
    except ValueError:
        raise ValueError(f"bad cursor {cursor!r}") from None


def select_calls(
    conn: sqlite3.Connection, limit: int, before: str | None, filters: dict[str, Any]
) -> tuple[list[CallRecord], str | None]:
    """A page of calls, newest (by `ts`, then by insertion) first, and the cursor after it."""
    where, params = [], []
    for column, value in filters.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        ts, call_id = parse_cursor(before)
        # `ts <= ?` alone is what the index on ts can range over; the rest skips ties already seen.
        where.append("ts <= ? AND (ts < ? OR id < ?)")
        params += [ts, ts, call_id]
    sql = f"SELECT id, {', '.join(CALL_COLUMNS)} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY ts DESC, id DESC LIMIT ?", [*params, limit + 1]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    tries: dict[int, list[AttemptRow]] = {row[0]: [] for row in rows}
    if rows:
        marks = ", ".join("?" * len(rows))
        sql = f"SELECT call_id, {', '.join(TRY_COLUMNS)} FROM attempts WHERE call_id IN ({marks}) ORDER BY call_id, n"
        for row in conn.execute(sql, list(tries)):
            tries[row[0]].append(_attempt(row[1:]))
    records = [_record(row[1:], tries[row[0]]) for row in rows]
    cursor = f"{rows[-1][1]!r}:{rows[-1][0]}" if more else None
    return records, cursor


def select_experiment_samples(conn: sqlite3.Connection, since: float) -> Iterator[Sample]:
    """The A/B calls (a variant) and judge calls at or after `since`, as `Sample`s, read row by row."""
    sql = """
        SELECT route, variant, status, latency_ms, ttft_ms, stream, cost_usd, judge, verdict, opponent
        FROM calls WHERE ts >= ? AND (variant IS NOT NULL OR judge = 1)
    """
    for route, variant, status, latency, ttft, stream, cost, judge, verdict, opponent in conn.execute(sql, [since]):
        money = None if cost is None else Decimal(cost)
        yield Sample(route, variant, status, latency, ttft, bool(stream), money, bool(judge), verdict, opponent)


def select_usage(conn: sqlite3.Connection, since: float, by: Sequence[str]) -> list[UsageRow]:
    """Usage rows of the calls at or after `since`, grouped in SQL, money summed exactly."""
    groups = [_DIMENSION_SQL[dim] for dim in by]
    sql = f"""
        SELECT {"".join(g + ", " for g in groups)}
            COUNT(*), SUM(status >= 400),
            COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
            COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0),
            decimal_sum(cost_usd), decimal_sum(saved_usd), decimal_sum(CASE WHEN judge THEN cost_usd END),
            SUM(status < 400 AND provider IS NOT NULL AND cache_status != 'HIT' AND cost_usd IS NULL),
            SUM(cache_status = 'HIT')
        FROM calls WHERE ts >= ?
        {"GROUP BY " + ", ".join(groups) if groups else ""}
        {"" if groups else "HAVING COUNT(*) > 0"}
    """
    result = []
    for row in conn.execute(sql, [since]):
        values, totals = row[: len(by)], row[len(by) :]
        result.append(
            UsageRow(
                group=dict(zip(by, values, strict=True)),
                calls=totals[0],
                errors=totals[1],
                input_tokens=totals[2],
                output_tokens=totals[3],
                cached_tokens=totals[4],
                reasoning_tokens=totals[5],
                cost_usd=Decimal(totals[6]),
                saved_usd=Decimal(totals[7]),
                judge_usd=Decimal(totals[8]),
                unpriced=totals[9],
                cache_hits=totals[10],
            )
        )
    return sorted(result, key=sort_key)
