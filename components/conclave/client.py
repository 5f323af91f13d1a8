"""A Python client for a Conclave web host: what Conclave's EnclaveClient and WebEnclaveTransport do.

    async with ConclaveClient("http://127.0.0.1:8080", "C:<code hash> SEC:INSECURE") as client:
        reply = await client.send(b"hello")        # the enclave's synchronous reply, decrypted
        later = await client.poll()                # mail queued for this client, or None

It fetches the enclave's attestation and checks it against the constraint before any mail leaves;
encrypts with one post office per topic (sequence numbers 0, 1, 2...); sends `Correlation-ID` as
Conclave's client forms it (upper-case hex SHA-256 of the client's raw private key); accepts only
replies whose authenticated sender is the attested key. On MAIL_DECRYPTION it re-attests: an
unchanged key means the mail itself was bad (an error), a new one is checked against the constraint
and the mail is re-encrypted and sent again, at most 10 times. `state()` / `ConclaveClient.restore`
keep the key and the sequence numbers across runs (a restarted client must not reuse numbers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from components.conclave import mail as mailfmt
from components.conclave.constraints import EnclaveConstraint
from components.conclave.eii import EnclaveInstanceInfo

MAX_RETRIES = 10                 # re-attestations after MAIL_DECRYPTION (Conclave's EnclaveClient)
MAX_REPLY = 64 * 1024 * 1024
POLL_WAIT_HEADER = "Teebus-Poll-Wait"
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)


class ConclaveError(Exception):
    """A refusal or failure with a message a person can act on; `error` is Conclave's error name
    (MAIL_DECRYPTION, ENCLAVE_EXCEPTION) when the host gave one, `status` the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0, error: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error = status, error


@dataclass
class Received:
    """One mail from the enclave, opened and checked."""

    body: bytes
    topic: str
    sequence_number: int
    envelope: bytes | None


def correlation_id(private_key: bytes) -> str:
    return hashlib.sha256(private_key).hexdigest().upper()


