"""The Redis ledger's pump: one background task that gets records to Redis in order, spooling them while it is away.

`record` appends to a deque and returns. The pump takes up to `batch_size`
records (lingering `linger_s` so a trickle still forms batches), encodes them
to JSON in a worker thread and hands each batch, numbered by `writer` and a
sequence, to `send` (`RedisLedger`'s script, which applies a batch once).

Outage: a batch that fails (refused, timed out, breaker open) goes to the
`Spool` (a local SQLite file); while the spool holds anything, new batches
queue behind it there, and the pump replays it, oldest first, once Redis
answers. Nothing is lost unless the spool fills (its `max_records`; then
batches are dropped and counted). A writer's batches are sent one at a time,
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable

from proxy.ledger import codec
from proxy.ledger.record import CallRecord
from proxy.ledger.spool import Batch, Spool

logger = logging.getLogger("sluice.ledger")


class Pump:
    """Takes records and sends them in batches through `send`, or to `spool` while `send` fails.

    `send(batch)` is True when Redis holds the batch. `counts` is the ledger's
    counters, to which the pump adds recorded, written, spooled, replayed and
    dropped. `record` must be called on the event loop's thread.
    """

    def __init__(
        self,
        send: Callable[[Batch], Awaitable[bool]],
        spool: Spool,
        counts: dict[str, int],
        *,
        store_text: bool,
        max_pending: int,
        batch_size: int,
        linger_s: float,
        retry_s: float,
    ) -> None:
        self._send = send
        self.spool = spool
        self._counts = counts
        self.store_text = store_text
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.writer = secrets.token_hex(8)
        self._seq = 0
        self._pending: deque[CallRecord] = deque()
        self._wake = asyncio.Event()  # records or a flush arrived
        self._urgent = asyncio.Event()  # a flush or stop waits: no lingering
        self._task: asyncio.Task[None] | None = None
        self._spool_ok = False
        self._retry_at = 0.0  # event-loop time of the next replay attempt
        self._handled = 0  # records the pump has sent, spooled or dropped
        self._replays = 0  # replay attempts made
        self._progress = asyncio.Condition()  # the pump notifies after each step
        self._flushing = 0  # flushes waiting
        self._closing = False

    @property
    def pending(self) -> int:
        """Records taken and not yet sent, spooled or dropped."""
        return len(self._pending)

    def record(self, rec: CallRecord) -> None:
        """Queue `rec`; drop it (counted) when stopping or `max_pending` are held."""
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
        """Open the spool (adopting orphaned ones) and start the task; a spool that cannot open is logged."""
        if self._task is not None:
            return
        try:
            waiting = await asyncio.to_thread(self.spool.open)
        except Exception as exc:  # OSError, sqlite3.Error: no spool, so an outage drops records (counted)
            logger.error("ledger spool %s cannot be opened: %s", self.spool.base_path, exc)
        else:
            self._spool_ok = True
            if waiting:
                logger.warning("ledger spool %s: %d records to replay to Redis", self.spool.path, waiting)
        self._task = asyncio.create_task(self._run(), name="sluice-ledger-pump")

    async def flush(self) -> None:
        """Wait until every record taken so far was sent or spooled, then for one replay of a non-empty spool."""
        task = self._task
        if task is None or task.done():
            return
        target = self._counts["recorded"]
        self._flushing += 1
        self._urgent.set()
        self._wake.set()
        try:
            async with self._progress:
                await self._progress.wait_for(lambda: self._handled >= target or task.done())
                if self.spool.records and self._spool_ok:
                    replays = self._replays
                    self._retry_at = 0.0
                    self._wake.set()
                    await self._progress.wait_for(lambda: self._replays > replays or task.done())
        finally:
            self._flushing -= 1

    async def stop(self) -> None:
        """Send or spool what is queued, try the spool once more, end the task and close the spool."""
        self._closing = True
        self._retry_at = 0.0
        self._urgent.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._spool_ok:
            await asyncio.to_thread(self.spool.close)

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
        """Give a small batch `linger_s` to grow, unless a flush or stop is waiting."""
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
            if not self.spool.records and await self._send(batch):
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
                if not await self._send(batch):
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
