"""`teebus cyborg ...`: the conductor's view from a terminal, through its HTTP site.

    teebus cyborg hardware [--host H] [--type T] [--health Healthy|Unhealthy] [--since R] [--json]
    teebus cyborg agents [--json]

Both ask the `cyborg-conductor` site (this deployment's http_host and port, or --url) and print a
table; `--json` prints the conductor's answer as it is. `hardware --since R` lists what changed
after revision R and the devices removed since; the last line gives the revision to follow from.
Errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the CLI hands the settings in; this package does not depend on teebus
    from teebus.settings import Settings

CONDUCTOR_SITE = "cyborg-conductor"
PROG = "teebus cyborg"
TIMEOUT_SECONDS = 60.0


def register(parser: argparse.ArgumentParser, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`teebus cyborg ...`; `common` adds teebus's shared options (--data-dir, --config, ...)."""
    verbs = parser.add_subparsers(dest="cyborg_verb", required=True)
    hardware = verbs.add_parser("hardware", help="every host's hardware, as the conductor knows it")
    hardware.add_argument("--host", help="only this host's devices")
    hardware.add_argument("--type", dest="device_type", metavar="TYPE", help="only devices of this type (GPU, FPGA, ...)")
    hardware.add_argument("--health", help="only Healthy or only Unhealthy devices")
    hardware.add_argument("--since", type=int, metavar="REVISION", help="only what changed after this revision")
    agents = verbs.add_parser("agents", help="every agent: READY or LOST, its last report and its lease")
    for verb in (hardware, agents):
        common(verb)
        verb.add_argument("--url", help=f"the conductor (default: this deployment's {CONDUCTOR_SITE} site)")
        verb.add_argument("--json", action="store_true", help="print the conductor's JSON answer")
    parser.set_defaults(system_verbs=main)


async def main(args: argparse.Namespace, settings: Settings) -> int:
    import aiohttp
    import orjson

    base = (args.url or f"http://{_host(settings.http_host)}:{settings.ports[CONDUCTOR_SITE]}").rstrip("/")
    if args.cyborg_verb == "hardware":
        path = "/hardware"
        params = {name: str(value) for name, value in (("host", args.host), ("device_type", args.device_type),
                                                      ("health", args.health), ("since", args.since))
                  if value is not None}
    else:
        path, params = "/agents", {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as session:
            async with session.get(base + path, params=params) as response:
                raw = await response.read()
                status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"{PROG}: cannot reach the conductor at {base}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        print(f"{PROG}: the conductor answered {status} with a body that is not JSON", file=sys.stderr)
        return 1
    if status >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        print(f"{PROG}: {message or raw[:200].decode(errors='replace')} ({status})", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(body).decode(), flush=True)
        return 0
    lines = hardware_table(body) if args.cyborg_verb == "hardware" else agents_table(body)
    print("\n".join(lines), flush=True)
    return 0


def hardware_table(body: dict[str, Any]) -> list[str]:
    rows = [["HOST", "UUID", "TYPE", "ADDRESS", "VENDOR:PRODUCT", "HEALTH", "STALE", "REVISION", "REASON"]]
    for entry in sorted(body.get("hardware", []), key=lambda e: (e["teebus"]["host"], e["acc_specs"]["device_type"],
                                                                 e["teebus"].get("address") or "", e["uuid"])):
        ours = entry["teebus"]
        rows.append([ours["host"], entry["uuid"], entry["acc_specs"]["device_type"], ours.get("address") or "-",
                     f"{ours.get('vendor') or '-'}:{ours.get('product') or '-'}", ours.get("health", ""),
                     "yes" if ours.get("stale") else "no", str(ours.get("revision", "")),
                     _short(ours.get("health_reason") or "", 60)])
    lines = _table(rows)
    for removed in body.get("removed", []):
        lines.append(f"removed {removed['uuid']} from {removed['host']} at revision {removed['revision']}")
    count = len(body.get("hardware", []))
    lines.append(f"{count} device{'s' if count != 1 else ''}; inventory revision {body.get('revision')}")
    return lines


def agents_table(body: dict[str, Any]) -> list[str]:
    now = time.time()
    rows = [["HOST", "ENDPOINT", "STATUS", "DEVICES", "LAST REPORT", "LAST HEARTBEAT", "LEASE"]]
    for agent in body.get("agents", []):
        expires = agent.get("lease_expires")
        lease = "-" if expires is None else (f"{expires - now:.1f}s left" if expires > now
                                             else f"lapsed {_ago(now, expires)}")
        rows.append([agent["host"], agent["endpoint"], agent["status"], str(agent.get("devices", 0)),
                     _ago(now, agent.get("last_report")), _ago(now, agent.get("last_heartbeat")), lease])
    lines = _table(rows)
    lines.append(f"{len(body.get('agents', []))} agents")
    return lines


def _ago(now: float, then: float | None) -> str:
    if not then:
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(then))


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _host(host: str) -> str:
    """Where to reach sites listening on `host` (all addresses: loopback)."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
