"""One keep's process, started by the keep manager, one per keep: `python -m teebus.host enarx.keep`.

It joins the bus as the keep's own NATS user (credentials in the environment), serves the keep
loader (handshake, control) and the wasmldr components, the keep's Unix socket, and after "launch"
the wasmldr's HTTPS port. The two adapters are handed in by `teebus.host` from the manifest
(`socket`: adapters/unix/enarx.py `KeepSocket`, `wasmldr`: adapters/http/enarx.py `serve_wasmldr`),
so this package imports no adapter. It ends on a shutdown request, SIGTERM, a handshake timeout, or when the
bus has been unreachable for `--orphan-timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson
from nats.aio.client import Client

from bus import log
from bus.component import Context
from bus.connection import BusConnectError, connect
from bus.requester import Requester
from components.enarx import keep_access, keep_processes
from components.enarx.evidence import KeepIdentity
from components.enarx.keepldr import KeepConfig, KeepHooks, KeepLoader
from components.enarx.reporter import Reporter
from components.enarx.wasm_runner import Limits
from components.enarx.wasmldr import Wasmldr

AUTH_RETRY_SECONDS = 10.0   # a new user becomes valid when the server has reloaded its config
_log = log.get_logger("enarx.keep")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="teebus.host enarx.keep", description=__doc__)
    parser.add_argument("--kuuid", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--evidence-timeout", type=float, default=120.0)
    parser.add_argument("--handshake-timeout", type=float, default=120.0)
    parser.add_argument("--orphan-timeout", type=float, default=60.0)
    parser.add_argument("--limits", default="{}", help="JSON object of wasm_runner.Limits fields")
    return parser.parse_args(argv)


class KeepProcess:
    def __init__(self, args: argparse.Namespace, adapters: Mapping[str, Callable[..., Any]]) -> None:
        self.args = args
        self.adapters = adapters
        self.limits = Limits.from_overrides(orjson.loads(args.limits))
        self.ended = asyncio.Event()
        self.reason = ""
        self.client: Client | None = None
        self.components: list = []
        self.socket: Any = None             # the keep's Unix socket server (start/stop)
        self.https: Any = None              # the wasmldr's HTTPS server, once launched (stop)
        self._orphan_timer: asyncio.TimerHandle | None = None

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()

    async def run(self) -> None:
        kuuid = self.args.kuuid
        self.client = await self._connect()
        requester = Requester(self.client)
        reporter = Reporter(requester, kuuid)
        hooks = KeepHooks(kuuid, self.args.host, self.args.port, self.args.evidence_timeout,
                          self.args.handshake_timeout, reporter,
                          self._start_wasmldr, self.end)
        context = Context(self.client, self.args.data_dir, KeepConfig(
            hooks, self.limits, module_cache=self.args.data_dir / "keeps" / "module-cache"))
        self._requester = requester
        try:
            # the socket first: the keep manager answers new_keep once the loader answers its ping,
            # and the client may connect to the socket path it was given at once (a conversation
            # arriving before the loader subscribes waits for it: bus/requester.py)
            self.socket = self.adapters["socket"](keep_processes.socket_path(self.args.data_dir, kuuid), kuuid,
                                                  requester)
            await self.socket.start()
            for cls in (KeepLoader, Wasmldr):
                component = cls(context)
                await component.start()
                self.components.append(component)
            _log.info("keep loader ready", pid=os.getpid())
            await self.ended.wait()
            _log.info("keep loader ending", reason=self.reason)
        finally:
            await self._stop(reporter)

    async def _connect(self) -> Client:
        user, password = os.environ["TEEBUS_KEEP_USER"], os.environ["TEEBUS_KEEP_PASSWORD"]
        return await connect(self.args.nats, user, passwords={user: password}, data_dir=Path(self.args.data_dir),
                             name=f"keep-{self.args.kuuid}",
                             auth_settle=AUTH_RETRY_SECONDS,
                             inbox_prefix=keep_access.inbox_prefix(self.args.kuuid),
                             disconnected_cb=self._disconnected, reconnected_cb=self._reconnected)

    async def _disconnected(self) -> None:
        if self._orphan_timer is None and not self.ended.is_set():
            self._orphan_timer = asyncio.get_running_loop().call_later(
                self.args.orphan_timeout, self.end, f"the bus was unreachable for {self.args.orphan_timeout:g}s")

    async def _reconnected(self) -> None:
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None

    async def _start_wasmldr(self, identity: KeepIdentity) -> None:
        self.https = await self.adapters["wasmldr"](
            self.args.kuuid, self.args.host, self.args.port, identity.key_pem, identity.certificate_pem,
            self.limits.max_module_bytes, self.limits.compile_seconds + self.limits.deadline_seconds,
            self._requester, self.args.data_dir)

    async def _stop(self, reporter: Reporter) -> None:
        if self.https is not None:
            await self.https.stop()
        if self.socket is not None:
            await self.socket.stop()
        for component in reversed(self.components):
            await component.stop(grace=5.0)
        await reporter.close()
        if self.client is not None and not self.client.is_closed:
            try:  # the components answered everything already: flush what is queued, then close
                await self.client.flush(timeout=2)
            except Exception:
                pass
            await self.client.close()


async def main(argv: list[str], adapters: Mapping[str, Callable[..., Any]]) -> int:
    """The host's entry (bus/manifest.HostSpec): `adapters` has "socket" and "wasmldr"."""
    args = parse_args(argv)
    log.configure(os.environ.get("TEEBUS_LOG_LEVEL", "info"), json=True, stream=sys.stderr)
    process = KeepProcess(args, adapters)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, process.end, f"signal {signal.Signals(signum).name}")
    try:
        await process.run()
    except BusConnectError as exc:
        _log.error("keep loader cannot reach the bus", error=str(exc))
        return 3
    return 0

