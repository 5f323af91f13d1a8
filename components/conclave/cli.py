"""`teebus conclave ...`: talk to a Conclave web host as Conclave's client does.

    teebus conclave attest [--constraint C]                 the enclave's attestation (checked with -c)
    teebus conclave send TEXT --constraint C [--topic T] [--state FILE]
    teebus conclave poll --state FILE [--wait SECONDS]

Every verb asks the `conclave-host` site of this deployment (or --url). `send` prints the enclave's
reply; `poll` prints the next queued mail (or nothing). `--state FILE` keeps the client's key and
sequence numbers between runs (mode 0600): `poll` needs the key the mail was sent to, and a client
that forgot its numbers would be refused as a replay. Errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from teebus.settings import Settings

HOST_SITE = "conclave-host"
PROG = "teebus conclave"


def register(parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    verbs = parser.add_subparsers(dest="conclave_verb", required=True)
    attest = verbs.add_parser("attest", help="fetch the enclave's attestation and show it")
    attest.add_argument("--constraint", "-c", help='check it, e.g. "C:<code hash> SEC:INSECURE"')
    send = verbs.add_parser("send", help="send one mail and print the enclave's reply")
    send.add_argument("text", help="the mail's body (UTF-8)")
    send.add_argument("--constraint", "-c", required=True, help='what the enclave must be, e.g. "C:<hash> SEC:INSECURE"')
    send.add_argument("--topic", default="default", help="the mail's topic (default: default)")
    poll = verbs.add_parser("poll", help="print the next mail queued for this client")
    poll.add_argument("--constraint", "-c", default=None, help="check the enclave first (default: the one saved)")
    poll.add_argument("--wait", type=float, default=0.0, help="seconds to wait for mail to arrive")
    for verb in (attest, send, poll):
        common(verb)
        verb.add_argument("--url", help=f"the web host (default: this deployment's {HOST_SITE} site)")
    for verb in (send, poll):
        verb.add_argument("--state", type=Path, required=verb is poll,
                          help="client key and sequence numbers, read and written back (keep it secret)")
    parser.set_defaults(system_verbs=main)


async def main(args: argparse.Namespace, settings: Settings) -> int:
    from bus.credentials import write_private
    from components.conclave.client import ConclaveClient, ConclaveError
    from components.conclave.constraints import EnclaveConstraint

    url = args.url or f"http://{_host(settings.http_host)}:{settings.ports[HOST_SITE]}"
    try:
        if args.conclave_verb == "attest":
            return await _attest(url, args.constraint)
        state = getattr(args, "state", None)
        constraint = args.constraint or _saved_constraint(state)
        EnclaveConstraint.parse(constraint)
        if state is not None and state.exists():
            client = ConclaveClient.restore(url, constraint, state.read_bytes())
        else:
            client = ConclaveClient(url, constraint)
        async with client:
            if args.conclave_verb == "send":
                received = await client.send(args.text.encode(), topic=args.topic)
            else:
                received = await client.poll(args.wait or None)
            if state is not None:
                write_private(state, _with_constraint(client.state(), constraint))
    except (ConclaveError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if received is not None:
        print(received.body.decode("utf-8", "replace"), flush=True)
    return 0


async def _attest(url: str, constraint: str | None) -> int:
    import aiohttp

    from components.conclave.client import ConclaveError
    from components.conclave.constraints import EnclaveConstraint
    from components.conclave.eii import EnclaveInstanceInfo

    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url.rstrip("/") + "/attestation") as response:
                body = await response.read()
        except aiohttp.ClientError as exc:
            raise ConclaveError(f"the Conclave host at {url} did not answer ({exc}); is it running?") from None
    eii = EnclaveInstanceInfo.deserialize(body)
    print(f"code hash (C:)        {eii.code_hash.hex().upper()}\n"
          f"code signer (S:)      {eii.code_signing_key_hash.hex().upper()}\n"
          f"product id (PROD:)    {eii.product_id}\n"
          f"revocation level      {eii.revocation_level}\n"
          f"mode / security       {eii.enclave_mode.name} / {eii.security_summary.name}\n"
          f"encryption key        {eii.encryption_key.hex()}", flush=True)
    if constraint:
        EnclaveConstraint.parse(constraint).check(eii)
        print(f"satisfies             {constraint}", flush=True)
    return 0


def _saved_constraint(state: Path | None) -> str:
    import orjson
    if state is None or not state.exists():
        raise ValueError("give --constraint (and --state to poll with the key mail was sent to)")
    return orjson.loads(state.read_bytes()).get("constraint") or ""


def _with_constraint(saved: bytes, constraint: str) -> bytes:
    import orjson
    return orjson.dumps({**orjson.loads(saved), "constraint": constraint})


def _host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
