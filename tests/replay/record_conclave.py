"""The Conclave scenario: a web host's clients attest, deliver mail and poll it, on the bus.

Regenerate tests/recordings/conclave_scenario.jsonl (needs no running NATS: it embeds its own server):

    python -m tests.replay.record_conclave [OUTPUT]

The driver speaks as the `adapter` role and sends what the web host's HTTP adapter sends
(adapters/http/conclave.py): `GET /attestation` as a request on the enclave's attestation subject,
`POST /deliver-mail` as the mail's bytes (`application/octet-stream`) with the Correlation-ID in the
`Conclave-Routing-Hint` header, `POST /poll-mail` as an empty octet-stream with that header; its
replies come to `_INBOX.adapter.` and the recording names that prefix. Two enclaves run, one
application each as Conclave's hosts do: hello-world, and relay with its mailboxes.

hello-world: attestation; alice's mail 0, answered with its body reversed; the same bytes again (a
replayed sequence number: 400 ENCLAVE_EXCEPTION); her mail 1 with one ciphertext byte flipped (400
MAIL_DECRYPTION); mail 1 intact, accepted (the refusals moved nothing). relay: attestation; alice and
bob join room `lobby` (empty bodies, answered `{"members": N}`); alice speaks, and her words are
queued for bob; bob polls them (the enclave's mail to him), then polls again (empty).

Why the enclaves get a fixed identity: mail is encrypted to the enclave's key, which a fresh enclave
draws at random, so a recorded mail would not open in a fresh one. Before an enclave starts,
`give_identity` writes the data directory's host secret and a sealed state holding a fixed enclave
secret, sealed where and as the enclave looks for it (sealed_state.py). The clients' keys and their
mails' ephemeral keys are fixed too, so regenerating sends the same bytes. What stays random: the
enclave's mail (a fresh ephemeral key each, and with relay's persistent map Conclave's private header
with a fresh state id per mail), the attestation's timestamp and the events' `at`. The normaliser's
`opener` (`read_payload`) reads the enclave's mail with the clients' keys, so a replay compares what
it says: to whom, from which key, topic, sequence number, body and length; the state ids by shape and
binding (each mail names the one before). The scenario checks every outcome while recording, so a
broken enclave cannot be recorded as "expected". The keys are throw-away, made for this scenario.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from cryptography.exceptions import InvalidTag
from nats.aio.client import Client

from bus import errors, headers
from bus.component import Component, Context
from bus.credentials import write_private
from bus.requester import Requester
from bus.roles import ADAPTER, inbox_prefix
from bus.testing import TestBus
from components.conclave import apps, messages, sealed_state, subjects
from components.conclave.config import ConclaveConfig
from components.conclave.enclave import Enclave
from components.conclave.mailbox import Mailboxes
from components.conclave.sealed_state import EnclaveState
from components.conclave.system import MANIFEST
from tests import conclave_wire as wire
from tests.replay import regenerate
from tests.replay.normalise import Normaliser
from tests.replay.recording import Message, Recording

RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "conclave_scenario.jsonl"
SCENARIO = "conclave"
DRIVER_ROLE = ADAPTER                      # the web host's adapter: Conclave's three calls are external
DRIVER_INBOX = f"{inbox_prefix(DRIVER_ROLE)}."

HELLO_CONFIG, RELAY_CONFIG = ConclaveConfig(app="hello-world"), ConclaveConfig(app="relay")
HELLO, RELAY = HELLO_CONFIG.enclave_name, RELAY_CONFIG.enclave_name
ROOM = "lobby"
GREETING, WORDS = "Hello, enclave!", "bob, are you there?"


def fixed_key(label: str) -> bytes:
    """A fixed 32-byte key for `label` (any 32 bytes are an X25519 private key and an Ed25519 seed)."""
    return hashlib.sha256(f"teebus conclave replay scenario: {label}".encode()).digest()


HOST_SECRET = fixed_key("host secret")
ENCLAVE_SECRETS = {config.enclave_name: fixed_key(f"enclave {config.enclave_name}")
                   for config in (HELLO_CONFIG, RELAY_CONFIG)}
ENCLAVE_KEYS = {wire.x25519_public(secret): name for name, secret in ENCLAVE_SECRETS.items()}


@dataclass(frozen=True)
class ConclaveClient:
    """A Conclave client with a fixed key; its mails' ephemeral keys are fixed by what they carry."""

    name: str

    @property
    def private(self) -> bytes:
        return fixed_key(f"client {self.name}")

    @property
    def public(self) -> bytes:
        return wire.x25519_public(self.private)

    @property
    def correlation_id(self) -> str:
        return hashlib.sha256(self.private).hexdigest().upper()    # as Conclave's web client forms it

    def mail(self, enclave: str, body: str, sequence: int, topic: str = "default") -> bytes:
        recipient = wire.x25519_public(ENCLAVE_SECRETS[enclave])
        ephemeral = fixed_key(f"ephemeral {self.name} {enclave} {topic} {sequence} {body}")
        return wire.write_mail(body.encode(), sender_private=self.private, recipient_public=recipient,
                               sequence=sequence, topic=topic, ephemeral_private=ephemeral)


