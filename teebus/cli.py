"""`teebus`: start the system, run chosen components, look at the bus, and each system's own verbs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from bus import config, headers, log
from bus import loop as bus_loop
from bus.connection import BusConnectError, connect
from bus.cluster import monitor_urls as cluster_monitors, read_layout
from bus.errors import BusError
from bus.manifest import load
from bus.server import ServerError
from teebus.catalog import Catalog
from teebus.settings import DEFAULT_NATS_PORT, LOG_LEVELS, Settings, build, layered, parse_port_overrides, \
    read_file

SYSTEM_VERBS = "system_verbs"   # set by a system's `register`: async (args, settings) -> exit status


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="state, secrets and JetStream storage (default ./teebus-data)")
    parser.add_argument("--nats", metavar="URL", help="join this NATS deployment instead of embedding one "
                        "(a cluster: its servers' URLs separated by commas; connections fail over between them)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    parser.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")
    parser.add_argument("--config", type=Path, metavar="FILE", help="teebus.toml: a [teebus] section, [ports], "
                        "and a section per system; command-line options override it")


def _deployment(parser: argparse.ArgumentParser, catalog: Catalog) -> None:
    """Options of `up`, `run` and `config`: where things listen, and every system's own group."""
    parser.add_argument("--host", help="address the HTTP adapters listen on (default 127.0.0.1)")
    parser.add_argument("--internal-host", help="address the internal sites (behind internal.token) listen "
                        "on (default 127.0.0.1, whatever --host says)")
    parser.add_argument("--port", action="append", default=[], metavar="SITE=PORT",
                        help=f"move one site (sites: {', '.join(catalog.ports())})")
    parser.add_argument("--replicas", type=int, help="JetStream copies of each bucket and stream (default: "
                        "1 on one server, 3 on a cluster of 3 or more)")
    for manifest in catalog.systems:
        if manifest.config is not type(None):
            config.add_arguments(parser.add_argument_group(manifest.summary), manifest.config, manifest.name)


