"""Operator tools: `teebus status`, `teebus bus sub|req`, `teebus events` (the nats CLI's jobs),
`teebus config` and `teebus roles`."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

import orjson
import tomli_w
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError as StreamNotFound

from adapters.http.runner import INTERNAL_TOKEN_FILE
from bus import codec, events, headers, roles
from bus.cluster import shared_secrets
from bus.errors import BusError, NotFound
from bus.manifest import Manifest
from bus.requester import Requester
from teebus import cluster_status
from teebus.diagnostic import diagnostic

DISCOVERY_WAIT = 0.5


def render_payload(data: bytes, hdrs: dict[str, str] | None) -> str:
    """JSON as sent, CBOR in diagnostic notation, anything else as length and hex preview."""
    content_type = codec.content_type_of(hdrs)
    if hdrs and headers.PAYLOAD_REF in hdrs:
        return f"<{content_type} in the payload stream: {hdrs[headers.PAYLOAD_REF]}>"
    try:
        if content_type == headers.CBOR:
            return diagnostic(codec.decode(data, headers.CBOR))
        if content_type == headers.JSON:
            return data.decode() if data else ""
    except (BusError, UnicodeDecodeError):
        pass
    preview = data[:64].hex()
    return f"<{len(data)} bytes{': ' + preview if data else ''}{'...' if len(data) > 64 else ''}>"


def print_settings(document: dict[str, Any], out: TextIO | None = None) -> int:
    """The effective configuration as TOML; options with no value (None) are listed in a comment."""
    out = out or sys.stdout
    unset: list[str] = []

    def drop_none(table: dict[str, Any], where: str) -> dict[str, Any]:
        kept = {}
        for key, value in table.items():
            if value is None:
                unset.append(f"{where}.{key}")
            else:
                kept[key] = drop_none(value, f"{where}.{key}") if isinstance(value, dict) else value
        return kept

    cleaned = {name: drop_none(section, name) for name, section in document.items()}
    if unset:
        print(f"# not set (their default applies): {', '.join(unset)}", file=out)
    print(tomli_w.dumps(cleaned), end="", file=out)
    return 0


def print_roles(systems: tuple[Manifest, ...], out: TextIO | None = None) -> int:
    """Every static NATS role of these systems with its permissions, as the server gets them."""
    out = out or sys.stdout
    for role in roles.all_roles(systems):
        print(f"{role.name}: {role.description}", file=out)
        print(orjson.dumps(role.permissions, option=orjson.OPT_INDENT_2).decode(), file=out)
    return 0


def format_message(msg: Msg) -> str:
    hdrs = msg.headers or {}
    shown = " ".join(f"{k}={'<secret>' if k == headers.PAYLOAD_KEY else v}" for k, v in hdrs.items()
                     if k != headers.CONTENT_TYPE)
    return f"[{msg.subject}]{' ' + shown if shown else ''}\n{render_payload(msg.data, hdrs)}"


async def gather(client: Client, subject: str, wait: float = DISCOVERY_WAIT) -> list[dict[str, Any]]:
    """Publish one request and collect every answer that arrives within `wait` seconds."""
    inbox = client.new_inbox()
    answers: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        answers.append(orjson.loads(msg.data))

    sub = await client.subscribe(inbox, cb=collect)
    await client.publish(subject, b"", reply=inbox)
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return answers


def print_shared_secrets(data_dir: Path, systems: list[Manifest], out: TextIO | None = None) -> int:
    """`teebus cluster init`: the files every machine's data directory needs alike (never their contents)."""
    out = out or sys.stdout
    paths = shared_secrets(data_dir, [role.name for role in roles.all_roles(systems)], [INTERNAL_TOKEN_FILE],
                           [key for manifest in systems for key in manifest.shared_keys])
    print("Copy these to the same places in every other machine's data directory (keep their modes: the "
          "secrets are 0600), before "
          "`teebus cluster node` starts there:", file=out)
    for path in paths:
        print(f"  {path.relative_to(data_dir)}", file=out)
    return 0


