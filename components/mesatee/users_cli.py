"""`teebus users ...`: the MesaTEE user registry from a terminal, as the admin role on the bus.

    teebus users add NAME [--token T]     a new user; prints its token, once
    teebus users list                     names and dates (never tokens or hashes)
    teebus users remove NAME
    teebus users rotate NAME              a new token (printed once); the old one stops working

A token goes to stdout alone (`TOKEN=$(teebus users add alice)`), what it means to stderr.
`create_demo_users` gives `teebus up --demo` the seed's user1/token1 and user2/token2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any, Callable

from bus import log
from bus.errors import BusError, Conflict, Unauthorized, Unavailable
from bus.requester import Requester
from components.mesatee import subjects
from components.mesatee.auth import authenticate

if TYPE_CHECKING:  # the CLI hands the settings in; this package does not depend on teebus
    from nats.aio.client import Client

    from teebus.settings import Settings

PROG = "teebus users"
DEMO_USERS = (("user1", "token1"), ("user2", "token2"))   # the seed's examples use these
DEMO_WAIT_SECONDS = 10.0
_log = log.get_logger("mesatee.users_cli")


def register(parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`teebus users ...`; `common` adds teebus's shared options (--data-dir, --nats, --config, ...)."""
    operations = parser.add_subparsers(dest="users_operation", required=True)
    add = operations.add_parser("add", help="a new user; prints its token, shown only once")
    add.add_argument("--token", metavar="T", help="use this token instead of a random one (`-` reads it "
                     "from stdin, out of the shell history)")
    listed = operations.add_parser("list", help="the registered users (names and dates)")
    remove = operations.add_parser("remove", help="remove the user NAME; its token stops working")
    rotate = operations.add_parser("rotate", help="a new token for NAME (shown once); the old one stops working")
    for operation in (add, remove, rotate):
        operation.add_argument("name", metavar="NAME", help="the user_id")
    for operation in (add, listed, remove, rotate):
        common(operation)
    parser.set_defaults(system_verbs=main)


async def main(args: argparse.Namespace, settings: Settings) -> int:
    from bus.connection import connect

    client = await connect(settings.url, "admin", data_dir=settings.data_dir, name="teebus-users")
    try:
        return await run(Requester(client), args)
    except BusError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await client.close()


async def run(requester: Requester, args: argparse.Namespace) -> int:
    """One operation over `requester`; prints as the module docstring says."""
    operation = args.users_operation
    if operation == "list":
        return _print_users((await requester.request(subjects.users("list"), {})).payload["users"])
    body: dict[str, Any] = {"user_id": args.name}
    if operation == "add" and getattr(args, "token", None) is not None:
        body["token"] = sys.stdin.readline().rstrip("\r\n") if args.token == "-" else args.token
    reply = (await requester.request(subjects.users(operation), body)).payload
    if operation == "remove":
        print(f"user {reply['user_id']} removed; its token no longer works", file=sys.stderr)
    elif "token" in body:
        print(f"user {reply['user_id']} added with the token given", file=sys.stderr)
    else:
        what = "added" if operation == "add" else "has a new token; the old one no longer works"
        print(f"user {reply['user_id']} {what}. Its token follows, shown only now: store it "
              f"(`{PROG} rotate {reply['user_id']}` replaces a lost one)", file=sys.stderr)
        print(reply["user_token"], flush=True)
    return 0


def _print_users(users: list[dict[str, Any]]) -> int:
    if not users:
        print(f"no users yet: `{PROG} add NAME` adds one", file=sys.stderr)
        return 0
    width = max(len("USER"), *(len(user["user_id"]) for user in users))
    print(f"{'USER':<{width}}  {'CREATED':<32}  ROTATED")
    for user in users:
        print(f"{user['user_id']:<{width}}  {user['created']:<32}  {user['rotated'] or '-'}")
    return 0


async def create_demo_users(client: Client) -> None:
    """Add the seed's user1/token1 and user2/token2 unless they exist (so, idempotent); waits up to
    DEMO_WAIT_SECONDS for the registry to start. A demo user that exists with another token is left
    alone (it may be someone's real account) and a warning says the seed's examples will fail."""
    requester = Requester(client)
    for user_id, token in DEMO_USERS:
        try:
            await _add_when_served(requester, {"user_id": user_id, "token": token})
            _log.warning("demo user added with the seed's well-known token: not for real data", user_id=user_id)
        except Conflict:
            try:
                await authenticate(requester, user_id, token)
            except Unauthorized:
                _log.warning(f"demo user exists with a token of its own, so the seed's examples will be refused "
                             f"for it: `{PROG} remove {user_id}`, then start with --demo again", user_id=user_id)


async def _add_when_served(requester: Requester, body: dict[str, Any]) -> None:
    deadline = asyncio.get_running_loop().time() + DEMO_WAIT_SECONDS
    while True:
        try:
            await requester.request(subjects.users("add"), body)
            return
        except Unavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
