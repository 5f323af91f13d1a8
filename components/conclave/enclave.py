"""The enclave behind a Conclave web host: attestation, mail in, mail out, sealed state.

One enclave serves one application (apps/). Its key comes from one 32-byte secret (the Ed25519
seed and the X25519 private key, as Conclave's enclave makes them) that is sealed, with the
sequence watermarks, reply counters and persistent map, after every mail (sealed_state.py): after a
restart clients need not re-attest, and a mail accepted before it is still refused as a replay.

A delivery, in Conclave's order: the prologue is read on the host side (an unreadable one is
MAIL_DECRYPTION), the mail is opened with the enclave's key (or the KDS key its header names), the
sequence number is checked per (sender key, topic) before the application sees the mail, the
application runs, and of the mail it posted the first to the caller's routing hint is the
synchronous reply; the rest is stored in the mailboxes (mail_store.py) before the state is sealed,
so nothing accepted is lost. Mails are handled one at a time (the watermarks demand an order), in
memory; their sealing is grouped (sealer.py): each reply waits until a write holding its state is on
disk, and one write covers every mail handled while the one before it was under way.
Run one enclave component per enclave: the sealed state file is locked against a second.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any

from bus import headers
from bus.credentials import write_private
from bus.component import Component, Endpoint, Incoming, Outgoing
from bus.errors import TooLarge, Unavailable
from components.conclave import apps, mail_store, messages, sealed_state, subjects
from components.conclave import mail as mailfmt
from components.conclave.config import ConclaveConfig
from components.conclave.constraints import EnclaveConstraint
from components.conclave.eii import keys_from_secret, mock_instance_info
from components.conclave.enclave_env import EnclaveEnv
from components.conclave.sealed_state import EnclaveState, SealedStateError
from components.conclave.sealer import Sealer
from components.conclave.sequence import SequenceError, check_sequence

SEALING_KEY_NAME = "teebus-sealed-state"      # the KDS key name an enclave seals under (with --kds.url)
KDS_KEYS_KEPT = 64                             # KDS private keys an enclave keeps for mail to KDS keys


class Enclave(Component):
    system = subjects.SYSTEM
    name = "enclave"
    description = "Conclave enclave: attestation and mail"
    config: ConclaveConfig

    async def setup(self) -> None:
        config = self.config
        self.enclave_name = config.enclave_name
        self.app_class = apps.load(config.app)
        self.code_hash = apps.code_hash(self.app_class)
        self.code_signer = bytes.fromhex(config.code_signer)
        self.state_path = self._state_path()
        self._lock_file = _lock(self.state_path)
        measured = sealed_state.measurement(self.code_hash, self.code_signer, config.product_id, config.mode)
        self.sealing_key = sealed_state.sealing_key(await self._sealing_root(), measured)
        self.state = await asyncio.to_thread(self._load_state)
        self.files = await asyncio.to_thread(self._load_files)
        self.eii = mock_instance_info(self.state.secret, code_hash=self.code_hash, code_signer=self.code_signer,
                                      product_id=config.product_id, revocation_level=config.revocation_level,
                                      simulation=config.mode == "simulation")
        self.eii_bytes = self.eii.serialize()
        self.public_key = mailfmt.public_key(self.state.secret)
        self.env = EnclaveEnv(self.state.secret, self.app_class.persistent_map, config.max_posted_per_mail,
                              has_files=bool(config.filesystem_file))
        self.app = self.app_class(self.env)
        self.kds_keys: dict[bytes, bytes] = {}        # KDS key-derivation header -> private key
        self.turn = asyncio.Lock()
        self._broken = ""
        files_path = Path(config.filesystem_file) if config.filesystem_file else None
        self.sealer = Sealer(self.state_path, files_path, self._stop_taking_mail)
        await mail_store.ensure_stream(self.client, config, self.context.replicas)
        self.log.info("enclave ready", enclave=self.enclave_name, app=config.app, mode=config.mode,
                      code_hash=self.code_hash.hex(), sealed_state=str(self.state_path))

    async def teardown(self) -> None:
        self._lock_file.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("attestation", subjects.attestation(self.enclave_name), self.attestation, inline=True),
                Endpoint("deliver", subjects.deliver(self.enclave_name), self.deliver)]

    # -- the two calls ----------------------------------------------------------------------------

    async def attestation(self, incoming: Incoming) -> Outgoing:
        return Outgoing(self.eii_bytes, headers.OCTETS)

    async def deliver(self, incoming: Incoming) -> Outgoing:
        hint = messages.routing_hint(incoming.headers)
        data = incoming.payload
        if not isinstance(data, (bytes, bytearray)):
            raise messages.mail_decryption()
        if len(data) > self.config.max_mail_bytes:
            raise TooLarge(f"a mail is at most {self.config.max_mail_bytes} bytes; this one is {len(data)}")
        if self._broken:
            raise Unavailable(self._broken)
        async with self.turn:
            try:
                reply, version, event = await self._deliver(bytes(data), hint)
            except Refused as refused:                # the application raised: its watermark moved on
                reply, version, event = None, refused.version, refused.error
        await self.sealer.wait(version)               # sealed with the mails handled meanwhile
        if reply is None:
            raise event
        await self._announce("accepted", event)       # its acknowledgement awaited outside the turn too
        return Outgoing(reply, headers.OCTETS)

    async def _deliver(self, data: bytes, hint: str) -> tuple[bytes, int, dict[str, Any]]:
        received, kds_key = await self._open(data)
        state = self.state
        watermark_key = f"{received.sender.hex()}/{received.header.topic}"
        if kds_key is None:
            try:
                check_sequence(state.watermarks, watermark_key, received, self.config.max_senders)
            except SequenceError as refused:
                raise messages.enclave_exception(self._shown(str(refused))) from None
        self.env.begin(state.persistent_map, self.files, state.replies, state.state_id, received, kds_key)
        try:
            self.app.receive_mail(received, hint)
        except Exception as failed:            # the application's own error: nothing it did is kept
            self.env.finish()
            version = self._commit(watermark_key, received, kds_key, None)
            self.log.info("application refused a mail", topic=received.header.topic, error=type(failed).__name__)
            raise Refused(version, messages.enclave_exception(self._shown(str(failed) or type(failed).__name__)))
        work = self.env.finish()
        reply, queued = b"", []
        for posted in work.posted:
            if not reply and posted.routing_hint == hint:
                reply = posted.mail
            else:
                queued.append(posted)
        for posted in queued:                  # stored before the state moves on: nothing accepted is lost
            await mail_store.store(self.client, self.enclave_name, posted.routing_hint, posted.mail)
        version = self._commit(watermark_key, received, kds_key, work)
        return reply, version, {
            "enclave": self.enclave_name, "topic": received.header.topic,
            "sequence_number": received.header.sequence_number, "sender": received.sender.hex(),
            "replied": bool(reply), "queued": [subjects.hint_token(posted.routing_hint) for posted in queued]}

    async def _open(self, data: bytes) -> tuple[mailfmt.Mail, bytes | None]:
        """Read the prologue as the host does, then open the mail inside the enclave."""
        try:
            header = mailfmt.read_header(data)
            derivation = mailfmt.key_derivation_kind(header.key_derivation)
        except mailfmt.MailDecryptionError:
            raise messages.mail_decryption() from None
        kds_key = await self._kds_key(header.key_derivation) if _is_kds(derivation) else None
        try:
            opened = mailfmt.decrypt_mail(data, kds_key or self.state.secret, max_size=self.config.max_mail_bytes)
        except mailfmt.MailDecryptionError:
            raise messages.mail_decryption() from None
        if kds_key is not None:
            self._keep_kds_key(header.key_derivation, kds_key)     # only keys that opened a mail
        return opened, kds_key

    def _commit(self, watermark_key: str, received: mailfmt.Mail, kds_key: bytes | None, work: Any) -> int:
        """Advance the watermark and keep what the application changed; the version the reply waits
        for (sealer.py writes it, with whatever else was handled meanwhile)."""
        state = self.state
        new = EnclaveState(state.secret, dict(state.watermarks), state.replies, state.persistent_map, state.state_id)
        if kds_key is None:
            new.watermarks[watermark_key] = received.header.sequence_number
        files_changed = False
        if work is not None:
            new.replies, new.persistent_map, new.state_id = work.replies, work.persistent_map, work.state_id
            files_changed = work.files != self.files
        sealed = sealed_state.encode(new, self.sealing_key, self.config.mode)
        if len(sealed) > self.config.max_state_bytes:
            raise Unavailable(f"the enclave's sealed state would exceed {self.config.max_state_bytes} bytes; "
                              "the mail was not accepted (the application must keep less)")
        files = self._sealed_files(work.files) if files_changed else None
        version = self.sealer.changed(sealed, files)
        self.state = new
        if files_changed:
            self.files = work.files
        return version

    async def _stop_taking_mail(self, durable: int) -> None:
        """A write of the sealed state failed (sealer.py): refuse mail until a restart, which reads
        the last state that was sealed (memory may be ahead of it; nothing past it was answered)."""
        self._broken = ("the enclave could not seal its state and takes no mail until it is restarted "
                        "(check the disk of its sealed state file)")
        self.sealer.forget_pending()
        self.log.error("sealing the state failed; the enclave takes no more mail", durable_version=durable)

    async def _announce(self, what: str, data: dict[str, Any]) -> None:
        """Publish the event of a mail already accepted and sealed. Its loss is logged, never the
        caller's error: the client would resend, and be refused as a replay."""
        try:
            await self.events.publish("mail", what, data)
        except Exception as exc:
            self.log.warning("event not recorded", lost_event=f"mail.{what}", error=str(exc) or type(exc).__name__)

    # -- keys and state ---------------------------------------------------------------------------

    async def _sealing_root(self) -> bytes:
        if not self.config.kds_url:
            return sealed_state.host_secret(self.context.data_dir)
        from components.conclave.kds_client import fetch_private_key   # only with --kds.url
        secret = os.urandom(32)       # an attestation of this code for the KDS; its key is not kept
        probe = mock_instance_info(secret, code_hash=self.code_hash, code_signer=self.code_signer,
                                   product_id=self.config.product_id,
                                   revocation_level=self.config.revocation_level,
                                   simulation=self.config.mode == "simulation")
        try:
            return await fetch_private_key(self.config.kds_url, eii=probe.serialize(), encryption_private=secret,
                                           name=f"{SEALING_KEY_NAME}/{self.enclave_name}", master_key_type=0,
                                           policy_constraint=f"C:{self.code_hash.hex()} SEC:INSECURE",
                                           timeout=self.config.kds_timeout)
        except Exception as exc:
            raise Unavailable(f"the KDS at {self.config.kds_url} gave no sealing key ({exc}); check --kds.url "
                              "and that the KDS runs") from None

    async def _kds_key(self, key_derivation: bytes) -> bytes:
        """The private key of a KDS key spec a client encrypted to (the last KDS_KEYS_KEPT that opened
        a mail are kept).

        A spec this enclave cannot satisfy is the mail's fault (ENCLAVE_EXCEPTION), checked here
        before the KDS is asked; only a KDS that does not answer is a 503."""
        if key_derivation in self.kds_keys:
            self.kds_keys[key_derivation] = self.kds_keys.pop(key_derivation)      # most recently used
            return self.kds_keys[key_derivation]
        if not self.config.kds_url:
            raise messages.enclave_exception(self._shown(
                "this mail is encrypted to a KDS key, but this enclave has no KDS (--kds.url)"))
        from components.conclave.kds_client import KdsRefused, KdsUnavailable, fetch_private_key
        spec = mailfmt.key_derivation_kind(key_derivation)
        try:
            EnclaveConstraint.parse(spec.policy_constraint).check(self.eii)
        except ValueError as refused:
            raise messages.enclave_exception(self._shown(
                f"this enclave does not satisfy the mail's KDS key policy: {refused}")) from None
        try:
            key = await fetch_private_key(self.config.kds_url, eii=self.eii_bytes, encryption_private=self.state.secret,
                                          name=spec.name, master_key_type=spec.master_key_type,
                                          policy_constraint=spec.policy_constraint, timeout=self.config.kds_timeout)
        except KdsRefused as refused:
            raise messages.enclave_exception(self._shown(str(refused))) from None
        except KdsUnavailable as exc:
            raise Unavailable(f"the KDS did not answer ({exc}); send the mail again later") from None
        except Exception as exc:
            raise Unavailable(f"the KDS's answer was not usable ({exc})") from None
        return key

    def _keep_kds_key(self, key_derivation: bytes, key: bytes) -> None:
        self.kds_keys[key_derivation] = key
        while len(self.kds_keys) > KDS_KEYS_KEPT:
            del self.kds_keys[next(iter(self.kds_keys))]

    def _state_path(self) -> Path:
        if self.config.sealed_state_file:
            return Path(self.config.sealed_state_file)
        return sealed_state.default_path(self.context.data_dir, self.enclave_name)

    def _load_state(self) -> EnclaveState:
        existed = self.state_path.exists()
        try:
            state = sealed_state.load(self.state_path, self.sealing_key, self.config.mode)
        except SealedStateError as refused:
            raise Unavailable(str(refused)) from None
        if state is None and existed:
            self.log.warning("the sealed state was sealed for another measurement or host; it is kept aside "
                             "and this enclave starts with a new key", sealed_state=str(self.state_path))
        if state is None:
            state = EnclaveState(os.urandom(32))
            write_private(self.state_path, sealed_state.encode(state, self.sealing_key, self.config.mode))
            self.log.info("new enclave key", sealed_state=str(self.state_path))
        keys_from_secret(state.secret)     # a damaged secret fails here, not at the first mail
        return state

    def _load_files(self) -> dict[str, bytes]:
        if not self.config.filesystem_file:
            return {}
        path = Path(self.config.filesystem_file)
        if not path.exists():
            return {}
        try:
            return sealed_state.decode(path.read_bytes(), self.sealing_key, self.config.mode, str(path)).persistent_map
        except SealedStateError as refused:
            raise Unavailable(str(refused)) from None

    def _sealed_files(self, files: dict[str, bytes]) -> bytes:
        holder = EnclaveState(b"", persistent_map=files)
        return sealed_state.encode(holder, self.sealing_key, self.config.mode)

    def _shown(self, message: str) -> str | None:
        """What a client may read of an enclave error: nothing in release mode (Conclave's rule)."""
        return None if self.config.mode == "release" else message


class Refused(Exception):
    """The application raised: the refusal to send once `version` (its watermark) is sealed."""

    def __init__(self, version: int, error: Exception) -> None:
        super().__init__(str(error))
        self.version, self.error = version, error


def _is_kds(derivation: Any) -> bool:
    return isinstance(derivation, mailfmt.KdsKeySpec)


def _lock(path: Path) -> Any:
    """Hold an exclusive lock beside the sealed state: two enclaves on one state would fork it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Unavailable(f"another enclave is using {path}; run one enclave per sealed state file") from None
    return handle
