"""`teebus mesatee ...`: the MesaTEE services from a terminal, through their HTTP ports.

    teebus mesatee kms create
    teebus mesatee kms get KEY_ID
    teebus mesatee kms delete KEY_ID

    teebus mesatee upload FILE [--name NAME]           prints the new file_id alone
    teebus mesatee task create FUNCTION [--collaborator USER]... [--file FILE_ID]...
    teebus mesatee task approve TASK_ID --file FILE_ID...
    teebus mesatee task get TASK_ID
    teebus mesatee task list
    teebus mesatee task invoke TASK_ID [--payload TEXT]
    teebus mesatee task watch TASK_ID [--timeout SECONDS]
    teebus mesatee result download TASK_ID [--dir DIR]

The KMS is internal: the `kms` commands send `<data-dir>/internal.token`. The others act as a user:
`--user`/`--token`, or `TEEBUS_USER`/`TEEBUS_TOKEN` from the environment (better for the token: it
stays out of the shell history; `--token -` reads it from stdin). They go through
components/mesatee/client.py, which seals and opens files on this side. Replies print as the seed's
JSON (one line; indented with --pretty), except `upload` (the file_id alone, never the key config);
errors go to stderr with exit status 1. `task watch` exits 0 when the task Finished, 1 when it
Failed, 124 when --timeout passed first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the CLI hands the settings in; this package does not depend on teebus
    from components.mesatee.client import MesateeClient, Progress
    from teebus.settings import Settings

KMS_SITE = "mesatee-kms"
TOKEN_FILE = "internal.token"
SITES = {"tdfs": "mesatee-tdfs", "tms": "mesatee-tms", "fns": "mesatee-fns"}
USER_ENV, TOKEN_ENV = "TEEBUS_USER", "TEEBUS_TOKEN"
PROGRESS_ABOVE_BYTES = 8 * 1024 * 1024     # smaller files go too fast for a bar to mean anything
TIMED_OUT = 124                            # as timeout(1)
PROG = "teebus mesatee"


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
    _register_user_verbs(services, common)
    parser.set_defaults(system_verbs=main)


def _register_user_verbs(services: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    upload = services.add_parser("upload", help="encrypt FILE here and store it in the Trusted DFS; "
                                 "prints its file_id")
    upload.add_argument("file", type=Path, metavar="FILE")
    upload.add_argument("--name", help="the file_name registered (default: FILE's own name)")

    task = services.add_parser("task", help="create, approve, inspect, run and follow tasks")
    tasks = task.add_subparsers(dest="task_operation", required=True)
    create = tasks.add_parser("create", help="a new task of FUNCTION (echo, psi, ...)")
    create.add_argument("function", metavar="FUNCTION")
    create.add_argument("--collaborator", action="append", default=[], metavar="USER",
                        help="a user who must approve the task with files of theirs (repeatable)")
    create.add_argument("--file", action="append", default=[], metavar="FILE_ID",
                        help="one of your input files (repeatable)")
    approve = tasks.add_parser("approve", help="approve TASK_ID as a collaborator, with your input files")
    approve.add_argument("task_id", metavar="TASK_ID")
    approve.add_argument("--file", action="append", required=True, metavar="FILE_ID",
                         help="one of your input files (repeatable; at least one)")
    get = tasks.add_parser("get", help="the task TASK_ID")
    get.add_argument("task_id", metavar="TASK_ID")
    listed = tasks.add_parser("list", help="the tasks you created or collaborate on")
    invoke = tasks.add_parser("invoke", help="run the Ready task TASK_ID; prints its result when it ends")
    invoke.add_argument("task_id", metavar="TASK_ID")
    invoke.add_argument("--payload", metavar="TEXT", help="the function's payload (echo's text); default null")
    watch = tasks.add_parser("watch", help="print the task's status and each change until it ends "
                             "(exit 0 Finished, 1 Failed, 124 timed out)")
    watch.add_argument("task_id", metavar="TASK_ID")
    watch.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")

    result = services.add_parser("result", help="your results of a finished task")
    results = result.add_subparsers(dest="result_operation", required=True)
    download = results.add_parser("download", help="decrypt and verify your outputs of TASK_ID into DIR, "
                                  "each named by its file_id")
    download.add_argument("task_id", metavar="TASK_ID")
    download.add_argument("--dir", type=Path, default=Path("."), help="default: the current directory")

    for verb in (upload, create, approve, get, listed, invoke, watch, download):
        common(verb)
        _client_options(verb)


def _client_options(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("--user", help=f"your user_id (default: ${USER_ENV})")
    verb.add_argument("--token", help=f"your user_token (default: ${TOKEN_ENV}, which keeps it out of the "
                      "shell history; `-` reads it from stdin)")
    verb.add_argument("--host", help="the address of every MesaTEE site (default: this deployment's http_host)")
    for short, site in SITES.items():
        default = (f"this deployment's {site} site" if short != "fns" else
                   f"where the TMS says the task runs; with --host, that host's {site} port")
        verb.add_argument(f"--url-{short}", metavar="URL", help=f"the {short.upper()} (default: {default})")
    verb.add_argument("--pretty", action="store_true", help="indent the JSON replies")


async def main(args: argparse.Namespace, settings: Settings) -> int:
    if args.mesatee_service == "kms":
        return await _kms(args, settings)
    from components.mesatee.client import MesateeClient, MesateeError

    try:
        user, token = _credentials(args)
        async with MesateeClient(user, token, **_urls(args, settings)) as client:
            return await _user_verb(client, args, settings)
    except MesateeError as exc:
        print(f"{PROG}: {exc.message}" + (f" ({exc.status})" if exc.status else ""), file=sys.stderr)
        return 1
    except OSError as exc:      # a file that cannot be read or written here
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


async def _kms(args: argparse.Namespace, settings: Settings) -> int:
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


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    from components.mesatee.client import LOCAL, MesateeError

    user = args.user or os.environ.get(USER_ENV)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if token == "-":
        token = sys.stdin.readline().rstrip("\r\n")
    if not user:
        raise MesateeError(LOCAL, f"who are you? pass --user NAME or set {USER_ENV}")
    if token is None:
        raise MesateeError(LOCAL, f"no token for user {user}: export {TOKEN_ENV}=... (kept out of the shell "
                           "history), or pass --token - and type it on stdin")
    return user, token


def _urls(args: argparse.Namespace, settings: Settings) -> dict[str, str | None]:
    """Each site's base URL: --url-X, else --host (or the deployment's http_host) and the site's port.
    The FNS only when named (--url-fns, --host): otherwise the client goes where the TMS says."""
    from components.mesatee.client import site_url

    urls: dict[str, str | None] = {}
    for short, site in SITES.items():
        given = getattr(args, f"url_{short}")
        if given:
            urls[short] = given
        elif short != "fns" or args.host:
            urls[short] = site_url(args.host or settings.http_host, settings.ports[site])
        else:
            urls[short] = None
    return urls


async def _user_verb(client: MesateeClient, args: argparse.Namespace, settings: Settings) -> int:
    service = args.mesatee_service
    if service == "upload":
        bar = _progress_bar(args.file)
        try:
            print(await client.upload(args.file, progress=bar, file_name=args.name), flush=True)
        finally:
            if bar is not None:
                bar.close()
        return 0
    if service == "result":
        files = await client.download_results(args.task_id, args.dir)
        return _print(args, {"type": "Download", "task_id": args.task_id, "files": files})
    operation = args.task_operation
    if operation == "create":
        return _print(args, await client.create_task(args.function, args.collaborator, args.file))
    if operation == "approve":
        return _print(args, await client.approve(args.task_id, args.file))
    if operation == "get":
        return _print(args, {"type": "Get", "task_info": await client.get_task(args.task_id)})
    if operation == "list":
        return _print(args, {"type": "List", "list": await client.list_tasks()})
    if operation == "invoke":
        info = await client.get_task(args.task_id)     # the function and token: nothing to copy by hand
        return _print(args, await client.invoke(args.task_id, info["function_name"], info["task_token"],
                                                args.payload))
    return await _watch(client, args, settings)


async def _watch(client: MesateeClient, args: argparse.Namespace, settings: Settings) -> int:
    from bus.connection import BusConnectError, connect
    from components.mesatee.watch import describe, watch_task

    bus = None
    try:
        bus = await connect(settings.url, "observer", data_dir=settings.data_dir, name="teebus-mesatee-watch")
    except (BusConnectError, FileNotFoundError, OSError) as exc:
        print(f"{PROG}: cannot follow the bus ({exc}); asking the TMS every second instead", file=sys.stderr)
    try:
        final = await watch_task(client, args.task_id, bus, timeout=args.timeout,
                                 on_change=lambda change: print(describe(change), flush=True))
    except TimeoutError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return TIMED_OUT
    finally:
        if bus is not None:
            await bus.close()
    return 0 if final["status"] == "Finished" else 1


def _print(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    import orjson

    option = orjson.OPT_INDENT_2 if args.pretty else 0
    print(orjson.dumps(reply, option=option).decode(), flush=True)
    return 0


class _Bars:
    """tqdm bars for an upload's two passes (hashing, then encrypting and sending)."""

    def __init__(self, tqdm: Any, name: str) -> None:
        self._tqdm, self._name = tqdm, name
        self._phase: str | None = None
        self._bar: Any = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self.close()
            self._phase = phase
            self._bar = self._tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                                   desc=f"{'hashing' if phase == 'hash' else phase + 'ing'} {self._name}",
                                   file=sys.stderr)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_bar(path: Path) -> Progress | None:
    """A progress bar on a terminal for a large file, when tqdm is installed; else nothing."""
    try:
        large = path.stat().st_size > PROGRESS_ABOVE_BYTES
    except OSError:
        return None                                  # the client says what is wrong with the file
    if not large or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return _Bars(tqdm, path.name)
