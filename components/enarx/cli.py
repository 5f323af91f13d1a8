"""`teebus enarx ...`: the keep manager from a terminal, through its HTTP API (components/enarx/client.py).

    teebus enarx contracts
    teebus enarx keeps
    teebus enarx run hello.wasm --arg one --env GREETING=hi --stdin input.txt

`run` does what a client does: takes a Nil contract, creates a keep, reads its evidence, launches it,
sends the workload to its wasmldr (pinned to the keep's certificate), prints what the workload wrote
and shuts the keep down; the exit status is the workload's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the CLI hands the settings in; this package does not depend on teebus
    from teebus.settings import Settings

KEEPMGR_SITE = "enarx-keepmgr"


def register(parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`teebus enarx ...`; `common` adds teebus's shared options (--data-dir, --config, ...)."""
    verbs = parser.add_subparsers(dest="enarx_verb", required=True)
    contracts = verbs.add_parser("contracts", help="the contracts on offer")
    keeps = verbs.add_parser("keeps", help="every keep and its state")
    run = verbs.add_parser("run", help="run a WebAssembly module in a fresh Nil keep and print its output")
    for verb in (contracts, keeps, run):
        common(verb)
        verb.add_argument("--url", help="the keep manager (default: this deployment's enarx-keepmgr site)")
    run.add_argument("module", type=Path, help="a wasm32-wasip1 module")
    run.add_argument("--arg", action="append", default=[], help="an argument after argv[0] (repeatable)")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    run.add_argument("--stdin", type=Path, metavar="FILE", help="what the workload reads on stdin")
    parser.set_defaults(system_verbs=main)


def _url(args: argparse.Namespace, settings: Settings) -> str:
    return args.url or f"http://{settings.http_host}:{settings.ports[KEEPMGR_SITE]}"


async def main(args: argparse.Namespace, settings: Settings) -> int:
    from components.enarx.client import EnarxClient, EnarxError, kuuid_text

    async with EnarxClient(_url(args, settings)) as enarx:
        try:
            if args.enarx_verb == "contracts":
                for contract in await enarx.contracts():
                    print(f"{kuuid_text(contract['uuid'])}  {contract['backend']}")
                return 0
            if args.enarx_verb == "keeps":
                for keep in await enarx.keeps():
                    print(f"{kuuid_text(keep['kuuid'])}  {keep['backend']:<4} {keep['state']:<13} "
                          f"{keep.get('error') or ''}".rstrip())
                return 0
            return await _run(enarx, args)
        except EnarxError as exc:
            print(f"teebus enarx: {exc.status}: {exc.details}", file=sys.stderr)
            return 1


async def _run(enarx: Any, args: argparse.Namespace) -> int:
    env = {}
    for pair in args.env:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env takes NAME=VALUE, got {pair!r}")
        env[name] = value
    wasm = args.module.read_bytes()
    stdin = args.stdin.read_bytes() if args.stdin else None
    contract = next(c for c in await enarx.contracts() if c["backend"] == "Nil")
    keep = await enarx.new_keep(contract)
    try:
        await enarx.converse(keep["kuuid"], "request-evidence")
        await enarx.converse(keep["kuuid"], "launch")
        ready = await enarx.keep(keep["kuuid"])
        try:
            result = await enarx.deploy(ready, wasm, info=args.module.name, args=args.arg, env=env, stdin=stdin)
        except Exception as exc:  # a stopped workload: its output and why it stopped are in the body
            body = getattr(exc, "body", None)
            if not isinstance(body, dict) or "stopped" not in body:
                raise
            result = body
    finally:
        await enarx.shutdown(keep["kuuid"])
    sys.stdout.buffer.write(result.get("stdout") or b"")
    sys.stderr.buffer.write(result.get("stderr") or b"")
    if result.get("exit_code") is None:
        print(f"teebus enarx: the workload was stopped ({result.get('stopped')}): {result.get('details')}",
              file=sys.stderr)
        return 125
    return int(result["exit_code"])