ALICE, BOB = ConclaveClient("alice"), ConclaveClient("bob")
CLIENTS = (ALICE, BOB)

Connect = Callable[[str], Awaitable[Client]]


# -- what the enclave's mail says (the normaliser's opener) ---------------------------------------------

def read_payload(message: Message) -> dict[str, Any] | None:
    """An attestation or a mail to one of the clients, as a value; None for any other bytes."""
    data = message.data
    if data.startswith(b"EII"):
        try:
            return {"attestation": attestation_view(data)}
        except (ValueError, IndexError, AssertionError, struct.error):
            return None          # a damaged attestation: compared byte for byte
    for client in CLIENTS:
        try:
            mail = wire.read_mail(data, client.private)
        except (InvalidTag, ValueError, IndexError, AssertionError, struct.error):
            continue             # not this client's mail (or no mail at all)
        return {"mail": mail_view(mail, client, len(data))}
    return None


def mail_view(mail: wire.ReadMail, recipient: ConclaveClient, length: int) -> dict[str, Any]:
    view: dict[str, Any] = {"to": recipient.name, "from": ENCLAVE_KEYS.get(mail.sender, mail.sender.hex()),
                            "topic": mail.topic, "sequence": mail.sequence, "body": _text(mail.body),
                            "length": length}
    if mail.private_header:
        view.update(private_header_view(mail.private_header))
    return view


def private_header_view(header: bytes) -> dict[str, Any]:
    """conclave-wire.md §4: u8 version | 16-byte state id | u8 isNull | [16-byte previous state id]."""
    if len(header) < 18 or len(header) != (18 if header[17] else 34):
        return {"private_header": header.hex()}          # not Conclave's: compared as it is
    return {"header_version": header[0], "state_id": header[1:17].hex(),
            "previous_state_id": None if header[17] else header[18:34].hex()}


def attestation_view(data: bytes) -> dict[str, Any]:
    """conclave-wire.md §11, Mock: the keys and report fields, and the timestamp (random)."""
    eii = wire.read_eii(data)
    start = 3 + 4 + len(eii.signing_key) + 4 + len(eii.encryption_key) + 1 + 4
    seconds, nanos = struct.unpack_from(">qi", data, start)
    return {"signing_key": eii.signing_key.hex(),
            "encryption_key": ENCLAVE_KEYS.get(eii.encryption_key, eii.encryption_key.hex()),
            "type": eii.attestation_type, "code_hash": eii.code_hash.hex(), "code_signer": eii.code_signer.hex(),
            "product_id": eii.product_id, "revocation_level": eii.revocation_level,
            "report_data": eii.report_data.hex(), "simulation": data[start + 12 + 384],
            "timestamp": datetime.fromtimestamp(seconds + nanos / 1e9, timezone.utc).isoformat(),
            "length": len(data)}


def _text(body: bytes) -> str | bytes:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return body


