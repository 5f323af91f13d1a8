"""A small group chat: each member's message is re-sent to every other member of its room.

The topic is the room. A member joins by sending any mail on it (an empty body joins without
speaking); the enclave remembers the member's key and routing hint, answers the sender with
`{"members": N}`, and sends each other member `{"from": <sender fingerprint>, "text": ...}`, which
waits in their mailboxes for `/poll-mail`. Members are kept in the persistent map, so rooms survive
restarts.
"""

from __future__ import annotations

import hashlib
import json

from components.conclave.apps.base import EnclaveApp, EnclaveException
from components.conclave.mail import Mail

MAX_MEMBERS, MAX_TEXT = 64, 16 * 1024


class Relay(EnclaveApp):
    persistent_map = True

    def receive_mail(self, mail: Mail, routing_hint: str | None) -> None:
        if routing_hint is None:
            raise EnclaveException("the relay needs a routing hint to reach members later")
        if len(mail.body) > MAX_TEXT:
            raise EnclaveException(f"a message is at most {MAX_TEXT} bytes")
        room = mail.header.topic
        members = self._members(room)
        members[mail.sender.hex()] = routing_hint
        if len(members) > MAX_MEMBERS:
            raise EnclaveException(f"room {room} is full ({MAX_MEMBERS} members)")
        self.enclave.persistent_map[f"room/{room}"] = json.dumps(members, sort_keys=True).encode()
        self.enclave.reply(mail, json.dumps({"members": len(members)}).encode(), routing_hint)
        if not mail.body:
            return
        message = json.dumps({"from": fingerprint(mail.sender), "text": mail.body.decode("utf-8", "replace")})
        for member, hint in members.items():
            if member != mail.sender.hex():
                office = self.enclave.post_office_to(bytes.fromhex(member), room)
                self.enclave.post_mail(office.encrypt(message.encode()), hint)

    def _members(self, room: str) -> dict[str, str]:
        stored = self.enclave.persistent_map.get(f"room/{room}")
        return json.loads(stored) if stored else {}


def fingerprint(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]
