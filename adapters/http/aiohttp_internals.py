"""Every place teebus reaches past aiohttp's public API, kept here so an upgrade is checked once.

pyproject.toml pins aiohttp to the range the tests exercise (>=3.14,<3.15); each piece says why
the public API does not suffice:

- `request_factory`: the low-level `web.Server` (adapters/http/routes.py says why sites use it)
  has no `client_max_size` option, so each site's body limit goes through the `request_factory`
  hook, whose signature is internal (aiohttp 3.14: message, payload, protocol, writer, task).
- `send_continue`: an interim `100 Continue` written straight to the transport must not count
  towards the response's size, which aiohttp keeps in `writer.output_size`.
- `SiteServer` / `SiteProtocol` (subclasses of `web.Server` and of `web_protocol.RequestHandler`):
  aiohttp answers the errors of its own HTTP parser (missing Host, a header over 8190 bytes, bad
  chunking, ...) in `RequestHandler.handle_error` with a `text/plain` body that quotes the raw
  request, and logs it with a traceback that quotes it again, credentials included. The protocol
  here renders those errors through the site's callback instead (the API's error shape, a message
  of our own, one log line) and never logs a traceback (`log_exception`). It also admits a
  connection only under the site's and the process's connection caps (`ConnectionCaps`): aiohttp
  has no connection limit at all.
- `skip_rest_of_body`: once a body is refused half-read, aiohttp would keep reading it for its
  lingering time (and, after a parser error, log a traceback); the protocol's lingering time is
  not public.
- `TCPSite`: `web.TCPSite` passes no `ssl_handshake_timeout` to `loop.create_server`; a client
  that opens a TLS connection and never completes the handshake would hold it for asyncio's
  default of 60 s.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import (BadHttpMessage, BadHttpMethod, BadStatusLine, ContentEncodingError,
                                     ContentLengthError, HttpProcessingError, InvalidHeader, InvalidURLError,
                                     LineTooLong, TransferEncodingError)
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

RequestFactory = Callable[..., web.BaseRequest]
ErrorResponder = Callable[[int, str, Any], web.StreamResponse]   # status, message, peer -> response
FaultLogger = Callable[[str, "BaseException | None"], None]      # what failed, the exception
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PAYLOAD_ERRORS = (RequestPayloadError, HttpProcessingError)   # what reading a malformed body raises
# llhttp's reason for a parse error, without the raw bytes aiohttp appends to it
_LLHTTP_REASON = re.compile(r"^(?:Bad status line:\n\s*)?([A-Za-z][A-Za-z0-9 ,'()_-]{0,80}?):\n")


def request_factory(body_limit: int) -> RequestFactory:
    """Requests whose `read()` stops (413) past `body_limit` bytes."""
    loop = asyncio.get_running_loop()

    def make_request(message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                     writer: AbstractStreamWriter, task: "asyncio.Task[None]") -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=body_limit)

    return make_request


async def send_continue(request: web.BaseRequest) -> None:
    """Write `100 Continue` before the body is read; it is not part of the reply's size."""
    await request.writer.write(CONTINUE)
    request.writer.output_size = 0


def skip_rest_of_body(request: web.BaseRequest) -> None:
    """The body was refused part-way: after the reply, close the connection at once instead of
    reading (lingering over) the rest of the body."""
    protocol = request.protocol
    if isinstance(protocol, RequestHandler):
        protocol._lingering_time = 0.0


# -- errors of aiohttp's HTTP parser, in words of our own ----------------------------------------------

def _raised_in(exc: BaseException, function: str) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if function in traceback.tb_frame.f_code.co_name:
            return True
        traceback = traceback.tb_next
    return False


def _reason(exc: HttpProcessingError) -> str:
    """llhttp's own reason (a fixed text), never the request bytes aiohttp quotes after it."""
    match = _LLHTTP_REASON.match(exc.message or "")
    return f" ({match.group(1)})" if match else ""


