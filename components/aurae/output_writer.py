"""One process's lines on their way into AURAE_OUTPUT, in order, without ever holding the process up.

`process.run` calls `on_output` from the loop reading the process's pipes; a slow callback would
slow reading and, through a full pipe, the process. So `line()` only queues, bounded in bytes
(QUEUE_BYTES per process, and TOTAL_QUEUE_BYTES over all processes of this runtime, each line
counted with LINE_OVERHEAD; past either, a line is dropped and counted), and one task per process
publishes the queue in order with `publish_async` (one connection keeps publication order, so the
stream keeps print order), with at most ACK_WINDOW messages awaiting their acknowledgement.

Batches: the server writes every message to disk before acknowledging it (nats.conf's
`sync_interval: always`: a few thousand messages a second on a small machine, for everything it
stores). So what accumulated while the window was full goes out together: one message per channel
holding up to BATCH_LINES lines (BATCH_BYTES), as JSON lines (LogItem objects separated by "\n";
orjson never writes a raw newline). A quiet process's message is a single LogItem.

The start record goes first (its sequence orders this run after any earlier one of the same pid).
`finish()` returns as soon as the start record is stored (acknowledged: observe finds the pid from
then on; it was sent when the process started, so this rarely waits): the caller answers then.
The queue drains, and the end markers and the record's end (with how many lines were dropped or
not stored) follow in the background; `drained()` waits for that, at most FINISH_SECONDS. A
reader that came before the end markers follows the stream live until they arrive, so answering
before they are stored loses it nothing, and spares the caller three fsyncs (about 2.4 of the 8.8
ms a RunExecutable of `true` took; bench/aurae_run.py).
"""

from __future__ import annotations

import asyncio
from collections import deque

import orjson
from nats.js.client import JetStreamContext

from bus import log
from components.aurae import subjects
from components.aurae.output_store import CHANNELS, DROPPED, END, START, ProcessRecord, end_body, proc_subject

QUEUE_BYTES = 4 * 1024 * 1024          # a burst of ~30,000 short lines fits
TOTAL_QUEUE_BYTES = 64 * 1024 * 1024
LINE_OVERHEAD = 128                    # a queued line's objects beside its bytes
ACK_WINDOW = 16
BATCH_LINES = 1024
BATCH_BYTES = 256 * 1024
ACK_SECONDS = 10.0
FINISH_SECONDS = 10.0

_log = log.get_logger("aurae.output")


class QueueBudget:
    """The bytes all writers of one runtime may hold queued at once."""

    def __init__(self, limit: int = TOTAL_QUEUE_BYTES) -> None:
        self.limit = limit
        self.used = 0


