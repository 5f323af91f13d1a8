"""What every deployment has before any component starts: the payload stream and the EVENTS stream.

`teebus up` and `teebus run` create them as the admin role (components may not: their role reaches
only their own system's buckets); so do the test bus and the benchmarks.
"""

from __future__ import annotations

from nats.aio.client import Client

from bus import events, payloads


async def prepare(client: Client, replicas: int = 1) -> None:
    """Create what is missing with `replicas` copies, and scale up what has fewer (idempotent;
    several nodes may race here). Raises ReplicasRefused, with the fix in its message, when the
    servers cannot keep `replicas` copies (bus/streams.py)."""
    await payloads.ensure_store(client, replicas)
    await events.ensure_stream(client, replicas)
