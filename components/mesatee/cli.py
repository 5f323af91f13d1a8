"""`teebus mesatee ...`: the MesaTEE services from a terminal, through their HTTP ports.

    teebus mesatee kms create
    teebus mesatee kms get KEY_ID
    teebus mesatee kms delete KEY_ID

The KMS is internal: the commands send `<data-dir>/internal.token`. Replies print as the seed's JSON.
"""

from __future__ import annotations

import argparse
import sys

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI hands the settings in; this package does not depend on teebus
    from teebus.settings import Settings

KMS_SITE = "mesatee-kms"
TOKEN_FILE = "internal.token"


def register(parser: argparse.ArgumentParser) -> None:
    services = parser.add_subparsers(dest="mesatee_service", required=True)
    kms = services.add_parser("kms", help="key management: create, get and delete AEAD key configs")
    kms.add_argument("--url", help="the KMS (default: this deployment's mesatee-kms site)")
    operations = kms.add_subparsers(dest="kms_operation", required=True)
    operations.add_parser("create", help="a new key; prints its key_id and config")
    for name in ("get", "delete"):
        operations.add_parser(name, help=f"{name} the key KEY_ID").add_argument("key_id")
    parser.set_defaults(system_verbs=main)


async def main(args: argparse.Namespace, settings: Settings) -> int:
    import aiohttp

    from bus.credentials import read_private

    url = args.url or f"http://{settings.http_host}:{settings.ports[KMS_SITE]}/"
    token = read_private(settings.data_dir / TOKEN_FILE).decode().strip()
    body = {"type": args.kms_operation.capitalize()}
    if args.kms_operation != "create":
        body["key_id"] = args.key_id
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
            text = await response.text()
    print(text)
    if response.status >= 400:
        print(f"teebus mesatee: {response.status}", file=sys.stderr)
        return 1
    return 0