class ProcessOutput:
    """The writer of one process's output; create it when the process starts (`record`)."""

    def __init__(self, js: JetStreamContext, record: ProcessRecord, budget: QueueBudget) -> None:
        self.record = record
        self.failed = 0                         # lines the stream did not acknowledge
        self._js = js
        self._budget = budget
        self._subjects = {channel: subjects.output(record.host, record.pid, channel) for channel in CHANNELS}
        self._queue: deque[tuple[str, bytes]] = deque()            # (channel, LogItem JSON)
        self._queued_bytes = 0
        self._closing = False
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._start_sent: asyncio.Future[None] = loop.create_future()
        self._start_ack: asyncio.Future = loop.create_future()      # replaced by publish_async's
        self._pump = asyncio.create_task(self._run(), name=f"aurae output {record.pid}")

    def line(self, channel: str, line: str, timestamp_ns: int) -> None:
        """Queue one line (never waits); dropped and counted when the queue is full."""
        data = orjson.dumps({"channel": channel, "line": line, "timestamp": timestamp_ns})
        cost = len(data) + LINE_OVERHEAD
        if (self._closing or self._queued_bytes + cost > QUEUE_BYTES
                or self._budget.used + cost > self._budget.limit):
            self.record.dropped += 1
            return
        self._queue.append((channel, data))
        self._queued_bytes += cost
        self._budget.used += cost
        self._ready.set()

    async def finish(self, status: str, message: str, exit_code: str) -> ProcessRecord:
        """Close the record with how the process ended; returns it once its start is stored."""
        record = self.record
        record.ended, record.status, record.message, record.exit_code = True, status, message, exit_code
        self._closing = True
        self._ready.set()
        await self._start_stored()
        return record

    async def drained(self) -> None:
        """Wait until the lines, the end markers and the end record are stored (at most FINISH_SECONDS)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), FINISH_SECONDS)
        except asyncio.TimeoutError:
            _log.warning("process output still not stored; giving up on the rest", pid=self.record.pid,
                         queued=len(self._queue))
            await self.cancel()
        except asyncio.CancelledError:       # the component is stopping: the writer goes with it
            self._abandon()
            raise
        except Exception:
            _log.exception("process output writer failed", pid=self.record.pid)

    async def _start_stored(self) -> None:
        """Wait for the start record's acknowledgement (bounded), and note its sequence."""
        try:
            await asyncio.wait_for(asyncio.shield(self._start_sent), ACK_SECONDS)
            if self._start_ack.cancelled():               # abandoned before it was sent
                return
            self.record.start_seq = (await asyncio.wait_for(asyncio.shield(self._start_ack), ACK_SECONDS)).seq
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("process record not stored", pid=self.record.pid, error=repr(exc))

    async def cancel(self) -> None:
        self._abandon()
        await asyncio.gather(self._pump, return_exceptions=True)

    def _abandon(self) -> None:
        """Stop publishing; what is still queued is given up (and its bytes returned to the budget)."""
        self._pump.cancel()
        if not self._start_sent.done():
            self._start_sent.set_result(None)
            self._start_ack.cancel()
        self._queue.clear()
        self._release(self._queued_bytes)

    def _release(self, cost: int) -> None:
        self._queued_bytes -= cost
        self._budget.used -= cost

    async def _run(self) -> None:
        record = self.record
        try:
            self._start_ack = await self._js.publish_async(proc_subject(record.host, record.pid), record.to_json(),
                                                           headers={START: str(record.started_ns)})
        except Exception as exc:
            self._start_ack.set_exception(exc)
        finally:
            if not self._start_sent.done():
                self._start_sent.set_result(None)
        pending: deque[tuple[asyncio.Future, int]] = deque()     # (ack, lines in that message)
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._ready.clear()
                await self._ready.wait()
                continue
            for channel, lines in self._batch().items():
                try:
                    ack = await self._js.publish_async(self._subjects[channel], b"\n".join(lines))
                    pending.append((ack, len(lines)))
                except Exception:
                    self.failed += len(lines)
            while len(pending) >= ACK_WINDOW:
                await self._settle(*pending.popleft())
        while pending:
            await self._settle(*pending.popleft())
        await self._end()

    def _batch(self) -> dict[str, list[bytes]]:
        """What is queued, up to a batch, per channel in order."""
        batch: dict[str, list[bytes]] = {}
        count = size = 0
        while self._queue and count < BATCH_LINES and size < BATCH_BYTES:
            channel, data = self._queue.popleft()
            self._release(len(data) + LINE_OVERHEAD)
            batch.setdefault(channel, []).append(data)
            count, size = count + 1, size + len(data) + 1
        return batch

    async def _end(self) -> None:
        """Both end markers and the end record, sent together and then acknowledged."""
        await self._start_stored()                       # the end record carries start_seq
        record = self.record
        record.dropped += self.failed
        body = orjson.dumps(end_body(record))
        hdrs = {END: record.status, **({DROPPED: str(record.dropped)} if record.dropped else {})}
        ends = [(subject, body) for subject in self._subjects.values()]
        ends.append((proc_subject(record.host, record.pid), record.to_json()))
        acks = []
        for subject, data in ends:
            try:
                acks.append((subject, await self._js.publish_async(subject, data, headers=dict(hdrs))))
            except Exception as exc:
                _log.warning("process end not sent", pid=record.pid, subject=subject, error=repr(exc))
        for subject, ack in acks:
            try:
                await asyncio.wait_for(ack, ACK_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("process end not stored", pid=record.pid, subject=subject, error=repr(exc))

    async def _settle(self, ack: asyncio.Future, lines: int) -> None:
        try:
            await asyncio.wait_for(ack, ACK_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failed += lines
