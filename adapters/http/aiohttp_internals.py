"""The two places teebus reaches past aiohttp's public API, kept here so an upgrade is checked once.

Sites run on aiohttp's low-level `web.Server` (adapters/http/routes.py says why). That server has no
`client_max_size` option, so each site's body limit is set through the `request_factory` hook,
whose signature is internal (aiohttp 3.14: message, payload, protocol, writer, task). And an
interim `100 Continue` written straight to the transport must not count towards the response's
size, which aiohttp keeps in `writer.output_size`. pyproject.toml pins aiohttp to the range the
tests exercise.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

RequestFactory = Callable[..., web.BaseRequest]
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
