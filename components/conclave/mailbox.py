"""The web host's `/poll-mail`: hands out the mail an enclave queued for a routing hint, once each.

Stateless (the mail is on the stream, mail_store.py), so any number of replicas may serve polls
beside any number of host adapters. A poll may wait for mail (long poll) when the caller asks.
"""

from __future__ import annotations

from bus.component import Component, Endpoint, Incoming, Outgoing
from bus import headers
from components.conclave import mail_store, messages, subjects
from components.conclave.config import ConclaveConfig


class Mailboxes(Component):
    system = subjects.SYSTEM
    name = "mailbox"
    description = "Conclave mailboxes: /poll-mail, durable, FIFO per Correlation-ID"
    config: ConclaveConfig

    async def setup(self) -> None:
        await mail_store.ensure_stream(self.client, self.config, self.context.replicas)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("poll", subjects.poll(self.config.enclave_name), self.poll)]

    async def poll(self, incoming: Incoming) -> Outgoing:
        hint = messages.routing_hint(incoming.headers)
        wait = messages.poll_wait(incoming.headers, self.config.long_poll_max_seconds)
        taken = await mail_store.wait_and_take(self.client, self.config.enclave_name, hint, wait)
        if taken is None:
            return Outgoing(b"", headers.OCTETS)
        try:      # the mail has left the mailbox: a lost event must not lose it too
            await self.events.publish("mail", "taken", {"enclave": self.config.enclave_name,
                                                        "mailbox": subjects.hint_token(hint), "bytes": len(taken.mail)})
        except Exception as exc:
            self.log.warning("event not recorded", lost_event="mail.taken", error=str(exc) or type(exc).__name__)
        return Outgoing(taken.mail, headers.OCTETS)