class ConclaveClient:
    def __init__(self, url: str, constraint: str | EnclaveConstraint, *, private_key: bytes | None = None,
                 next_sequence: dict[str, int] | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self.constraint = EnclaveConstraint.parse(constraint) if isinstance(constraint, str) else constraint
        self.private_key = private_key or mailfmt.new_private_key()
        self.correlation_id = correlation_id(self.private_key)
        self.eii: EnclaveInstanceInfo | None = None
        self._offices: dict[str, mailfmt.PostOffice] = {}
        self._restored = dict(next_sequence or {})
        self._session, self._own_session = session, session is None

    async def __aenter__(self) -> "ConclaveClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    # -- attestation ------------------------------------------------------------------------------

    async def attest(self) -> EnclaveInstanceInfo:
        """Fetch the enclave's attestation and check it; a new key resets the post offices."""
        status, body = await self._call("GET", "/attestation")
        if status != 200:
            raise ConclaveError(f"GET /attestation answered {status}: {body[:200]!r}", status)
        try:
            eii = EnclaveInstanceInfo.deserialize(body)
        except ValueError as exc:
            raise ConclaveError(f"the host's attestation is not an EnclaveInstanceInfo: {exc}") from None
        try:
            self.constraint.check(eii)
        except ValueError as exc:
            raise ConclaveError(f"the enclave does not satisfy the constraint: {exc}") from None
        if self.eii is not None and eii.encryption_key != self.eii.encryption_key:
            self._offices.clear()
            self._restored.clear()
        self.eii = eii
        return eii

    # -- mail -------------------------------------------------------------------------------------

    async def send(self, body: bytes, topic: str = "default", envelope: bytes | None = None) -> Received | None:
        """Deliver one mail; the enclave's synchronous reply, or None when it gave none."""
        if self.eii is None:
            await self.attest()
        for _ in range(MAX_RETRIES + 1):
            mail = self._office(topic).encrypt(body, envelope=envelope)
            status, answer = await self._call("POST", "/deliver-mail", mail)
            if status == 200:
                return self._open(answer)
            error = _conclave_error(status, answer)
            if error.error != "MAIL_DECRYPTION":
                raise error
            known = self.eii.encryption_key
            await self.attest()
            if self.eii.encryption_key == known:
                raise ConclaveError("the enclave could not decrypt the mail and its key has not changed",
                                    status, "MAIL_DECRYPTION")
        raise ConclaveError(f"the enclave changed its key {MAX_RETRIES} times while this mail was sent", 400,
                            "MAIL_DECRYPTION")

    async def poll(self, wait: float | None = None) -> Received | None:
        """The next mail queued for this client, or None; `wait` seconds for one to arrive (teebus)."""
        if self.eii is None:
            await self.attest()
        extra = {POLL_WAIT_HEADER: repr(wait)} if wait else {}
        status, answer = await self._call("POST", "/poll-mail", b"", extra)
        if status != 200:
            raise _conclave_error(status, answer)
        return self._open(answer)

    # -- state ------------------------------------------------------------------------------------

    def state(self) -> bytes:
        """The key and next sequence number per topic, to restore this client later (a secret)."""
        numbers = {**self._restored, **{t: o.next_sequence_number for t, o in self._offices.items()}}
        return orjson.dumps({"private_key": self.private_key.hex(), "next_sequence": numbers,
                             "enclave_key": self.eii.encryption_key.hex() if self.eii else None})

    @classmethod
    def restore(cls, url: str, constraint: str | EnclaveConstraint, saved: bytes, **options: Any) -> "ConclaveClient":
        value = orjson.loads(saved)
        return cls(url, constraint, private_key=bytes.fromhex(value["private_key"]),
                   next_sequence=value["next_sequence"], **options)

    # -- inside -----------------------------------------------------------------------------------

    def _office(self, topic: str) -> mailfmt.PostOffice:
        office = self._offices.get(topic)
        if office is None:
            office = mailfmt.PostOffice(self.private_key, self.eii.encryption_key, topic, key_derivation=b"\x00")
            start = self._restored.pop(topic, 0)
            if start:
                office.next_sequence_number = start
            self._offices[topic] = office
        return office

    def _open(self, answer: bytes) -> Received | None:
        if not answer:
            return None
        try:
            mail = mailfmt.PostOffice(self.private_key, self.eii.encryption_key, "default").decrypt(answer)
        except (mailfmt.MailDecryptionError, ValueError) as exc:
            raise ConclaveError(f"a reply did not come from the attested enclave: {exc}") from None
        return Received(mail.body, mail.header.topic, mail.header.sequence_number, mail.header.envelope)

    async def _call(self, method: str, path: str, body: bytes | None = None,
                    extra: dict[str, str] | None = None) -> tuple[int, bytes]:
        assert self._session is not None, "use `async with ConclaveClient(...)`"
        hdrs = {"Correlation-ID": self.correlation_id, **(extra or {})}
        if body is not None:
            hdrs["Content-Type"] = "application/octet-stream"
        try:
            async with self._session.request(method, self.url + path, data=body, headers=hdrs) as response:
                data = await response.content.read(MAX_REPLY + 1)
                if len(data) > MAX_REPLY:
                    raise ConclaveError(f"{path} answered more than {MAX_REPLY} bytes")
                return response.status, data
        except aiohttp.ClientError as exc:
            raise ConclaveError(f"the Conclave host at {self.url} did not answer ({exc}); is it running?") from None


def _conclave_error(status: int, answer: bytes) -> ConclaveError:
    """How Conclave's web client reads an error: 400 with `error` names it, anything else is I/O."""
    try:
        body = orjson.loads(answer)
    except orjson.JSONDecodeError:
        body = {}
    if status == 400 and body.get("error") in ("MAIL_DECRYPTION", "ENCLAVE_EXCEPTION"):
        message = body.get("message") or ("the enclave could not decrypt the mail" if body["error"] ==
                                          "MAIL_DECRYPTION" else "the enclave refused the mail (no details in "
                                          "release mode)")
        return ConclaveError(message, status, body["error"])
    return ConclaveError(f"the host answered {status}: {body.get('message') or answer[:200]!r}", status)
