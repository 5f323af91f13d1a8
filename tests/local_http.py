"""A small HTTP server on loopback for tests that stand in for someone else's service (an external
Cyborg driver, a KDS that lies)."""

from __future__ import annotations

from aiohttp import web


async def serve_locally(app: web.Application, port: int, shutdown_timeout: float = 60.0) -> web.AppRunner:
    """`app` listening on 127.0.0.1:`port`; `await runner.cleanup()` stops it."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
