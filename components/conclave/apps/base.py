"""What an enclave application sees: the mail it is given and the enclave's services.

Conclave's `Enclave.receiveMail(mail, routingHint)` becomes `receive_mail(mail, routing_hint)`;
`postOffice(mail).encryptMail(body)` + `postMail(bytes, routingHint)` become
`self.enclave.post_office(mail).encrypt(body)` + `self.enclave.post_mail(bytes, routing_hint)`
(`self.enclave.reply(mail, body, routing_hint)` does both). `self.enclave.persistent_map` (str ->
bytes) is sealed after every mail that changes it, when the class sets `persistent_map = True`;
`self.enclave.files` is the encrypted file store of `--filesystem.file`. A mail whose handling raises
changes nothing of the map or the files and posts nothing; the caller gets ENCLAVE_EXCEPTION with
the exception's message (none in release mode).
"""

from __future__ import annotations

from typing import Protocol

from components.conclave.mail import Mail


class EnclaveException(Exception):
    """Raise to refuse a mail with a message for the client (Conclave's EnclaveException)."""


class PostOffice(Protocol):
    def encrypt(self, body: bytes) -> bytes: ...


class EnclaveServices(Protocol):
    """The enclave around an application (components/conclave/enclave_env.py)."""

    persistent_map: dict[str, bytes]
    files: dict[str, bytes]
    has_files: bool

    def post_office(self, mail: Mail) -> PostOffice: ...

    def post_office_to(self, public_key: bytes, topic: str) -> PostOffice: ...

    def post_mail(self, encrypted: bytes, routing_hint: str) -> None: ...

    def reply(self, mail: Mail, body: bytes, routing_hint: str) -> None: ...


class EnclaveApp:
    """Subclass and override `receive_mail`."""

    persistent_map = False      # True: replies carry Conclave's private header; the map is sealed

    def __init__(self, enclave: EnclaveServices) -> None:
        self.enclave = enclave

    def receive_mail(self, mail: Mail, routing_hint: str | None) -> None:
        raise EnclaveException(f"{type(self).__name__} does not take mail")