async def status(client: Client, out: TextIO = sys.stdout, monitors: list[str] | None = None) -> list[dict[str, Any]]:
    """Print the NATS servers and JetStream assets (teebus/cluster_status.py), then live services
    (INFO: description), their replicas and per-endpoint stats (STATS); return the stats."""
    (servers, meta), assets = await asyncio.gather(cluster_status.read_servers(monitors or []),
                                                   cluster_status.read_assets(client))
    cluster_status.render(out, client, servers, meta, assets)
    print(file=out)
    stats, infos = await asyncio.gather(gather(client, "$SRV.STATS"), gather(client, "$SRV.INFO"))
    descriptions = {info["name"]: info.get("description") or "" for info in infos}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in stats:
        by_name.setdefault(entry["name"], []).append(entry)
    if not by_name:
        print("no services answer on this bus", file=out)
    for name in sorted(by_name):
        replicas = by_name[name]
        print(f"{name} {replicas[0]['version']}  replicas: {len(replicas)}", file=out)
        if descriptions.get(name):
            print(f"  {descriptions[name]}", file=out)
        for replica in replicas:
            print(f"  {replica['id']}  since {replica.get('started', '?')}", file=out)
            for endpoint in replica.get("endpoints") or []:
                data = endpoint.get("data") or {}
                print(f"    {endpoint['subject']:<40} requests {endpoint['num_requests']:>7}  "
                      f"errors {endpoint['num_errors'] + data.get('errors', 0):>5}  "
                      f"avg {data.get('average_ms', 0):.3f} ms", file=out)
    return stats


async def subscribe(client: Client, subject: str, count: int | None = None, out: TextIO = sys.stdout) -> None:
    """Print every message on `subject` (wildcards allowed) until interrupted or `count` seen."""
    done = asyncio.Event()
    seen = 0

    async def show(msg: Msg) -> None:
        nonlocal seen
        if count and seen >= count:
            return  # already queued before the unsubscribe: `count` means at most `count` printed
        print(format_message(msg), file=out, flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    sub = await client.subscribe(subject, cb=show)
    try:
        await done.wait()
    finally:
        await sub.unsubscribe()


async def request(client: Client, subject: str, data: str, content_type: str, timeout: float,
                  out: TextIO = sys.stdout) -> int:
    """Send DATA (JSON text; re-encoded as CBOR when asked) and print the reply. Exit status."""
    try:
        payload: Any = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        if content_type != headers.OCTETS:
            print(f"DATA must be JSON text (got {data!r})", file=sys.stderr)
            return 2
        payload = None
    if content_type == headers.OCTETS:
        payload = data.encode()
    try:
        reply = await Requester(client, timeout=timeout).request(subject, payload, content_type=content_type)
    except BusError as exc:
        print(f"error {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    print(render_payload(reply.data, {headers.CONTENT_TYPE: reply.content_type}), file=out)
    return 0


def parse_since(value: str) -> datetime:
    """`--since` takes an ISO time or a duration back from now: 30s, 15m, 2h, 7d."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    problem = f"--since takes an ISO time or a duration like 15m, 2h, 7d; got {value!r}"
    number = value[:-1]
    if value and value[-1] in units and number.isascii() and number.isdigit():
        try:
            return datetime.now(timezone.utc) - timedelta(**{units[value[-1]]: int(number)})
        except OverflowError:
            raise ValueError(f"{problem} (that is before the year 1)") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(problem) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


async def export_events(client: Client, since: datetime | None, follow: bool, subject: str = events.SUBJECTS,
                        out: TextIO = sys.stdout) -> int:
    """Write stored events as JSON lines (`seq`, `subject`, `event`); keep tailing with `follow`."""
    js = client.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since.isoformat()) \
        if since else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    try:
        sub = await js.subscribe(subject, stream=events.STREAM, ordered_consumer=True, config=config)
    except StreamNotFound:
        raise NotFound(f"this bus has no {events.STREAM} stream: no component has run on it yet "
                       "(`teebus up` or `teebus run COMPONENT` creates it)") from None
    written = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=None if follow else 1.0)
            except asyncio.TimeoutError:
                if not follow:
                    break
                continue
            line = {"seq": msg.metadata.sequence.stream, "subject": msg.subject, "event": orjson.loads(msg.data)}
            print(orjson.dumps(line).decode(), file=out, flush=True)
            written += 1
            if not follow and msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return written
