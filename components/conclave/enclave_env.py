"""The enclave's services as an application sees them while it handles one mail.

A mail is a transaction: the application works on copies of the persistent map, the file store
and the reply counters, and posts into a list; the enclave commits them only when the application
returned (enclave.py), so a mail that raises changes nothing and posts nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from components.conclave import mail as mailfmt
from components.conclave.mail import Mail


@dataclass
class Posted:
    routing_hint: str
    mail: bytes


@dataclass
class Work:
    """What one mail's handling changed, committed together or not at all."""

    persistent_map: dict[str, bytes]
    files: dict[str, bytes]
    replies: dict[str, int]
    state_id: bytes | None
    previous_state_id: bytes | None
    posted: list[Posted] = field(default_factory=list)


class ReplyOffice:
    """Mail from the enclave to one client key on one topic, numbered 0, 1, 2... (Conclave's
    SessionEnclavePostOffice); the private header only when the persistent map is on."""

    def __init__(self, env: "EnclaveEnv", recipient: bytes, topic: str, sender_private: bytes,
                 fixed_sequence: int | None = None) -> None:
        mailfmt.check_topic(topic)
        self._env, self._recipient, self._topic = env, recipient, topic
        self._sender_private, self._fixed = sender_private, fixed_sequence

    def encrypt(self, body: bytes) -> bytes:
        env = self._env
        return mailfmt.encrypt_mail(body, recipient_public=self._recipient, sender_private=self._sender_private,
                                    topic=self._topic, sequence_number=self._next_sequence(),
                                    private_header=env.private_header(), min_size=env.min_size(len(body)))

    def _next_sequence(self) -> int:
        if self._fixed is not None:
            return self._fixed
        replies = self._env.work.replies
        key = f"{self._recipient.hex()}/{self._topic}"
        number = replies.get(key, 0)
        replies[key] = number + 1
        return number


class EnclaveEnv:
    """`self.enclave` of an application (apps/base.py: EnclaveServices)."""

    def __init__(self, secret: bytes, with_private_header: bool, max_posted: int, has_files: bool = False) -> None:
        self.has_files = has_files                  # --filesystem.file was given: `files` is kept
        self._secret = secret
        self._with_private_header = with_private_header
        self._max_posted = max_posted
        self._policy = mailfmt.moving_average()     # one policy for every post office, as Conclave's enclave
        self._mail_keys: dict[int, bytes] = {}      # id(mail) -> the private key that opened it (KDS mail)
        self.work: Work | None = None

    # -- the transaction --------------------------------------------------------------------------

    def begin(self, persistent_map: dict[str, bytes], files: dict[str, bytes], replies: dict[str, int],
              state_id: bytes | None, mail: Mail, opened_with: bytes | None) -> None:
        new_id = os.urandom(16) if self._with_private_header else state_id
        self.work = Work(dict(persistent_map), dict(files), dict(replies), new_id, state_id)
        self._mail_keys = {id(mail): opened_with} if opened_with is not None else {}

    def finish(self) -> Work:
        work, self.work, self._mail_keys = self.work, None, {}
        return work

    # -- what applications call -------------------------------------------------------------------

    @property
    def persistent_map(self) -> dict[str, bytes]:
        return self._current().persistent_map

    @property
    def files(self) -> dict[str, bytes]:
        return self._current().files

    def post_office(self, mail: Mail) -> ReplyOffice:
        """Replies to `mail`'s authenticated sender on its topic (KDS mail: from the KDS key, number 0)."""
        kds_key = self._mail_keys.get(id(mail))
        if kds_key is not None:
            return ReplyOffice(self, mail.sender, mail.header.topic, kds_key, fixed_sequence=0)
        return ReplyOffice(self, mail.sender, mail.header.topic, self._secret)

    def post_office_to(self, public_key: bytes, topic: str) -> ReplyOffice:
        if len(public_key) != 32:
            raise ValueError("a destination public key is 32 bytes (X25519)")
        return ReplyOffice(self, public_key, topic, self._secret)

    def post_mail(self, encrypted: bytes, routing_hint: str) -> None:
        if routing_hint is None:
            raise ValueError("Null routing hint not supported by this host")
        work = self._current()
        if len(work.posted) >= self._max_posted:
            raise ValueError(f"an enclave may post at most {self._max_posted} mails while handling one")
        work.posted.append(Posted(routing_hint, bytes(encrypted)))

    def reply(self, mail: Mail, body: bytes, routing_hint: str) -> None:
        self.post_mail(self.post_office(mail).encrypt(body), routing_hint)

    # -- for the post offices ---------------------------------------------------------------------

    def private_header(self) -> bytes | None:
        """Conclave's header for rollback detection: version 1, this state's id, the previous one."""
        if not self._with_private_header:
            return None
        work = self._current()
        previous = work.previous_state_id
        return (bytes([1]) + work.state_id + (b"\x01" if previous is None else b"\x00" + previous))

    def min_size(self, body_size: int) -> int:
        return self._policy.min_size(body_size)

    def _current(self) -> Work:
        if self.work is None:
            raise RuntimeError("the enclave's services are there only while a mail is handled")
        return self.work


