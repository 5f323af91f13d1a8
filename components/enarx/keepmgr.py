"""The Enarx keep manager: offers contracts, turns them into keeps, and keeps track of every keep.

State lives in two KV buckets. `enarx_contracts` holds one offer per runnable backend under
`offer.<Backend>`; redeeming it is a compare-and-set that replaces the offer with a fresh one, so a
contract can be redeemed once, even across replicas. `enarx_keeps` holds a record per keep. Each keep
runs as its own loader process (`teebus.keep`) with a NATS user limited to that keep's subjects; the
loader reports its progress on `enarx.keepmgr.internal.report.<kuuid>` and this component records
it. A watchdog marks keeps whose process died as Error; after a restart, live keeps are reattached.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bus import users
from bus.component import Component, Endpoint, Incoming, Outgoing
from bus.credentials import load as load_credentials
from bus.errors import BadRequest, BusError, Conflict, NotFound, Timeout, Unavailable
from bus.headers import CBOR
from bus.records import Records
from bus.server import port_is_free
from components.enarx import keep_access, keep_processes, messages, subjects
from components.enarx.config import EnarxConfig

CONTRACTS_BUCKET = "enarx_contracts"
KEEPS_BUCKET = "enarx_keeps"
LIVE_STATES = ("Indeterminate", "Ready", "Running")
REPORTABLE = ("Ready", "Running", "Error")
MAX_PORT_SCAN = 1000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _cbor(value: Any) -> Outgoing:
    return Outgoing(value, CBOR)


class KeepManager(Component):
    system = subjects.SYSTEM
    name = "keepmgr"
    description = "Enarx keep manager: contracts, keeps, keep loader processes"

    async def setup(self) -> None:
        self.config = EnarxConfig.from_options(self.context.options)
        self.host = socket.gethostname()
        self.contracts = await Records.open(self.client, CONTRACTS_BUCKET, description="Enarx contract offers")
        self.keeps = await Records.open(self.client, KEEPS_BUCKET, description="Enarx keeps", history=5)
        await self.keeps.mirror()  # the watchdog, listings and port choice read memory, not the bucket
        self._busy: set[str] = set()           # keeps being created or shut down here
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._spawning = asyncio.Lock()
        await self._offer_all()
        await self._check_keeps(reason="found dead after a keep manager restart")
        self._watchdog = asyncio.create_task(self._watch())

    async def teardown(self) -> None:
        self._watchdog.cancel()
        if self.config.stop_keeps_on_exit:
            mine = [record for record in await self._all_keeps() if self._is_local_live(record.value)]
            await asyncio.gather(*(self._shutdown(record.key) for record in mine), return_exceptions=True)
        await self.keeps.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("contracts", subjects.CONTRACTS, self.list_contracts),
                Endpoint("new_keep", subjects.NEW_KEEP, self.new_keep),
                Endpoint("keeps", subjects.KEEPS, self.list_keeps),
                Endpoint("keep_get", subjects.KEEP_GET, self.get_keep),
                Endpoint("keep_delete", subjects.KEEP_DELETE, self.delete_keep),
                Endpoint("report", subjects.REPORTS, self.report)]

    # -- contracts ---------------------------------------------------------------------------------

    async def list_contracts(self, incoming: Incoming) -> Outgoing:
        offers = await self._offer_all()
        return _cbor([messages.contract_cbor(offer) for offer in offers])

    async def _offer_all(self) -> list[dict[str, Any]]:
        """The current offer of every runnable backend, creating the missing ones."""
        offers = []
        for backend in self.config.backends.runnable():
            record = await self.contracts.find(f"offer.{backend}")
            if record is None:
                try:
                    record = await self.contracts.create(f"offer.{backend}", self._fresh_offer(backend))
                    await self.events.publish("contract", "offered", {"uuid": record.value["uuid"],
                                                                      "backend": backend})
                except Conflict:  # another replica offered it first
                    record = await self.contracts.get(f"offer.{backend}")
            offers.append(record.value)
        return offers

    def _fresh_offer(self, backend: str) -> dict[str, Any]:
        return {"uuid": str(uuid.uuid4()), "backend": backend, "created": _now(),
                "keepmgr": {"address": self.config.address, "port": self.config.port}}

    async def _redeem(self, contract: dict[str, Any]) -> None:
        """Consume the offer `contract` names and put a fresh one in its place (compare-and-set)."""
        backend = contract["backend"]
        record = await self.contracts.find(f"offer.{backend}")
        if record is None or record.value["uuid"] != contract["uuid"]:
            if await self.keeps.find(contract["uuid"]) is not None:
                raise Conflict(f"contract {contract['uuid']} was already redeemed; "
                               "POST /contracts for a fresh one")
            raise NotFound(f"no {backend} contract {contract['uuid']} is on offer here; "
                           "POST /contracts lists the current ones")
        if backend not in self.config.backends.runnable():
            raise Unavailable(f"{self.config.backends.why_not(backend)}; this keep cannot start here")
        fresh = self._fresh_offer(backend)
        try:
            await self.contracts.update(f"offer.{backend}", fresh, record.revision)
        except Conflict:
            raise Conflict(f"contract {contract['uuid']} was redeemed concurrently; "
                           "POST /contracts for a fresh one") from None
        await self.events.publish("contract", "redeemed", {"uuid": contract["uuid"], "backend": backend})
        await self.events.publish("contract", "offered", {"uuid": fresh["uuid"], "backend": backend})

    # -- keeps -------------------------------------------------------------------------------------

    async def new_keep(self, incoming: Incoming) -> Outgoing:
        request = incoming.payload if isinstance(incoming.payload, dict) else {}
        contract = messages.parse_contract(request.get("contract"))
        if request.get("path_uuid") and messages.parse_uuid(request["path_uuid"], "path uuid") != contract["uuid"]:
            raise BadRequest(f"the URL names contract {request['path_uuid']} but the body names "
                             f"{contract['uuid']}; they must be the same")
        if contract["backend"] not in self.config.backends.runnable():
            raise Unavailable(f"{self.config.backends.why_not(contract['backend'])}; this keep cannot start here")
        live = [r for r in await self._all_keeps() if self._is_local_live(r.value)]
        if len(live) >= self.config.max_keeps:
            raise Unavailable(f"this host already runs {len(live)} keeps, its limit; "
                              "shut one down with DELETE /keep/<kuuid> first")
        await self._redeem(contract)
        return _cbor(messages.keep_cbor(await self._start_keep(contract)))

    async def _start_keep(self, contract: dict[str, Any]) -> dict[str, Any]:
        kuuid = contract["uuid"]
        self._busy.add(kuuid)
        try:
            async with self._spawning:
                port = await self._free_port()
                record = await self.keeps.create(kuuid, {
                    "kuuid": kuuid, "backend": contract["backend"], "state": "Indeterminate",
                    "wasmldr": None, "human_readable_info": None, "certificate_as_pem": None,
                    "socket_path": str(keep_processes.socket_path(self.context.data_dir, kuuid)),
                    "host": self.host, "wasmldr_port": port, "pid": None, "error": None,
                    "created": _now(), "updated": _now()})
                await self.events.publish("keep", "created", {"kuuid": kuuid, "backend": contract["backend"]})
                try:
                    pid = await self._spawn(kuuid, contract["backend"], port)
                except BusError as exc:
                    await self._mark_error(kuuid, exc.message)
                    raise
            record = await self.keeps.mutate(kuuid, lambda value: {**value, "pid": pid, "updated": _now()})
            self.log.info("keep started", kuuid=kuuid, pid=pid, wasmldr_port=port)
            return record.value
        finally:
            self._busy.discard(kuuid)

    async def _spawn(self, kuuid: str, backend: str, port: int) -> int:
        user, password = await self._credentials(kuuid)
        process = await keep_processes.spawn(
            kuuid, data_dir=self.context.data_dir, nats_url=self.config.nats_url, user=user,
            password=password, host=self.config.wasmldr_host, port=port,
            handshake_timeout=self.config.handshake_timeout, limits=self.config.workload_limits,
            loader=self.config.backends.loaders.get(backend) if backend != "Nil" else None)
        self._processes[kuuid] = process
        reaper = asyncio.create_task(process.wait())
        reaper.add_done_callback(lambda _: self._processes.pop(kuuid, None))
        if not await self._answers(kuuid, self.config.loader_start_timeout, process):
            keep_processes.terminate(process.pid, kuuid, hard=True)
            log = keep_processes.log_path(self.context.data_dir, kuuid)
            if process.returncode is not None:
                raise Unavailable(f"the keep loader exited with code {process.returncode} while starting; "
                                  f"see {log}")
            raise Timeout(f"the keep loader did not answer within {self.config.loader_start_timeout:g}s; "
                          f"see {log}")
        return process.pid

    async def _credentials(self, kuuid: str) -> tuple[str, str]:
        """A NATS user for this keep alone when the server is ours to configure, else the shared role."""
        if users.available(self.context.data_dir):
            password = secrets.token_urlsafe(32)
            await asyncio.to_thread(users.add, self.context.data_dir, users.User.with_password(
                keep_access.user_name(kuuid), password, keep_access.permissions(kuuid)))
            return keep_access.user_name(kuuid), password
        self.log.warning("no local nats-server to add a per-keep user to; the keep uses the shared "
                         "keepldr role", kuuid=kuuid)
        return "keepldr", load_credentials(self.context.data_dir)["keepldr"]

    async def _answers(self, kuuid: str, timeout: float, process: asyncio.subprocess.Process | None = None) -> bool:
        """Ping the keep loader until it answers, it exits, or `timeout` passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if process is not None and process.returncode is not None:
                return False
            try:
                await self.requester.request(subjects.control("ping", kuuid), {}, timeout=0.5)
                return True
            except (Unavailable, Timeout):
                await asyncio.sleep(0.05)
        return False

    async def _free_port(self) -> int:
        taken = {r.value.get("wasmldr_port") for r in await self._all_keeps() if self._is_local_live(r.value)}
        base = self.config.wasmldr_base_port
        for port in range(base, min(base + MAX_PORT_SCAN, 65536)):
            if port not in taken and port_is_free(self.config.wasmldr_host, port):
                return port
        raise Unavailable(f"no free wasmldr port in {base}-{base + MAX_PORT_SCAN - 1}; "
                          "shut down keeps or move the range with --port enarx-wasmldr=PORT")

    async def list_keeps(self, incoming: Incoming) -> Outgoing:
        records = await self._all_keeps()
        records.sort(key=lambda record: record.value.get("created", ""))
        return _cbor([messages.keep_cbor(record.value) for record in records])

    async def get_keep(self, incoming: Incoming) -> Outgoing:
        return _cbor(messages.keep_cbor((await self._keep(incoming.payload)).value))

    async def delete_keep(self, incoming: Incoming) -> Outgoing:
        record = await self._keep(incoming.payload)
        if record.value["state"] != "Shutdown":
            record = await self._shutdown(record.key)
        return _cbor(messages.keep_cbor(record.value))

    async def _keep(self, payload: Any):
        kuuid = messages.parse_uuid((payload or {}).get("kuuid") if isinstance(payload, dict) else None, "kuuid")
        record = await self.keeps.find(kuuid)
        if record is None:
            raise NotFound(f"no keep {kuuid} on this keep manager; GET /keeps lists them")
        return record

    async def _shutdown(self, kuuid: str):
        """Stop the loader (politely, then by signal), drop its NATS user, record Shutdown."""
        self._busy.add(kuuid)
        try:
            record = await self.keeps.get(kuuid)
            pid = record.value.get("pid")
            try:
                await self.requester.request(subjects.control("shutdown", kuuid), {}, timeout=2.0)
            except BusError:
                pass  # already gone, or not answering: signals below
            if record.value.get("host") == self.host and not await keep_processes.wait_gone(
                    pid, kuuid, self.config.shutdown_timeout):
                keep_processes.terminate(pid, kuuid)
                if not await keep_processes.wait_gone(pid, kuuid, 2.0):
                    keep_processes.terminate(pid, kuuid, hard=True)
            await self._forget_user(kuuid)
            self._remove_socket(record.value)
            record = await self.keeps.mutate(kuuid, lambda value: {
                **value, "state": "Shutdown", "wasmldr": None, "pid": None, "updated": _now()})
            await self.events.publish("keep", "shutdown", {"kuuid": kuuid})
            self.log.info("keep shut down", kuuid=kuuid)
            return record
        finally:
            self._busy.discard(kuuid)

    # -- what keep loaders report ------------------------------------------------------------------

    async def report(self, incoming: Incoming) -> dict[str, Any]:
        kuuid = subjects.kuuid_of(incoming.subject)
        change = incoming.payload if isinstance(incoming.payload, dict) else {}
        state = change.get("state")
        if state not in REPORTABLE:
            raise BadRequest(f"a keep loader may report the states {', '.join(REPORTABLE)}, not {state!r}")
        fields = {"state": state, "updated": _now()}
        for name in ("wasmldr", "certificate_as_pem", "human_readable_info", "error"):
            if name in change:
                fields[name] = change[name]
        before: dict[str, str] = {}

        def apply(value: dict[str, Any]) -> dict[str, Any]:
            before["state"] = value["state"]
            if value["state"] in ("Shutdown", "Error"):
                return value  # a late report never revives a keep that ended
            return {**value, **fields}

        record = await self.keeps.mutate(kuuid, apply)
        if record.value["state"] != before["state"]:
            await self.events.publish("keep", state.lower(), {"kuuid": kuuid, **(
                {"wasmldr": record.value["wasmldr"]} if state == "Ready" and record.value["wasmldr"] else {})})
        if state == "Error":
            await self._forget_user(kuuid)
        return {"state": record.value["state"]}

    # -- the watchdog ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval)
            try:
                await self._check_keeps(reason="the keep loader process exited")
                await self._forget_old_keeps()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("keep watchdog pass failed")

    async def _check_keeps(self, reason: str) -> None:
        for record in await self._all_keeps():
            value = record.value
            if (self._is_local_live(value) and record.key not in self._busy and value.get("pid")
                    and not keep_processes.is_alive(value["pid"], record.key)):
                await self._mark_error(record.key, reason)

    async def _forget_old_keeps(self) -> None:
        """Keep the newest `max_ended_keeps` ended keeps; delete older records and their logs."""
        ended = [r for r in await self._all_keeps() if r.value.get("state") in ("Shutdown", "Error")]
        ended.sort(key=lambda record: record.value.get("updated", ""))
        for record in ended[:max(0, len(ended) - self.config.max_ended_keeps)]:
            try:
                await self.keeps.delete(record.key, record.revision)
            except BusError:
                continue  # changed or gone meanwhile: the next pass decides again
            if record.value.get("host") == self.host:
                keep_processes.log_path(self.context.data_dir, record.key).unlink(missing_ok=True)
            await self.events.publish("keep", "forgotten", {"kuuid": record.key})

    async def _mark_error(self, kuuid: str, reason: str) -> None:
        if (await self.keeps.get(kuuid)).value["state"] in ("Shutdown", "Error"):
            return  # it ended meanwhile (the watchdog reads a mirror that may be a moment behind)

        def apply(value: dict[str, Any]) -> dict[str, Any]:
            if value["state"] in ("Shutdown", "Error"):
                return value
            return {**value, "state": "Error", "error": reason, "wasmldr": None, "updated": _now()}

        record = await self.keeps.mutate(kuuid, apply)
        if record.value.get("error") != reason:
            return
        await self._forget_user(kuuid)
        self._remove_socket(record.value)
        await self.events.publish("keep", "error", {"kuuid": kuuid, "error": reason})
        self.log.warning("keep failed", kuuid=kuuid, error=reason)

    # -- helpers -----------------------------------------------------------------------------------

    async def _all_keeps(self):
        return self.keeps.mirrored()

    def _is_local_live(self, value: dict[str, Any]) -> bool:
        return value.get("host") == self.host and value.get("state") in LIVE_STATES

    async def _forget_user(self, kuuid: str) -> None:
        if users.available(self.context.data_dir):
            await asyncio.to_thread(users.remove, self.context.data_dir, keep_access.user_name(kuuid))

    def _remove_socket(self, value: dict[str, Any]) -> None:
        """A dead loader cannot clean up after itself: remove its socket file for it."""
        if value.get("host") != self.host or not value.get("socket_path"):
            return
        path = Path(value["socket_path"])
        if path.is_socket():
            path.unlink(missing_ok=True)
