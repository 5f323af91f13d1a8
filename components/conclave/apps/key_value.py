"""A key-value store kept in the enclave's persistent map (sealed after every mail).

Each mail is one JSON command, and the reply is JSON:
`{"op": "put", "key": K, "value": V}` -> `{"ok": true, "previous": V|null}`;
`{"op": "get", "key": K}` -> `{"ok": true, "value": V|null}`;
`{"op": "delete", "key": K}` -> `{"ok": true, "deleted": bool}`; `{"op": "keys"}` -> `{"ok": true, "keys": [...]}`.
Keys and values are text; each client sees only its own keys (scoped by its authenticated key).
The store is the persistent map, or the encrypted file store when the host was given
`--filesystem.file` (Conclave's two ways of persisting enclave data; either is sealed after each mail).
"""

from __future__ import annotations

import json
from typing import Any

from components.conclave.apps.base import EnclaveApp, EnclaveException
from components.conclave.mail import Mail

MAX_KEY, MAX_VALUE, MAX_KEYS_PER_CLIENT = 256, 64 * 1024, 10_000


class KeyValueStore(EnclaveApp):
    persistent_map = True

    def receive_mail(self, mail: Mail, routing_hint: str | None) -> None:
        command = _command(mail.body)
        answer = self._apply(command, mail.sender.hex() + "/")
        self.enclave.reply(mail, json.dumps(answer, sort_keys=True).encode(), routing_hint)

    def _apply(self, command: dict[str, Any], scope: str) -> dict[str, Any]:
        store = self.enclave.files if self.enclave.has_files else self.enclave.persistent_map
        op, key = command.get("op"), command.get("key")
        if op == "keys":
            return {"ok": True, "keys": sorted(k[len(scope):] for k in store if k.startswith(scope))}
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
            raise EnclaveException(f"key must be text of 1 to {MAX_KEY} characters")
        if op == "get":
            value = store.get(scope + key)
            return {"ok": True, "value": value.decode() if value is not None else None}
        if op == "delete":
            return {"ok": True, "deleted": store.pop(scope + key, None) is not None}
        if op == "put":
            value = command.get("value")
            if not isinstance(value, str) or len(value) > MAX_VALUE:
                raise EnclaveException(f"value must be text of at most {MAX_VALUE} characters")
            if scope + key not in store and sum(k.startswith(scope) for k in store) >= MAX_KEYS_PER_CLIENT:
                raise EnclaveException(f"a client may keep at most {MAX_KEYS_PER_CLIENT} keys; delete some first")
            previous = store.get(scope + key)
            store[scope + key] = value.encode()
            return {"ok": True, "previous": previous.decode() if previous is not None else None}
        raise EnclaveException('op must be "put", "get", "delete" or "keys"')


def _command(body: bytes) -> dict[str, Any]:
    try:
        command = json.loads(body)
    except ValueError:
        raise EnclaveException('a mail must be one JSON command, e.g. {"op": "get", "key": "k"}') from None
    if not isinstance(command, dict):
        raise EnclaveException("a mail must be a JSON object")
    return command
