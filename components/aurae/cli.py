"""`teebus aurae ...`: talk to the Aurae socket as Aurae's own clients do (gRPC with mutual TLS).

    teebus aurae run "CMD" [--json]        print the process's stdout and stderr; exit with its code
    teebus aurae logs PID [--stderr] [--follow]
    teebus aurae daemon-logs [--count N]
    teebus aurae enable NAME "CMD" [--comment TEXT]
    teebus aurae disable NAME | destroy NAME
    teebus aurae show [--disabled] [--json]
    teebus aurae status
    teebus aurae cert NAME                 issue the client pair NAME from the CA; print where it is

Every verb takes --socket (default: the [aurae] socket setting, else <data-dir>/aurae/aurae.sock),
--pki (default <data-dir>/aurae/pki) and --client NAME (the pair to present, default `client`).

`logs PID` prints the lines kept so far and stops: at the stream's end, at the first line stamped
after the command started, or once no line came for `CATCH_UP_QUIET` seconds; `--follow` goes on
until the process ends (or Ctrl-C). `run` exits with the process's exit code; a process that did
not exit by itself (signal, timeout, missing binary) prints the daemon's message and exits 1.
A failed call prints `teebus aurae: <gRPC status>: <message>` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from components.aurae.client import AuraeClient
    from teebus.settings import Settings

PROG = "teebus aurae"
CATCH_UP_QUIET = 1.0   # s without a line after which `logs` (without --follow) has caught up


def register(parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    verbs = parser.add_subparsers(dest="aurae_verb", required=True)
    run = verbs.add_parser("run", help="run a command (split like a shell would) and print its output")
    run.add_argument("command", help='the command line, e.g. "sh -c \'echo hi\'"')
    run.add_argument("--json", action="store_true", help="print the whole ExecutableStatus as JSON")
    logs = verbs.add_parser("logs", help="a process's output, as the daemon kept it")
    logs.add_argument("pid", type=int)
    logs.add_argument("--stderr", action="store_true", help="its stderr (default stdout)")
    logs.add_argument("--follow", "-f", action="store_true", help="go on until the process ends")
    daemon = verbs.add_parser("daemon-logs", help="the daemon's own log lines as they happen (Ctrl-C stops)")
    daemon.add_argument("--count", type=int, help="stop after this many lines")
    enable = verbs.add_parser("enable", help="keep a command running under NAME, restarted when it ends")
    enable.add_argument("name")
    enable.add_argument("command")
    enable.add_argument("--comment", default="", help="a note kept with it")
    disable = verbs.add_parser("disable", help="stop NAME and keep it listed as disabled")
    disable.add_argument("name")
    destroy = verbs.add_parser("destroy", help="stop NAME and forget it")
    destroy.add_argument("name")
    show = verbs.add_parser("show", help="what is enabled (or --disabled)")
    show.add_argument("--disabled", action="store_true")
    show.add_argument("--json", action="store_true", help="print the list as JSON")
    status = verbs.add_parser("status", help="ask the daemon how it is")
    cert = verbs.add_parser("cert", help="issue a client certificate and key from the Aurae CA")
    cert.add_argument("name", help="the client's name: its files are NAME.crt and NAME.key")
    for verb in (run, logs, daemon, enable, disable, destroy, show, status, cert):
        common(verb)
        verb.add_argument("--pki", type=Path, help="the PKI folder (default <data-dir>/aurae/pki)")
    for verb in (run, logs, daemon, enable, disable, destroy, show, status):
        verb.add_argument("--socket", type=Path, help="the Aurae socket (default: the [aurae] socket setting, "
                          "else <data-dir>/aurae/aurae.sock)")
        verb.add_argument("--client", default="client", help="the client pair to present (default client)")
        verb.add_argument("--timeout", type=float, help="seconds a call may take")
    parser.set_defaults(system_verbs=main)


async def main(args: argparse.Namespace, settings: Settings) -> int:
    from components.aurae.client import AuraeClient, AuraeError
    from components.aurae.pki import PkiError

    pki_dir = args.pki or settings.data_dir / "aurae" / "pki"
    try:
        if args.aurae_verb == "cert":
            return _cert(pki_dir, args.name)
        async with AuraeClient(_socket(args, settings), pki_dir, client=args.client) as aurae:
            return await VERBS[args.aurae_verb](aurae, args)
    except AuraeError as exc:
        print(f"{PROG}: {exc.code.name}: {exc.message}", file=sys.stderr)
    except (PkiError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    return 1


def _socket(args: argparse.Namespace, settings: Settings) -> Path:
    if args.socket:
        return args.socket
    configured = getattr(settings.configs.get("aurae"), "socket", "")
    return Path(configured) if configured else settings.data_dir / "aurae" / "aurae.sock"


def _cert(pki_dir: Path, name: str) -> int:
    from components.aurae import pki

    cert, key = pki.issue_client(pki_dir, name)
    print(f"certificate  {cert}\nkey          {key}\nCA           {pki.Paths.of(pki_dir).ca_cert}\n"
          f"server name  {pki.SERVER_NAME}\n(teebus aurae --client {name} ... presents it)", flush=True)
    return 0


async def _run(aurae: AuraeClient, args: argparse.Namespace) -> int:
    status = await aurae.run(args.command, timeout=args.timeout)
    if args.json:
        import dataclasses

        import orjson
        print(orjson.dumps(dataclasses.asdict(status)).decode(), flush=True)
    else:
        sys.stdout.write(status.stdout)
        sys.stdout.flush()
        sys.stderr.write(status.stderr)
    if status.exit_code is None or status.status != "STATUS_COMPLETE":
        print(f"{PROG}: pid {status.pid} {status.status}: {status.message}", file=sys.stderr)
        return 1
    return status.exit_code & 0xFF


async def _logs(aurae: AuraeClient, args: argparse.Namespace) -> int:
    started = time.time_ns()
    lines = aurae.logs(args.pid, "stderr" if args.stderr else "stdout")
    try:
        while True:
            try:
                line = await asyncio.wait_for(anext(lines), None if args.follow else CATCH_UP_QUIET)
            except (StopAsyncIteration, TimeoutError):
                return 0
            if not args.follow and line.timestamp > started:
                return 0
            print(line.line, flush=True)
    finally:
        await lines.aclose()  # type: ignore[attr-defined]


async def _daemon_logs(aurae: AuraeClient, args: argparse.Namespace) -> int:
    seen = 0
    lines = aurae.daemon_logs()
    try:
        async for line in lines:
            print(line.line, flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    finally:
        await lines.aclose()  # type: ignore[attr-defined]
    return 0


async def _enable(aurae: AuraeClient, args: argparse.Namespace) -> int:
    print(await aurae.enable(args.name, args.command, comment=args.comment, timeout=args.timeout), flush=True)
    return 0


async def _disable(aurae: AuraeClient, args: argparse.Namespace) -> int:
    print(await aurae.disable(args.name, timeout=args.timeout), flush=True)
    return 0


async def _destroy(aurae: AuraeClient, args: argparse.Namespace) -> int:
    print(await aurae.destroy(args.name, timeout=args.timeout), flush=True)
    return 0


async def _show(aurae: AuraeClient, args: argparse.Namespace) -> int:
    listed = await aurae.show(disabled=args.disabled, timeout=args.timeout)
    if args.json:
        import dataclasses

        import orjson
        print(orjson.dumps([dataclasses.asdict(e) for e in listed]).decode(), flush=True)
        return 0
    rows = [("NAME", "COMMAND", "STATE"), *((e.name, e.command, e.message) for e in listed)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, command, state in rows:
        print(f"{name:<{widths[0]}}  {command:<{widths[1]}}  {state}".rstrip(), flush=True)
    return 0


async def _status(aurae: AuraeClient, args: argparse.Namespace) -> int:
    status = await aurae.status(timeout=args.timeout)
    print(f"{status.name}: {status.message}" if status.message else status.name, flush=True)
    return 0


VERBS = {"run": _run, "logs": _logs, "daemon-logs": _daemon_logs, "enable": _enable, "disable": _disable,
         "destroy": _destroy, "show": _show, "status": _status}
