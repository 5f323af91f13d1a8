"""NATS roles and their subject permissions, built from the systems' manifests.

Kernel roles serve every system: `adapter` (external subjects only), `gateway` (internal subjects
too, behind the internal credential), `observer` (read-only tools) and `admin` (operators). Each
system's components get a role of their own named after the system, which reaches only that
system's subjects, its events, its KV buckets and its own payloads (bus/payloads.py); a manifest may add roles of
its own (`<system>-<name>`). The embedded server's `authorization` block is rendered from this list
(bus/users.py), so no permission is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from bus import events, log_shipping, payloads, records, streams
from bus.manifest import Manifest

INTERNAL = "*.*.internal.>"   # the third token `internal` marks a subject for components only
INBOXES = "_INBOX.>"
ADMIN, ADAPTER, GATEWAY, OBSERVER = "admin", "adapter", "gateway", "observer"
KERNEL_ROLES = (ADMIN, ADAPTER, GATEWAY, OBSERVER)


def inbox_prefix(role: str) -> str:
    """Where replies to a connection of `role` arrive (bus/connection.py sets it on every connection).

    A role may subscribe to its own prefix only, so no role receives the replies sent to another
    (the adapter never sees the key material a KMS reply carries to the gateway). Connections of one
    role share it: they hold the same password, and may ask for the same replies themselves.
    """
    return f"_INBOX.{role}"


def own_inbox(role: str) -> str:
    return f"{inbox_prefix(role)}.>"


@dataclass(frozen=True)
class Role:
    """One NATS user: its name and its permissions block (as nats-server's config spells it)."""

    name: str
    permissions: Mapping[str, Any]
    description: str = ""


def _external_caller(role: str, systems: Iterable[Manifest], deny_internal: bool) -> dict[str, Any]:
    publish: dict[str, Any] = {"allow": [f"{m.name}.>" for m in systems] + payloads.permissions(role)
                               + log_shipping.permissions(role)}
    if deny_internal:
        publish["deny"] = [INTERNAL]
    return {"publish": publish, "subscribe": {"allow": [own_inbox(role)]}}


def component_permissions(manifest: Manifest) -> dict[str, Any]:
    """A system's components: its subjects, its events, its buckets and streams, its payloads."""
    buckets = [subject for bucket in manifest.buckets for subject in records.bucket_permissions(bucket)]
    owned = [subject for stream in manifest.streams for subject in streams.permissions(stream)]
    publish = list(dict.fromkeys([f"{manifest.name}.>", events.publish_permission(manifest.name),
                                  *buckets, *owned, *payloads.permissions(manifest.role),
                                  *log_shipping.permissions(manifest.role), INBOXES]))   # each once
    reads = [log_shipping.SUBJECTS] if manifest.reads_logs else []
    return {
        # INBOXES: the response permission `allow_responses` grants does not survive a configuration
        # reload (nats-server re-evaluates permissions on every SIGHUP, and bus/users.py reloads
        # whenever a dynamic user comes or goes), so a reply sent after one would be refused.
        # Its streams' API is its own, but never to delete or purge a whole stream: that is admin's.
        "publish": {"allow": publish, "deny": ["$JS.API.STREAM.DELETE.*", "$JS.API.STREAM.PURGE.*"]},
        "subscribe": {"allow": [f"{manifest.name}.>", "$SRV.>", own_inbox(manifest.role), *reads]},
        "allow_responses": True,
    }


def secret_subjects(systems: Iterable[Manifest]) -> list[str]:
    """Every system's subjects whose requests carry credentials (`Manifest.secret_subjects`)."""
    return [subject for manifest in systems for subject in manifest.secret_subjects]


def observer_permissions(systems: Iterable[Manifest]) -> dict[str, Any]:
    """Read-only tools: discovery, the events, the systems' external traffic but the subjects whose
    bodies carry credentials (`Manifest.secret_subjects`), and the list of JetStream's streams
    (`teebus status`: `$JS.API.STREAM.LIST`, replicas, leaders, sizes; never their messages, nor
    `STREAM.INFO` of any stream but EVENTS, whose subjects filter would list a bucket's keys: KMS key
    ids, user names); never replies (other roles' inboxes), internal subjects, KV values or payloads
    (that is admin's). A wildcard subscription that overlaps a denied subject (`<system>.>`) is
    served without the denied messages."""
    systems = list(systems)
    return {
        "publish": {"allow": ["$SRV.>", "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
                              *events.READ_PERMISSIONS, "$JS.FC.>"]},
        "subscribe": {"allow": [own_inbox(OBSERVER), "$SRV.>", events.SUBJECTS, *(f"{m.name}.>" for m in systems)],
                      "deny": [INTERNAL, *secret_subjects(systems)]},
    }


ADMIN_PERMISSIONS = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def all_roles(systems: Iterable[Manifest]) -> list[Role]:
    """Every static role of a deployment running `systems`, kernel roles first."""
    systems = list(systems)
    roles = [Role(ADMIN, ADMIN_PERMISSIONS, "operators: everything, like the nats CLI's system user"),
             Role(ADAPTER, _external_caller(ADAPTER, systems, deny_internal=True),
                  "external adapters: request external subjects only"),
             Role(GATEWAY, _external_caller(GATEWAY, systems, deny_internal=False),
                  "internal ports (behind internal.token): internal subjects too"),
             Role(OBSERVER, observer_permissions(systems),
                  "teebus status/events/bus sub: read only; no replies, no internal or secret subjects")]
    for manifest in systems:
        roles.append(Role(manifest.role, component_permissions(manifest), f"the {manifest.name} components"))
        roles.extend(Role(manifest.role_name(extra), extra.permissions, extra.description)
                     for extra in manifest.roles)
    names = [role.name for role in roles]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"role names clash: {', '.join(clashes)} (a system may not be named after a "
                         "kernel role)")
    return roles