def build_parser(catalog: Catalog) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teebus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the embedded NATS server, every component and adapter")
    _common(up)
    up.add_argument("--nats-port", type=int, help=f"embedded server port (default {DEFAULT_NATS_PORT})")
    up.add_argument("--nats-conf", type=Path, help="embedded server settings (default: ./nats.conf "
                    "of the teebus checkout)")
    up.add_argument("--demo", action="store_true", help="also create the systems' demo data, so the seeds' "
                    "examples run verbatim (MesaTEE: users user1/token1 and user2/token2); never in production")
    _deployment(up, catalog)

    cluster = commands.add_parser("cluster", help="a local NATS cluster for development and tests")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    cluster_up = cluster_commands.add_parser(
        "up", help="start N nats-servers clustered on loopback (JetStream replicated) and everything on top",
        description="Like `teebus up`, on a cluster of --nodes nats-servers (routes and JetStream clustering "
        "on loopback, each node its store under <data-dir>/cluster/<name>). Every bucket and stream gets "
        "min(3, nodes) replicas unless --replicas says otherwise. docs/scaling.md has the multi-machine way.")
    _common(cluster_up)
    cluster_up.add_argument("--nodes", type=int, default=3, help="nats-servers (default 3)")
    cluster_up.add_argument("--nats-port", type=int, help=f"first node's client port, the next nodes the "
                            f"ports after it (default {DEFAULT_NATS_PORT})")
    cluster_up.add_argument("--cluster-port", type=int, help="first node's route port (default 6222)")
    cluster_up.add_argument("--monitor-port", type=int, help="first node's monitoring port (default 8222)")
    cluster_up.add_argument("--nats-conf", type=Path, help="server settings (default: ./nats.conf)")
    cluster_up.add_argument("--demo", action="store_true", help="as for `teebus up`")
    _deployment(cluster_up, catalog)

    cluster_init = cluster_commands.add_parser(
        "init", help="create the secrets every machine of a cluster shares, and say which files to copy")
    _common(cluster_init)

    cluster_node = cluster_commands.add_parser(
        "node", help="this machine's nats-server as a node of a cluster across machines, and everything on top",
        description="Like `teebus up`, with the embedded nats-server a node of a cluster: it routes to the "
        "peers named by --routes (their --cluster-port), and replicates JetStream with them. Every machine "
        "runs this with its own --name and the same nats.credentials, internal.token and nats/cluster.secret "
        "in its data directory (copied from the first machine). docs/scaling.md has the exact commands.")
    _common(cluster_node)
    cluster_node.add_argument("--name", required=True, help="this node's name, unique in the cluster (e.g. n1)")
    cluster_node.add_argument("--routes", required=True, metavar="HOST:PORT,...",
                              help="the other nodes' route addresses (their --cluster-port)")
    cluster_node.add_argument("--nats-host", help="address clients and routes reach this machine's server at "
                              "(default 127.0.0.1: give the machine's cluster-network address)")
    cluster_node.add_argument("--nats-port", type=int, help=f"client port (default {DEFAULT_NATS_PORT})")
    cluster_node.add_argument("--cluster-port", type=int, help="route port (default 6222)")
    cluster_node.add_argument("--monitor-port", type=int, help="monitoring port, on loopback (default 8222)")
    cluster_node.add_argument("--nats-conf", type=Path, help="server settings (default: ./nats.conf)")
    cluster_node.add_argument("--demo", action="store_true", help="as for `teebus up`")
    _deployment(cluster_node, catalog)

    run = commands.add_parser("run", help="run chosen components/adapters against --nats URL")
    _common(run)
    run.add_argument("names", nargs="+", metavar="NAME", help=f"any of: {', '.join(catalog.names())}")
    _deployment(run, catalog)

    shown = commands.add_parser("config", help="print the effective configuration as TOML (secrets hidden)")
    _common(shown)
    shown.add_argument("--nats-port", type=int)
    shown.add_argument("--nats-conf", type=Path)
    _deployment(shown, catalog)

    listed = commands.add_parser("roles", help="print every NATS role and its subject permissions")
    _common(listed)

    status = commands.add_parser("status", help="NATS servers, JetStream assets and their replicas, live "
                                 "services and their stats")
    _common(status)
    status.add_argument("--monitor", action="append", default=[], metavar="URL",
                        help="a nats-server's monitoring URL (http://host:8222), for the servers and the "
                        "JetStream meta leader; a local cluster's are found in <data-dir>/cluster.json")

    bus = commands.add_parser("bus", help="debug the bus as with the nats CLI")
    bus_commands = bus.add_subparsers(dest="bus_command", required=True)
    sub = bus_commands.add_parser("sub", help="print messages on SUBJECT (wildcards allowed)",
                                  description="As the observer role, which sees the systems' external "
                                  "subjects, events and discovery, but never replies, internal subjects, stored "
                                  "state ($KV, $JS, $TEEBUS.payload) or the subjects whose requests carry "
                                  "credentials (a system's secret_subjects: MesaTEE's tasks, files and "
                                  "invocations carry user and task tokens): looking at those is an admin's act, "
                                  "--admin. A wildcard such as mesatee.> is served without them.")
    _common(sub)
    sub.add_argument("subject")
    sub.add_argument("--count", type=int, help="stop after this many messages")
    sub.add_argument("--admin", action="store_true",
                     help="subscribe as admin: replies, internal subjects and credential-carrying ones too")
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
    ev.add_argument("--subject", default="events.>", help="filter, e.g. events.<system>.>")

    for manifest in catalog.systems:
        if manifest.verbs:
            verbs = commands.add_parser(manifest.name, help=f"{manifest.summary}: client commands")
            load(manifest.verbs)(verbs, _common)   # the system adds `_common` to each of its verbs
        for command in manifest.commands:
            load(command.target)(commands.add_parser(command.name, help=command.help), _common)
    return parser


def command_line_document(args: argparse.Namespace, catalog: Catalog) -> dict[str, Any]:
    """The options given on the command line, shaped like teebus.toml, to lay over the file."""
    values = vars(args)
    core = {name: values.get(option) for name, option in (
        ("data_dir", "data_dir"), ("nats_url", "nats"), ("log_level", "log_level"), ("nats_port", "nats_port"),
        ("http_host", "host"), ("internal_host", "internal_host"), ("replicas", "replicas"),
        ("cluster_port", "cluster_port"), ("monitor_port", "monitor_port"))}
    if values.get("cluster_command") == "up":
        core["nodes"] = values["nodes"]
    if values.get("cluster_command") == "node":
        core.update(node_name=values["name"], routes=values["routes"], nats_host=values.get("nats_host"))
    if values.get("nats_conf"):
        core["nats_conf"] = values["nats_conf"].resolve()
    document: dict[str, Any] = {"teebus": {k: v for k, v in core.items() if v is not None}}
    if values.get("port"):
        document["ports"] = parse_port_overrides(values["port"])
    for manifest in catalog.systems:
        if manifest.config is not type(None):
            given = config.from_arguments(manifest.config, manifest.name, args)
            if given:
                document[manifest.name] = given
    return document


def settings_from(args: argparse.Namespace, catalog: Catalog) -> Settings:
    """Defaults, then the --config file, then the command line."""
    document = read_file(args.config) if getattr(args, "config", None) else {}
    return build(catalog, layered(document, command_line_document(args, catalog)))


