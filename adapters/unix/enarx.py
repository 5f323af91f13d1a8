"""A keep's Unix socket: the same conversation as `POST /keep/<kuuid>`, one CBOR item in, one out.

A local tool writes CBOR items to `<data-dir>/keeps/<kuuid>.sock`; each complete item travels as
raw bytes on `enarx.keep.<kuuid>` and the loader's reply is written back. Errors come back as a
CBOR LocalCborErr. An item that does not decode ends the connection (the stream cannot be resynced);
so does an item larger than the limit, a partial item at end of stream, or an idle connection.
"""

from __future__ import annotations

import asyncio

import cbor2

from adapters.unix.server import UnixServer
from bus import codec, log
from bus.errors import BadRequest, BusError
from bus.headers import OCTETS
from bus.requester import Requester
from components.enarx import messages, subjects

MAX_ITEM_BYTES = 8 * 1024 * 1024
IDLE_TIMEOUT = 300.0
READ_CHUNK = 64 * 1024
_log = log.get_logger("adapters.unix.enarx")


Incomplete = codec.Incomplete   # the buffer holds the start of an item, not all of it


def split_item(buffer: bytes) -> tuple[bytes, bytes]:
    """The first complete CBOR item in `buffer` and what follows it, decoded strictly as every CBOR
    body is (bus/codec.py); Incomplete, or BadRequest when it does not decode."""
    return codec.split_cbor(buffer)


class KeepSocket:
    """Serves one keep's socket, forwarding items to its loader over the bus."""

    def __init__(self, path, kuuid: str, requester: Requester, max_item: int = MAX_ITEM_BYTES,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.kuuid = kuuid
        self._requester = requester
        self._max_item = max_item
        self._idle = idle_timeout
        self.server = UnixServer(path, self._serve, limit=max_item)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while True:
                try:
                    item, buffer = split_item(buffer) if buffer else (None, buffer)
                except Incomplete:
                    item = None
                except BadRequest as exc:
                    await self._reply(writer, cbor2.dumps(messages.error(
                        f"this is not CBOR we accept ({exc.message}); the connection closes, reconnect and "
                        "send one CBOR item")))
                    return
                if item is not None:
                    await self._reply(writer, await self._forward(item))
                    continue
                if len(buffer) > self._max_item:
                    await self._reply(writer, cbor2.dumps(messages.error(
                        f"an item larger than {self._max_item} bytes is refused; the connection closes")))
                    return
                chunk = await asyncio.wait_for(reader.read(READ_CHUNK), self._idle)
                if not chunk:
                    if buffer:
                        await self._reply(writer, cbor2.dumps(messages.error(
                            f"the stream ended inside a CBOR item ({len(buffer)} bytes of it arrived)")))
                    return
                buffer += chunk
        except asyncio.TimeoutError:
            _log.info("idle keep socket connection closed", kuuid=self.kuuid)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def _forward(self, item: bytes) -> bytes:
        try:
            reply = await self._requester.request(subjects.keep(self.kuuid), item, content_type=OCTETS)
        except BusError as exc:
            return cbor2.dumps(messages.error(exc.message))
        return reply.data

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