# Fresh on every run: the events' `at`, the attestation's time, the state ids of relay's mail (and
# request ids, by default); the enclave's mail is compared as `read_payload` reads it.
CONCLAVE_NORMALISER = Normaliser(
    random_paths=("at", "attestation.timestamp", "mail.state_id", "mail.previous_state_id"),
    opener=read_payload)


# -- a fresh deployment with the recorded identity ------------------------------------------------------

def give_identity(data_dir: Path, config: ConclaveConfig) -> None:
    """Before the enclave starts: the data directory's host secret, and the enclave's sealed state
    holding its fixed secret, sealed under the key the enclave will derive."""
    write_private(data_dir / sealed_state.HOST_SECRET_FILE, HOST_SECRET)
    code_hash = apps.code_hash(apps.load(config.app))
    measured = sealed_state.measurement(code_hash, bytes.fromhex(config.code_signer), config.product_id, config.mode)
    state = EnclaveState(secret=ENCLAVE_SECRETS[config.enclave_name])
    sealed_state.save(sealed_state.default_path(data_dir, config.enclave_name), state,
                      sealed_state.sealing_key(HOST_SECRET, measured), config.mode)


@contextlib.asynccontextmanager
async def running_conclave(bus: TestBus, connect_as: Connect, *, identity: bool = True) -> AsyncIterator[None]:
    """The hello-world and relay enclaves and relay's mailboxes on `bus`, as the `conclave` role;
    with `identity`, each enclave starts with the recorded key (else a fresh random one)."""
    started: list[Component] = []
    try:
        for cls, config in ((Enclave, HELLO_CONFIG), (Enclave, RELAY_CONFIG), (Mailboxes, RELAY_CONFIG)):
            if cls is Enclave and identity:
                give_identity(bus.data_dir, config)
            component = cls(Context(await connect_as(MANIFEST.role), bus.data_dir, config, nats_url=bus.url))
            await component.start()
            started.append(component)
            if cls is Enclave and identity and component.state.secret != ENCLAVE_SECRETS[config.enclave_name]:
                raise AssertionError(f"enclave {config.enclave_name} did not take the recorded identity: it "
                                     "looked elsewhere, or under another measurement (sealed_state.measurement)")
        yield
    finally:
        for component in reversed(started):
            await component.stop()


# -- the scenario -------------------------------------------------------------------------------------

def _check(condition: bool, step: str, value: Any) -> None:
    if not condition:
        raise AssertionError(f"{step}: unexpected {value!r}")


def tampered(mail: bytes) -> bytes:
    """`mail` with the first ciphertext byte of its first packet flipped (§1-5: prologue, 97-byte
    handshake, then u16-length packets)."""
    (prologue_length,) = struct.unpack_from(">H", mail)
    position = 2 + prologue_length + 97 + 2
    return mail[:position] + bytes([mail[position] ^ 0x01]) + mail[position + 1:]


class WebHost:
    """The web host's three calls, as the HTTP adapter puts them on the bus."""

    def __init__(self, driver: Requester) -> None:
        self.driver = driver

    async def attestation(self, enclave: str) -> wire.Attestation:
        return wire.read_eii((await self.driver.request(subjects.attestation(enclave), None)).data)

    async def deliver(self, enclave: str, client: ConclaveClient, mail: bytes) -> bytes:
        return await self._octets(subjects.deliver(enclave), client, mail)

    async def poll(self, enclave: str, client: ConclaveClient) -> bytes:
        return await self._octets(subjects.poll(enclave), client, b"")

    async def _octets(self, subject: str, client: ConclaveClient, body: bytes) -> bytes:
        reply = await self.driver.request(subject, body, content_type=headers.OCTETS, encoded=True,
                                          extra_headers={messages.ROUTING_HINT: client.correlation_id})
        return reply.data


async def refused(pending: Awaitable[object], error: str, step: str) -> str | None:
    """The step must be refused with 400 and Conclave's `error`; returns the message a client reads."""
    try:
        result = await pending
    except errors.BusError as exc:
        if exc.status != 400 or exc.details.get("conclave") != error:
            raise AssertionError(f"{step}: expected 400 {error}, got {exc!r} with {dict(exc.details)}") from None
        return exc.details.get("message")
    raise AssertionError(f"{step}: expected 400 {error}, got a reply {result!r}")


