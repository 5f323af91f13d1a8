"""The baseline servers of bench/bus_overhead.py, each run as its own process.

    python -m bench.servers bare --port P                          (a) aiohttp, POST / -> JSON
    python -m bench.servers proxy --port P --nats URL --data-dir D  (b) aiohttp -> nc.request()
    python -m bench.servers responder --nats URL --data-dir D       (b) plain nats-py responder

All three reply with REPLY, a JSON body shaped and sized like a MesaTEE KMS `Get` reply, so the
only difference between the baselines and teebus is the machinery, not the bytes. They run on
uvloop when it is installed and stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable

import orjson
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import loop as bus_loop
from bus.headers import REQUEST_ID
from bus.log import new_request_id
from bus.connection import connect

SUBJECT = "bench.echo"
QUEUE = "bench"
HOST = "127.0.0.1"
REQUEST_TIMEOUT = 5.0
REPLY = orjson.dumps({"type": "Get", "config": {"key": base64.b64encode(bytes(32)).decode(),
                                                "nonce": base64.b64encode(bytes(12)).decode(),
                                                "ad": base64.b64encode(bytes(5)).decode()}})


def json_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def bare_handler(request: web.Request) -> web.Response:
    """(a): read the body like any handler must, answer a fixed JSON body."""
    await request.read()
    return json_response(REPLY)


def proxy_handler(client: Client, subject: str, with_headers: bool
                  ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """(b): forward the body with one NATS request and return the reply's bytes; (h) adds the header
    every teebus request carries (its request id; JSON, the default, goes without a Content-Type)."""

    async def handler(request: web.Request) -> web.Response:
        hdrs = {REQUEST_ID: new_request_id()} if with_headers else None
        msg = await client.request(subject, await request.read(), timeout=REQUEST_TIMEOUT, headers=hdrs)
        return json_response(msg.data)

    return handler


async def serve_http(port: int, handler: Callable[[web.Request], Awaitable[web.Response]],
                     stop: asyncio.Event) -> None:
    app = web.Application()
    app.add_routes([web.post("/", handler)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port, backlog=1024).start()
        await stop.wait()
    finally:
        await runner.cleanup()


async def bare(args: argparse.Namespace, stop: asyncio.Event) -> None:
    await serve_http(args.port, bare_handler, stop)


async def proxy(args: argparse.Namespace, stop: asyncio.Event) -> None:
    client = await connect(args.nats, "admin", data_dir=args.data_dir, name="bench-proxy")
    try:
        await serve_http(args.port, proxy_handler(client, args.subject, args.headers), stop)
    finally:
        await client.drain()


async def responder(args: argparse.Namespace, stop: asyncio.Event) -> None:
    client = await connect(args.nats, "admin", data_dir=args.data_dir, name="bench-responder")

    async def answer(msg: Msg) -> None:
        await msg.respond(REPLY)  # as a teebus component answers JSON: no headers

    try:
        await client.subscribe(args.subject, queue=QUEUE, cb=answer)
        await client.flush()
        await stop.wait()
    finally:
        await client.drain()


ROLES: dict[str, Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]]] = {
    "bare": bare, "proxy": proxy, "responder": responder}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--port", type=int, help="HTTP port (bare, proxy)")
    parser.add_argument("--nats", help="NATS URL (proxy, responder)")
    parser.add_argument("--data-dir", type=Path, help="holds nats.credentials (proxy, responder)")
    parser.add_argument("--subject", default=SUBJECT, help="NATS subject (proxy, responder)")
    parser.add_argument("--headers", action="store_true", help="proxy: send teebus's request id header")
    args = parser.parse_args(argv)
    if args.role in ("bare", "proxy") and args.port is None:
        parser.error(f"{args.role} needs --port")
    if args.role in ("proxy", "responder") and (args.nats is None or args.data_dir is None):
        parser.error(f"{args.role} needs --nats and --data-dir")
    return args


async def run_until_signalled(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await ROLES[args.role](args, stop)


def main(argv: list[str] | None = None) -> int:
    bus_loop.run(run_until_signalled(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
