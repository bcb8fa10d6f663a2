"""RedisLedger: every replica writes one shared ledger, a Redis stream; an outage spools to disk, losing nothing.

Writes: `record` appends to a deque and returns. One background task (the
pump) takes up to `batch_size` records (lingering `linger_s` so a trickle
still forms batches), encodes them to JSON in a worker thread and sends them
in one Lua script: an XADD per record (one field, "record") to `prefix +
"ledger"`, trimmed by `MAXLEN ~ maxlen` (roughly the newest million calls are
kept; older ones leave /sluice/usage). Lua rather than WATCH/MULTI: one round
trip, and nothing (no UNWATCH) left to hang on a frozen Redis when the deadline
cancels it; fakeredis without `lupa` cannot run it, so tests use redis-server.

Outage: a batch that fails (refused, timed out, breaker open) goes to the
`Spool` (a local SQLite file); while the spool holds anything, new batches
queue behind it there, and the pump replays it, oldest first, once Redis
answers. Nothing is lost unless the spool fills (`spool_max_records`; then
batches are dropped and counted).

No duplicates: a batch carries its writer id (one per ledger instance) and a
sequence number; the script applies it only above the writer's high-water
mark `prefix + "ledger:applied:" + writer`, moved in the same atomic step.
So a batch whose reply was lost (Redis killed or frozen after applying it) is
skipped when replayed. A writer's batches are sent one at a time, in order.

Reads: `proxy.ledger.redis_read`; records in the deque or the spool are not
visible until written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from middleware.stores.breaker import Breaker
from middleware.stores.redis_client import DEFAULT_PREFIX, FAILED, OnRedis, RedisOps, make_client
from proxy.experiments.report import ExperimentRow
from proxy.ledger import codec
from proxy.ledger.aggregate import UsageRow
from proxy.ledger.base import DEFAULT_LIMIT, DEFAULT_MAX_PENDING, check_dimensions, check_limit
from proxy.ledger.record import CallRecord
from proxy.ledger.redis_read import StreamReader
from proxy.ledger.spool import DEFAULT_MAX_RECORDS, Batch, Spool

logger = logging.getLogger("sluice.ledger")

BATCH_SIZE = 200  # records per script call: ~120 kB, and ~2 ms of the event loop to pack and send
LINGER_S = 0.05
RETRY_S = 1.0  # how often the spool is retried while Redis fails (the breaker may skip the attempt)
MAXLEN = 1_000_000
APPLIED_TTL_S = 7 * 86400  # a writer's mark outlives it by a week: a spool replayed later may duplicate

# KEYS: stream, mark. ARGV: seq, maxlen, mark ttl, record... Returns how many were added (0: already applied).
_APPLY = """
local applied = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= applied then return 0 end
for i = 4, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'record', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return #ARGV - 3
"""


class RedisLedger(OnRedis):
    """A `Ledger` in a Redis stream shared by replicas, spooling to `spool_path` while Redis is away.

    `record` must be called on the event loop's thread. `client` is a URL
    (a fail-fast client is made, see `make_client`) or a redis-py client.
    """

    def __init__(
        self,
        client: Redis | str,
        op_timeout_s: float = 0.5,
        prefix: str = DEFAULT_PREFIX,
        spool_path: str = "sluice.db.spool",
        *,
        store_text: bool = False,
        breaker: Breaker | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        batch_size: int = BATCH_SIZE,
        linger_s: float = LINGER_S,
        retry_s: float = RETRY_S,
        maxlen: int = MAXLEN,
        spool_max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        if isinstance(client, str):
            client = make_client(client, op_timeout_s, max_connections=8)
        self._counts = dict.fromkeys(("recorded", "written", "spooled", "replayed", "dropped", "duplicates"), 0)
        self._ops = RedisOps(client, op_timeout_s=op_timeout_s, breaker=breaker or Breaker(), stats=self._counts)
        self.store_text = store_text
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.maxlen = maxlen
        self.writer = secrets.token_hex(8)
        self.spool = Spool(spool_path, spool_max_records)
        self._prefix = prefix
        self._stream = prefix + "ledger"
        self._reader = StreamReader(self._ops, self._stream)
        self._apply_script = client.register_script(_APPLY)
        self._seq = 0
        self._pending: deque[CallRecord] = deque()
        self._wake = asyncio.Event()  # records or a flush arrived
        self._urgent = asyncio.Event()  # a flush or aclose waits: no lingering
        self._pump: asyncio.Task[None] | None = None
        self._spool_ok = False
        self._retry_at = 0.0  # event-loop time of the next replay attempt
        self._handled = 0  # records the pump has sent, spooled or dropped
        self._replays = 0  # replay attempts made
        self._progress = asyncio.Condition()  # the pump notifies after each step
        self._flushing = 0  # flushes waiting
        self._closing = False
        self._closed = False

    @property
    def stats(self) -> dict[str, int]:
        """The counters: recorded, written, spooled, replayed, dropped, duplicates, errors, skipped, pending, spool.

        written: sent to Redis at the first try; spooled / replayed: put in /
        sent from the spool; duplicates: replayed records Redis already held
        (not added twice); errors / skipped: failed Redis operations / ones
        the breaker skipped; pending: in memory; spool: in the spool now.
        """
        return {**self._counts, "pending": len(self._pending), "spool": self.spool.records}

    def record(self, rec: CallRecord) -> None:
        """Queue `rec` for the pump; drop it (counted) when closed or `max_pending` are held."""
        try:
            if self._closing or len(self._pending) >= self.max_pending:
                self._counts["dropped"] += 1
                return
            self._pending.append(rec)
            self._counts["recorded"] += 1
            self._wake.set()
        except Exception:  # never let the ledger fail a call
            self._counts["dropped"] += 1

    async def start(self) -> None:
        """Open the spool (adopting orphaned ones) and start the pump; a spool that cannot open is logged."""
        if self._pump is not None:
            return
        try:
            waiting = await asyncio.to_thread(self.spool.open)
        except Exception as exc:  # OSError, sqlite3.Error: no spool, so an outage drops records (counted)
            logger.error("ledger spool %s cannot be opened: %s", self.spool.base_path, exc)
        else:
            self._spool_ok = True
            if waiting:
                logger.warning("ledger spool %s: %d records to replay to Redis", self.spool.path, waiting)
        self._pump = asyncio.create_task(self._run(), name="sluice-ledger-pump")

    async def flush(self) -> None:
        """Wait until every record taken so far was sent or spooled, then for one replay of a non-empty spool."""
        pump = self._pump
        if pump is None or pump.done():
            return
        target = self._counts["recorded"]
        self._flushing += 1
        self._urgent.set()
        self._wake.set()
        try:
            async with self._progress:
                await self._progress.wait_for(lambda: self._handled >= target or pump.done())
                if self.spool.records and self._spool_ok:
                    replays = self._replays
                    self._retry_at = 0.0
                    self._wake.set()
                    await self._progress.wait_for(lambda: self._replays > replays or pump.done())
        finally:
            self._flushing -= 1

    async def aclose(self) -> None:
        """Send or spool what is queued, try the spool once more, stop the pump, close; never raises."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.start()  # records taken before start are sent too
        self._closing = True
        self._retry_at = 0.0
        self._urgent.set()
        self._wake.set()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await self._pump
        if self._spool_ok:
            await asyncio.to_thread(self.spool.close)
        await self._ops.aclose()

    def state(self) -> str:
        """ "down" while Redis fails or the breaker skips it (records go to the spool), else "up"."""
        return self._ops.state()

    async def calls(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        before: str | None = None,
        request_id: str | None = None,
        key_id: str | None = None,
        provider: str | None = None,
        status: int | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        """Recent calls, newest written first; the cursor is a stream id (see `StreamReader.calls`)."""
        wanted = {"request_id": request_id, "key_id": key_id, "provider": provider, "status": status}
        return await self._reader.calls(check_limit(limit), before, wanted)

    async def usage(self, *, since: float, by: Sequence[str]) -> list[UsageRow]:
        """Usage rows since `since`, summed in Python from the stream (see `StreamReader.usage`)."""
        return await self._reader.usage(since, check_dimensions(by))

    async def experiments(self, *, since: float) -> list[ExperimentRow]:
        """The A/B report since `since`, counted in Python from the stream (see `StreamReader.experiments`)."""
        return await self._reader.experiments(since)

    # --- the pump ----------------------------------------------------------

    async def _run(self) -> None:
        try:
            while await self._step():
                await self._notify()
        finally:
            await self._notify()  # a flush waiting on a pump that ended returns

    async def _step(self) -> bool:
        """One thing the pump does: replay, send a batch, or wait. False when it is time to stop."""
        loop = asyncio.get_running_loop()
        self._wake.clear()
        try:
            if self.spool.records and self._spool_ok and loop.time() >= self._retry_at:
                await self._replay()
            elif self._pending:
                await self._linger()
                await self._send_next()
            elif self._closing:
                return False
            else:
                wait = max(0.0, self._retry_at - loop.time()) if self.spool.records else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        except Exception:  # a bug, not Redis (which never raises here): keep the pump alive
            logger.exception("ledger: the pump failed a step")
            await asyncio.sleep(self.retry_s)
        return True

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _linger(self) -> None:
        """Give a small batch `linger_s` to grow, unless a flush or aclose is waiting."""
        if len(self._pending) >= self.batch_size or self._flushing or self._closing:
            return
        self._urgent.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._urgent.wait(), self.linger_s)

    async def _send_next(self) -> None:
        """Send the next batch to Redis, or behind the spooled ones when there are any (order is kept)."""
        records = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        landed = 0
        try:
            payloads = await asyncio.to_thread(codec.encode_all, records, self.store_text)
            if not payloads:
                return
            self._seq += 1
            batch = Batch(self.writer, self._seq, payloads)
            if not self.spool.records and await self._apply(batch):
                self._counts["written"] += len(payloads)
                landed = len(payloads)
            elif await self._spool(batch):
                landed = len(payloads)
        finally:
            self._counts["dropped"] += len(records) - landed
            self._handled += len(records)

    async def _spool(self, batch: Batch) -> bool:
        """Append `batch` to the spool; False when it cannot take it (the caller counts it dropped)."""
        self._retry_at = max(self._retry_at, asyncio.get_running_loop().time() + self.retry_s)
        if not self.spool.records:
            logger.warning("ledger: Redis does not answer; records go to the spool %s", self.spool.path)
        spooled = False
        if self._spool_ok:
            try:
                spooled = await asyncio.to_thread(self.spool.append, batch)
            except Exception as exc:  # OSError, sqlite3.Error
                logger.error("ledger spool %s: cannot append: %s", self.spool.path, exc)
        if spooled:
            self._counts["spooled"] += len(batch.payloads)
        else:
            logger.error("ledger: %d records dropped (Redis away, spool full or unusable)", len(batch.payloads))
        return spooled

    async def _replay(self) -> None:
        """Send spooled batches, oldest first, until the spool is empty or Redis fails."""
        try:
            while (batch := await asyncio.to_thread(self.spool.oldest)) is not None:
                if not await self._apply(batch):
                    self._retry_at = asyncio.get_running_loop().time() + self.retry_s
                    return
                await asyncio.to_thread(self.spool.remove, batch)
                self._counts["replayed"] += len(batch.payloads)
            logger.info("ledger: the spool is replayed to Redis")
        except Exception as exc:  # the spool file failed: try again later
            logger.error("ledger spool %s: cannot replay: %s", self.spool.path, exc)
            self._retry_at = asyncio.get_running_loop().time() + self.retry_s
        finally:
            self._replays += 1

    async def _apply(self, batch: Batch) -> bool:
        """Run the script for `batch`: True when Redis holds it now (added, or added before)."""
        keys = [self._stream, f"{self._prefix}ledger:applied:{batch.writer}"]
        args: list[Any] = [batch.seq, self.maxlen, APPLIED_TTL_S, *batch.payloads]
        result = await self._ops.call(lambda: self._apply_script(keys=keys, args=args))
        if result == 0:  # Redis already held it: a reply lost to a kill or a freeze
            self._counts["duplicates"] += len(batch.payloads)
        return result is not FAILED
