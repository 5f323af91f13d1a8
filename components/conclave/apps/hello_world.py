"""Conclave's hello-world sample: every mail is answered with its body reversed."""

from __future__ import annotations

from components.conclave.apps.base import EnclaveApp
from components.conclave.mail import Mail


class HelloWorld(EnclaveApp):
    def receive_mail(self, mail: Mail, routing_hint: str | None) -> None:
        self.enclave.reply(mail, reverse(mail.body), routing_hint)


def reverse(body: bytes) -> bytes:
    """The sample reverses the body's characters (a String in Conclave's Kotlin, UTF-8 on the wire)."""
    try:
        return body.decode("utf-8")[::-1].encode("utf-8")
    except UnicodeDecodeError:
        return body[::-1]
