"""`teebus mesatee ...`: the MesaTEE services from a terminal, through their HTTP ports.

    teebus mesatee kms create
    teebus mesatee kms get KEY_ID
    teebus mesatee kms delete KEY_ID

The KMS is internal: the commands send `<data-dir>/internal.token`. Replies print as the seed's JSON.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI hands the settings in; this package does not depend on teebus
    from teebus.settings import Settings

KMS_SITE = "mesatee-kms"
TOKEN_FILE = "internal.token"


def register(parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`teebus mesatee ...`; `common` adds teebus's shared options (--data-dir, --config, ...)."""
    services = parser.add_subparsers(dest="mesatee_service", required=True)
    kms = services.add_parser("kms", help="key management: create, get and delete AEAD key configs")
    operations = kms.add_subparsers(dest="kms_operation", required=True)
    create = operations.add_parser("create", help="a new key; prints its key_id and config")
    get = operations.add_parser("get", help="the key KEY_ID")
    delete = operations.add_parser("delete", help="delete the key KEY_ID (prints it a last time)")
    for operation in (create, get, delete):
        common(operation)
        operation.add_argument("--url", help="the KMS (default: this deployment's mesatee-kms site)")
    for operation in (get, delete):
        operation.add_argument("key_id")
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