def opened(reply: bytes, client: ConclaveClient, enclave: str) -> wire.ReadMail:
    """A reply as the client reads it: from the attested key (conclave-wire.md: the client requires it)."""
    mail = wire.read_mail(reply, client.private)
    _check(mail.sender == wire.x25519_public(ENCLAVE_SECRETS[enclave]), f"the sender of a mail from {enclave}",
           mail.sender.hex())
    return mail


async def attested(host: WebHost, enclave: str) -> None:
    eii = await host.attestation(enclave)
    _check(eii.encryption_key == wire.x25519_public(ENCLAVE_SECRETS[enclave]), f"{enclave}'s attested key",
           eii.encryption_key.hex())
    _check(eii.code_hash == apps.code_hash(apps.load(enclave)), f"{enclave}'s code hash", eii.code_hash.hex())


async def drive_hello_world(host: WebHost) -> None:
    """Attest; mail 0 answered reversed; mail 0 again (replayed: refused); mail 1 tampered (refused);
    mail 1 (accepted: the refusals moved nothing)."""
    await attested(host, HELLO)
    first = ALICE.mail(HELLO, GREETING, 0)
    answer = opened(await host.deliver(HELLO, ALICE, first), ALICE, HELLO)
    _check((answer.body, answer.topic, answer.sequence) == (GREETING[::-1].encode(), "default", 0), "the reply", answer)
    message = await refused(host.deliver(HELLO, ALICE, first), messages.ENCLAVE_EXCEPTION, "a replayed mail")
    _check("sequence number 0" in (message or "") and "already been seen" in (message or ""), "the replay's refusal",
           message)
    second = ALICE.mail(HELLO, "again", 1)
    await refused(host.deliver(HELLO, ALICE, tampered(second)), messages.MAIL_DECRYPTION, "a tampered mail")
    answer = opened(await host.deliver(HELLO, ALICE, second), ALICE, HELLO)
    _check((answer.body, answer.sequence) == (b"niaga", 1), "the reply after the refusals", answer)


async def drive_relay(host: WebHost) -> None:
    """Attest; alice and bob join the room; alice speaks, queued for bob; bob polls it, then nothing."""
    await attested(host, RELAY)
    for client, members in ((ALICE, 1), (BOB, 2)):
        joined = opened(await host.deliver(RELAY, client, client.mail(RELAY, "", 0, ROOM)), client, RELAY)
        _check(joined.body == b'{"members": %d}' % members, f"{client.name} joins", joined)
    spoke = opened(await host.deliver(RELAY, ALICE, ALICE.mail(RELAY, WORDS, 1, ROOM)), ALICE, RELAY)
    _check(spoke.body == b'{"members": 2}', "alice speaks", spoke)
    relayed = opened(await host.poll(RELAY, BOB), BOB, RELAY)
    alice = hashlib.sha256(ALICE.public).hexdigest()[:16]
    _check((relayed.topic, relayed.body) == (ROOM, b'{"from": "%s", "text": "%s"}' % (alice.encode(), WORDS.encode())),
           "bob's mail", relayed)
    _check(await host.poll(RELAY, BOB) == b"", "bob's second poll", None)


async def drive_conclave_scenario(driver: Requester) -> None:
    host = WebHost(driver)
    await drive_hello_world(host)
    await drive_relay(host)


async def record_conclave(bus: TestBus, connect_as: Connect) -> Recording:
    """Run fresh enclaves with the recorded identity on `bus` and record the scenario driven against them."""
    async with running_conclave(bus, connect_as):
        return await regenerate.record_driven(connect_as, SCENARIO, DRIVER_ROLE, drive_conclave_scenario)


def main(argv: list[str]) -> int:
    return regenerate.main(argv, RECORDING, MANIFEST, lambda bus, connect_as, tmp: record_conclave(bus, connect_as))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
