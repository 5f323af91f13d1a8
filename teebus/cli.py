"""`teebus`: start the system, run chosen components, and look at the bus."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from bus import headers, log
from bus import loop as bus_loop
from bus.connection import BusConnectError, connect
from bus.errors import BusError
from bus.server import ServerError
from teebus import catalog, tools
from teebus.launcher import Node, System, serve_until_signalled
from teebus.settings import (DEFAULT_DATA_DIR, DEFAULT_NATS_PORT, Settings, parse_keep_loaders,
                             parse_port_overrides)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="state, secrets and JetStream storage (default ./teebus-data)")
    parser.add_argument("--nats", metavar="URL", help="join this NATS deployment instead of embedding one")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")


def _enarx(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Enarx keeps")
    group.add_argument("--keep-loader", action="append", default=[], metavar="BACKEND=PATH",
                       help="platform keep loader for Kvm, Sev or Sgx (teebus ships only Nil's)")
    group.add_argument("--max-keeps", type=int, help="live keeps on this host (default 64)")
    group.add_argument("--wasm-deadline", type=float, metavar="SECONDS", help="per workload (default 10)")
    group.add_argument("--wasm-fuel", type=int, metavar="UNITS", help="instruction budget per workload")
    group.add_argument("--wasm-memory", type=int, metavar="BYTES", help="linear memory cap (default 256 MiB)")
    group.add_argument("--wasm-output", type=int, metavar="BYTES", help="stdout and stderr cap (default 1 MiB)")
    group.add_argument("--wasm-max-module", type=int, metavar="BYTES", help="largest module (default 64 MiB)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teebus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the embedded NATS server, every component and adapter")
    _common(up)
    up.add_argument("--nats-port", type=int, default=DEFAULT_NATS_PORT, help="embedded server port")
    up.add_argument("--nats-conf", type=Path, help="embedded server configuration (default: ./nats.conf "
                    "of the teebus checkout)")
    up.add_argument("--host", default="127.0.0.1", help="address the HTTP adapters listen on")
    up.add_argument("--port", action="append", default=[], metavar="SITE=PORT",
                    help="move one site, e.g. --port mesatee-kms=7016")
    _enarx(up)

    run = commands.add_parser("run", help="run chosen components/adapters against --nats URL")
    _common(run)
    run.add_argument("names", nargs="+", metavar="NAME", help=f"any of: {', '.join(catalog.names())}")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", action="append", default=[], metavar="SITE=PORT")
    _enarx(run)

    status = commands.add_parser("status", help="live services, replicas and stats ($SRV.STATS)")
    _common(status)

    bus = commands.add_parser("bus", help="debug the bus as with the nats CLI")
    bus_commands = bus.add_subparsers(dest="bus_command", required=True)
    sub = bus_commands.add_parser("sub", help="print messages on SUBJECT (wildcards allowed)")
    _common(sub)
    sub.add_argument("subject")
    sub.add_argument("--count", type=int, help="stop after this many messages")
    req = bus_commands.add_parser("req", help="send DATA (JSON text) to SUBJECT and print the reply")
    _common(req)
    req.add_argument("subject")
    req.add_argument("data", nargs="?", default="")
    req.add_argument("--cbor", action="store_true", help="encode DATA as CBOR")
    req.add_argument("--raw", action="store_true", help="send DATA as opaque bytes")
    req.add_argument("--timeout", type=float, default=5.0)

    ev = commands.add_parser("events", help="export (or --follow) the event stream as JSON lines")
    _common(ev)
    ev.add_argument("--since", help="ISO time or duration back from now (30s, 15m, 2h, 7d)")
    ev.add_argument("--follow", action="store_true", help="keep printing new events")
    ev.add_argument("--subject", default="events.>", help="filter, e.g. events.mesatee.>")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings(data_dir=args.data_dir, nats_url=args.nats, log_level=args.log_level)
    if hasattr(args, "nats_port"):
        settings.nats_port = args.nats_port
    if getattr(args, "nats_conf", None):
        settings.nats_conf = args.nats_conf.resolve()
    if hasattr(args, "host"):
        settings.http_host = args.host
    if hasattr(args, "port"):
        settings.ports = parse_port_overrides(args.port)
    if hasattr(args, "keep_loader"):
        settings.enarx = enarx_settings(args)
    return settings.resolved()


def enarx_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Enarx part of the options each component gets (components/enarx/config.py)."""
    limits = {name: value for name, value in (
        ("deadline_seconds", args.wasm_deadline), ("fuel", args.wasm_fuel),
        ("max_memory_bytes", args.wasm_memory), ("max_output_bytes", args.wasm_output),
        ("max_module_bytes", args.wasm_max_module)) if value is not None}
    result: dict[str, Any] = {"workload_limits": limits} if limits else {}
    if args.max_keeps is not None:
        result["max_keeps"] = args.max_keeps
    if args.keep_loader:
        result["backends"] = {"loaders": parse_keep_loaders(args.keep_loader)}
    return result


async def _with_client(settings: Settings, role: str, action: Callable[[Any], Awaitable[int | None]]) -> int:
    client = await connect(settings.url, role, data_dir=settings.data_dir, name=f"teebus-cli-{role}")
    try:
        return await action(client) or 0
    finally:
        await client.close()


async def dispatch(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.command == "up":
        await serve_until_signalled(System(settings))
        return 0
    if args.command == "run":
        if settings.embedded:
            raise SystemExit("teebus run joins an existing bus: pass --nats URL (teebus up prints it)")
        catalog.check(args.names)
        await serve_until_signalled(Node(settings, args.names))
        return 0
    if args.command == "status":
        return await _with_client(settings, "observer", lambda c: _status(c))
    if args.command == "events":
        since = tools.parse_since(args.since) if args.since else None
        return await _with_client(settings, "observer",
                                  lambda c: _events(c, since, args.follow, args.subject))
    if args.bus_command == "sub":
        return await _with_client(settings, "observer", lambda c: tools.subscribe(c, args.subject, args.count))
    content_type = headers.CBOR if args.cbor else headers.OCTETS if args.raw else headers.JSON
    return await _with_client(settings, "admin",
                              lambda c: tools.request(c, args.subject, args.data, content_type, args.timeout))


async def _status(client: Any) -> int:
    await tools.status(client)
    return 0


async def _events(client: Any, since: Any, follow: bool, subject: str) -> int:
    await tools.export_events(client, since, follow, subject)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.configure(args.log_level, json=True if args.log_json else None)
    try:
        return bus_loop.run(dispatch(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `teebus status | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ServerError, BusConnectError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"teebus: {exc}", file=sys.stderr)
        return 1
    except BusError as exc:
        print(f"teebus: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
