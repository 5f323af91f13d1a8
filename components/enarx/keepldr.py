"""The keep loader of one Nil keep: the opaque handshake, then the wasmldr; one process per keep.

The conversation on `enarx.keep.<kuuid>` (raw CBOR items, DESIGN.md):
  "request-evidence" -> {"evidence": {"backend": "Nil", "measurement", "certificate_as_pem"}}
  "launch"           -> "Success" (CommsComplete), once the wasmldr listens and the keep manager
                        has recorded its address and certificate (state Ready).
Any other item gets a LocalCborErr. Each step has a deadline (the handshake timeout): if
"request-evidence" does not come within it of the keep's start, or "launch" within it of the
evidence, the keep reports Error and ends, so a client that never converses cannot hold a keep. Whoever runs this component (components/enarx/keep_host.py)
supplies how to start the wasmldr listener and how to end the process: `Context.config` is a
`KeepConfig`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import cbor2

from bus import codec
from bus.component import Component, Endpoint, Incoming, Outgoing
from bus.errors import BadRequest, BusError, Conflict
from bus.headers import OCTETS
from components.enarx import evidence, messages, subjects
from components.enarx.reporter import Reporter
from components.enarx.wasm_limits import Limits

REQUEST_EVIDENCE = "request-evidence"
LAUNCH = "launch"


@dataclass
class KeepHooks:
    """What the hosting process provides: the keep's identity, and its wasmldr and exit."""

    kuuid: str
    host: str
    port: int
    evidence_timeout: float                     # keep started -> "request-evidence"
    handshake_timeout: float                    # evidence -> "launch"
    reporter: Reporter
    start_wasmldr: Callable[[evidence.KeepIdentity], Awaitable[None]]
    end: Callable[[str], None]                  # called with a reason; the process then stops


@dataclass(frozen=True)
class KeepConfig:
    """The configuration of the components in one keep's process (KeepLoader, Wasmldr)."""

    hooks: KeepHooks
    limits: Limits = field(default_factory=Limits)
    module_cache: Path | None = None           # compiled modules on disk, shared by the host's keeps


def _raw(value: Any) -> Outgoing:
    return Outgoing(cbor2.dumps(value), OCTETS)


class KeepLoader(Component):
    system = subjects.SYSTEM
    name = "keepldr"
    description = "Enarx keep loader (Nil): evidence, launch, control"

    async def setup(self) -> None:
        self.hooks: KeepHooks = self.config.hooks
        self.identity = evidence.new_identity(self.hooks.kuuid, self.hooks.host)
        self.launched = False
        self.evidence_sent = False
        self._launching = asyncio.Lock()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._arm_handshake_timer(self.hooks.evidence_timeout,
                                  f"no {REQUEST_EVIDENCE!r} within {self.hooks.evidence_timeout:g}s of the keep's start")

    async def teardown(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()

    def endpoints(self) -> list[Endpoint]:
        kuuid = self.hooks.kuuid
        return [Endpoint("conversation", subjects.keep(kuuid), self.converse),
                Endpoint("ping", subjects.control("ping", kuuid), self.ping),
                Endpoint("shutdown", subjects.control("shutdown", kuuid), self.shutdown)]

    async def converse(self, incoming: Incoming) -> Outgoing:
        item = self._decode(incoming.payload)
        if item == REQUEST_EVIDENCE:
            if not self.evidence_sent and not self.launched:
                self.evidence_sent = True
                self._arm_handshake_timer(self.hooks.handshake_timeout,
                                          f"no {LAUNCH!r} within {self.hooks.handshake_timeout:g}s of the evidence")
            return _raw(evidence.evidence(self.identity))
        if item == LAUNCH:
            return _raw(await self._launch())
        raise BadRequest(f"this Nil keep understands {REQUEST_EVIDENCE!r} and then {LAUNCH!r}; "
                         f"got {messages._show(item)}")

    async def ping(self, incoming: Incoming) -> dict[str, Any]:
        return {"kuuid": self.hooks.kuuid, "launched": self.launched}

    async def shutdown(self, incoming: Incoming) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.hooks.end, "shutdown requested by the keep manager")
        return {"kuuid": self.hooks.kuuid, "stopping": True}

    @staticmethod
    def _decode(payload: bytes) -> Any:
        """Exactly one CBOR item, decoded strictly (bus/codec.py: no tags but a UUID, no trailing bytes)."""
        try:
            return codec.loads_cbor(payload)
        except BadRequest as exc:
            raise BadRequest(f"the keep takes one CBOR item per message; this one does not decode: "
                             f"{exc.message}") from None

    async def _launch(self) -> str:
        async with self._launching:
            if self.launched:
                raise Conflict(f"keep {self.hooks.kuuid} is already launched; send the workload to its "
                               f"wasmldr at https://{self.hooks.host}:{self.hooks.port}/workload")
            if not self.evidence_sent:
                raise BadRequest(f"send {REQUEST_EVIDENCE!r} first: the client must see the evidence "
                                 "before it launches the keep")
            self._handshake_timer.cancel()
            await self.hooks.start_wasmldr(self.identity)
            await self.report({"state": "Ready",
                               "wasmldr": {"wasmldr_ipaddr": self.hooks.host, "wasmldr_port": self.hooks.port},
                               "certificate_as_pem": self.identity.certificate_pem.decode()})
            self.launched = True
            self.log.info("keep launched", kuuid=self.hooks.kuuid, port=self.hooks.port)
            return messages.SUCCESS

    def _arm_handshake_timer(self, seconds: float, what: str) -> None:
        """(Re)start the deadline of the handshake's next step; `what` says what did not come."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._handshake_timer = asyncio.get_running_loop().call_later(
            seconds, lambda: self.spawn(self._handshake_expired(what), name="handshake expired"))

    async def _handshake_expired(self, what: str) -> None:
        reason = f"{what}; the keep ended (create a new one)"
        try:
            await self.report({"state": "Error", "error": reason})
        except BusError as exc:
            self.log.warning("could not report the handshake timeout", error=exc.message)
        self.hooks.end(reason)

    async def report(self, change: dict[str, Any]) -> None:
        """Tell the keep manager; it owns the keep record."""
        await self.hooks.reporter.send(change)
