"""RedisLedger: every replica writes one shared ledger, a Redis stream; an outage spools to disk, losing nothing.

Writes: `record` hands the record to the pump (`proxy.ledger.redis_pump`),
which sends batches through one Lua script here, or spools them while Redis
is away. The script does an XADD per record (one field, "record") to `prefix
+ "ledger"`, trimmed by `MAXLEN ~ maxlen` (roughly the newest million calls
are kept; older ones leave /sluice/usage). Lua rather than WATCH/MULTI: one
round trip, and nothing (no UNWATCH) left to hang on a frozen Redis when the
deadline cancels it; fakeredis without `lupa` cannot run it, so tests use
redis-server.

No duplicates: a batch carries its writer id (one per ledger instance) and a
sequence number; the script applies it only above the writer's high-water
mark `prefix + "ledger:applied:" + writer`, moved in the same atomic step.
So a batch whose reply was lost (Redis killed or frozen after applying it) is
skipped when replayed.

Reads: `proxy.ledger.redis_read`; records in the pump or the spool are not
visible until written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from middleware.stores.breaker import Breaker
from middleware.stores.redis_client import DEFAULT_PREFIX, FAILED, OnRedis, RedisOps, make_client
from proxy.experiments.report import ExperimentRow
from proxy.ledger.aggregate import UsageRow
from proxy.ledger.base import DEFAULT_LIMIT, DEFAULT_MAX_PENDING, check_dimensions, check_limit
from proxy.ledger.record import CallRecord
from proxy.ledger.redis_pump import Pump
from proxy.ledger.redis_read import StreamReader
from proxy.ledger.spool import DEFAULT_MAX_RECORDS, Batch, Spool

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
        self.maxlen = maxlen
        self.spool = Spool(spool_path, spool_max_records)
        self._prefix = prefix
        self._stream = prefix + "ledger"
        self._reader = StreamReader(self._ops, self._stream)
        self._apply_script = client.register_script(_APPLY)
        self._pump = Pump(
            self._apply,
            self.spool,
            self._counts,
            store_text=store_text,
            max_pending=max_pending,
            batch_size=batch_size,
            linger_s=linger_s,
            retry_s=retry_s,
        )
        self._closed = False

    @property
    def stats(self) -> dict[str, int]:
        """The counters: recorded, written, spooled, replayed, dropped, duplicates, errors, skipped, pending, spool.

        written: sent to Redis at the first try; spooled / replayed: put in /
        sent from the spool; duplicates: replayed records Redis already held
        (not added twice); errors / skipped: failed Redis operations / ones
        the breaker skipped; pending: in memory; spool: in the spool now.
        """
        return {**self._counts, "pending": self._pump.pending, "spool": self.spool.records}

    def record(self, rec: CallRecord) -> None:
        """Queue `rec` for the pump; drop it (counted) when closed or `max_pending` are held."""
        self._pump.record(rec)

    async def start(self) -> None:
        """Open the spool (adopting orphaned ones) and start the pump; a spool that cannot open is logged."""
        await self._pump.start()

    async def flush(self) -> None:
        """Wait until every record taken so far was sent or spooled, then for one replay of a non-empty spool."""
        await self._pump.flush()

    async def aclose(self) -> None:
        """Send or spool what is queued, try the spool once more, stop the pump, close; never raises."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.start()  # records taken before start are sent too
        await self._pump.stop()
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

    async def _apply(self, batch: Batch) -> bool:
        """Run the script for `batch`: True when Redis holds it now (added, or added before)."""
        keys = [self._stream, f"{self._prefix}ledger:applied:{batch.writer}"]
        args: list[Any] = [batch.seq, self.maxlen, APPLIED_TTL_S, *batch.payloads]
        result = await self._ops.call(lambda: self._apply_script(keys=keys, args=args))
        if result == 0:  # Redis already held it: a reply lost to a kill or a freeze
            self._counts["duplicates"] += len(batch.payloads)
        return result is not FAILED