def describe_parse_error(exc: BaseException, max_field_size: int = 8190, max_headers: int = 128) -> tuple[int, str]:
    """The status and a message for an error of aiohttp's parser. The message never quotes the
    request: aiohttp's own messages carry its bytes, credentials included."""
    if isinstance(exc, LineTooLong):
        if _raised_in(exc, "on_url"):
            return 414, f"the request line is longer than {max_field_size} bytes"
        return 431, f"a header line is longer than {max_field_size} bytes"
    if isinstance(exc, BadHttpMethod):
        if "HTTPS" in (exc.message or ""):
            return 400, "TLS arrived on a plain HTTP port; use http://"
        return 400, f"malformed request line: the method is not valid{_reason(exc)}"
    if isinstance(exc, BadStatusLine):
        return 400, f"malformed request line{_reason(exc)}; send `METHOD /path HTTP/1.1` and CRLF line ends"
    if isinstance(exc, InvalidURLError):
        return 400, f"malformed request target{_reason(exc)}"
    if isinstance(exc, InvalidHeader):
        return 400, "a header is malformed (its name or value holds characters HTTP does not allow)"
    if isinstance(exc, ContentEncodingError):
        return 415, "the body's Content-Encoding is not supported; send it uncompressed"
    if isinstance(exc, TransferEncodingError):
        return 400, f"the chunked body is malformed{_reason(exc)}"
    if isinstance(exc, ContentLengthError):
        return 400, "the body is shorter than its Content-Length"
    if isinstance(exc, BadHttpMessage):
        message = exc.message or ""
        if message.startswith("Too many headers"):
            return 431, f"more than {max_headers} headers"
        if message.startswith("Too many trailers"):
            return 431, f"more than {max_headers} trailers"
        if message.startswith("Missing 'Host'"):
            return 400, "the Host header is missing (HTTP/1.1 requires it)"
        if message.startswith("Duplicate '"):
            return 400, "a header that may appear once appears more than once"
        if "Transfer-Encoding" in message or "chunk" in message.lower():
            return 400, f"the Transfer-Encoding or chunked body is malformed{_reason(exc)}"
        return 400, f"malformed request{_reason(exc)}"
    if isinstance(exc, HttpProcessingError):
        return (exc.code if 400 <= exc.code < 500 else 400), "malformed request"
    return 400, "malformed request"


def describe(exc: BaseException) -> str:
    """A body error in words of our own (aiohttp's may quote request bytes)."""
    cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else exc
    if isinstance(cause, (HttpProcessingError, LineTooLong)):
        return describe_parse_error(cause)[1]
    return "the body could not be read as HTTP framed it"


# -- connections -----------------------------------------------------------------------------------------

class ConnectionBudget:
    """The connections all sites of one server may hold together; the last `reserve` of them only
    for internal sites, so that a flood on external ports never starves internal work."""

    def __init__(self, total: int, reserve: int = 0) -> None:
        self.total = total
        self.reserve = min(reserve, total - 1) if total > 1 else 0
        self.open = 0

    def take(self, internal: bool) -> bool:
        if self.open >= (self.total if internal else self.total - self.reserve):
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


@dataclass(frozen=True)
class ConnectionCaps:
    """How one site's connections are bounded."""

    max_connections: int             # open at once on this site
    budget: ConnectionBudget         # shared by all sites of the server
    internal: bool                   # may use the budget's reserve
    refusal: bytes                   # written to a connection refused over a cap, then closed
    idle_timeout: float              # keep-alive idle, and the deadline for a request's headers


class SiteServer(web.Server):
    """aiohttp's low-level server, with a connection cap and the site's own error rendering."""

    def __init__(self, handler: Callable, *, request_factory: RequestFactory, caps: ConnectionCaps,
                 on_error: ErrorResponder, on_fault: FaultLogger, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", caps.idle_timeout)
        super().__init__(handler, request_factory=request_factory, **kwargs)
        self.caps = caps
        self.on_error = on_error
        self.on_fault = on_fault
        self.open = 0                 # admitted connections of this site
        self.refused = 0              # connections closed at once over a cap (since start)
        self._protocol_options = kwargs

    def __call__(self) -> "SiteProtocol":
        return SiteProtocol(self, loop=self._loop, **self._protocol_options)

    def admit(self) -> bool:
        caps = self.caps
        if self.open >= caps.max_connections or not caps.budget.take(caps.internal):
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
        self.caps.budget.give_back()


class SiteProtocol(RequestHandler):
    """One connection of a site (see the module docstring)."""

    __slots__ = ("_admitted", "_site_server")

    def __init__(self, manager: SiteServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._admitted = False
        self._site_server = manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._site_server
        if not server.admit():
            transport.write(server.caps.refusal)   # type: ignore[attr-defined]
            transport.close()
            self._manager = None                   # aiohttp's connection_lost then does nothing
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._site_server.release()
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, (HttpProcessingError, LineTooLong)):
            status, text = describe_parse_error(exc, self.max_field_size, self.max_headers)
        elif status == 504:
            text = "the request timed out"
        else:
            status, text = 500, "internal error"
            self._site_server.on_fault("request handler failed", exc)
        if request.writer.output_size > 0:   # a reply is on its way already: the connection is broken
            raise ConnectionError("a response was sent already")
        response = self._site_server.on_error(status, text, request.remote)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        what = args[0] % args[1:] if len(args) > 1 else (args[0] if args else "error")
        exc = kwargs.get("exc_info")
        self._site_server.on_fault(str(what), exc if isinstance(exc, BaseException) else None)


class TCPSite(web.TCPSite):
    """`web.TCPSite` with a deadline for the TLS handshake (see the module docstring)."""

    def __init__(self, *args: Any, ssl_handshake_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timeout = ssl_handshake_timeout

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