async def _with_client(settings: Settings, role: str, action: Callable[[Any], Awaitable[Any]]) -> int:
    """Run `action` on a connection as `role`; its result is the exit status when it is one."""
    client = await connect(settings.url, role, data_dir=settings.data_dir, name=f"teebus-cli-{role}")
    try:
        result = await action(client)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    finally:
        await client.close()


async def dispatch(args: argparse.Namespace, catalog: Catalog, settings: Settings) -> int:
    from teebus import launcher, tools  # the runtime: not needed to parse or print help

    if args.command == "cluster" and args.cluster_command == "init":
        return tools.print_shared_secrets(settings.data_dir, catalog.systems)
    if args.command == "up" or args.command == "cluster":
        failure = await launcher.serve_until_signalled(launcher.Deployment(settings, catalog, demo=args.demo))
        if failure:
            print(f"teebus: {failure}", file=sys.stderr)
        return 1 if failure else 0
    if args.command == "run":
        if settings.embedded:
            raise SystemExit("teebus run joins an existing bus: pass --nats URL (teebus up prints it)")
        catalog.check(args.names)
        await launcher.serve_until_signalled(launcher.Node(settings, args.names, catalog))
        return 0
    if args.command == "config":
        return tools.print_settings(settings.describe())
    settings = _through_local_cluster(settings)
    if args.command == "roles":
        return tools.print_roles(catalog.systems)
    if args.command == "status":
        monitors = cluster_monitors(settings.data_dir, args.monitor)
        return await _with_client(settings, "observer", lambda c: tools.status(c, monitors=monitors))
    if args.command == "events":
        since = tools.parse_since(args.since) if args.since else None
        return await _with_client(settings, "observer", lambda c: _exported(c, since, args))
    if args.command == "bus" and args.bus_command == "sub":
        if not args.admin and _needs_admin(args.subject, catalog.systems):
            print(f"teebus: {args.subject} may carry replies, internal traffic, stored state or credentials, which "
                  "the observer role never sees; looking at it is an admin's act: add --admin", file=sys.stderr)
            return 2
        role = "admin" if args.admin else "observer"
        return await _with_client(settings, role, lambda c: tools.subscribe(c, args.subject, args.count))
    if args.command == "bus":
        content_type = headers.CBOR if args.cbor else headers.OCTETS if args.raw else headers.JSON
        return await _with_client(settings, "admin",
                                  lambda c: tools.request(c, args.subject, args.data, content_type, args.timeout))
    return await getattr(args, SYSTEM_VERBS)(args, settings)


def _through_local_cluster(settings: Settings) -> Settings:
    """A tool run on the data directory of a running `teebus cluster up` talks to all its nodes (so
    it works while any one of them is down), unless --nats says where."""
    layout = read_layout(settings.data_dir)
    if settings.embedded and layout:
        settings.nats_url = layout["url"]
    return settings


def _needs_admin(subject: str, systems: Any = None) -> bool:
    """Whether a subscription asks for what only admin may watch (bus/roles.py, the observer role):
    replies, internal subjects, stored state (KV buckets, streams, the payload stream
    `$TEEBUS.payload.>`), or subjects whose requests carry credentials (the `secret_subjects` of
    `systems`, by default every installed system's). As nats-server judges it, a subscription that
    one of those covers is refused (`mesatee.tms.task.>`), and a wildcard that merely overlaps them is
    served, without them (`mesatee.>`)."""
    from bus.roles import secret_subjects

    tokens = subject.split(".")
    if subject == ">" or tokens[0] in ("_INBOX", "$KV", "$O", "$JS", "$TEEBUS") or (
            len(tokens) > 2 and tokens[2] == "internal"):
        return True

    def covers(pattern: list[str]) -> bool:
        """Whether every subject `subject` matches, `pattern` matches too (a wildcard of the pattern
        takes any token of the subscription, wildcards included)."""
        for index, wanted in enumerate(pattern):
            if wanted == ">":
                return len(tokens) > index
            if index >= len(tokens) or wanted not in ("*", tokens[index]):
                return False
        return len(tokens) == len(pattern)

    if systems is None:
        from teebus.systems import installed
        systems = installed()
    return any(covers(secret.split(".")) for secret in secret_subjects(systems))


async def _exported(client: Any, since: Any, args: argparse.Namespace) -> None:
    from teebus import tools

    await tools.export_events(client, since, args.follow, args.subject)  # a count, not an exit status


def main(argv: list[str] | None = None, catalog: Catalog | None = None) -> int:
    if catalog is None:
        from teebus import systems
        catalog = Catalog(systems.installed())
    args = build_parser(catalog).parse_args(argv)
    log.configure(args.log_level or "info", json=True if args.log_json else None)
    try:
        settings = settings_from(args, catalog)
        log.configure(settings.log_level, json=True if args.log_json else None)
        return bus_loop.run(dispatch(args, catalog, settings))
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
