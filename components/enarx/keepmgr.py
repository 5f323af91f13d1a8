"""The Enarx keep manager: offers contracts, turns them into keeps, and keeps track of every keep.

State lives in two KV buckets. `enarx_contracts` holds one offer per runnable backend under
`offer.<Backend>`; redeeming it is a compare-and-set that replaces the offer with a fresh one, so a
contract can be redeemed once, even across replicas. `enarx_keeps` holds a record per keep. Each keep
runs as its own loader process (`python -m teebus.host enarx.keep`) with a NATS user limited to that keep's subjects; the
loader reports its progress on `enarx.keepmgr.internal.report.<kuuid>` and this component records
it. A watchdog marks keeps whose process died as Error; after a restart, live keeps are reattached.

Several hosts' keep managers may share one bus and both buckets. Each owns the keeps of its own host
(`EnarxConfig.host`, recorded in every keep): it alone watches, reattaches, counts, frees and signals
them. Listing and getting read the shared bucket, so any keep manager answers for every host; a
shutdown of another host's keep is handed to that host's keep manager (`subjects.delete_on`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import uuid
from pathlib import Path
from typing import Any

from bus import users
from bus.component import Component, Endpoint, Incoming, Outgoing
from bus.credentials import load as load_credentials
from bus.errors import BadRequest, BusError, Conflict, NoResponders, NotFound, Timeout, Unavailable
from bus.headers import CBOR
from bus.records import Record
from bus.server import port_is_free
from components.enarx import keep_access, keep_processes, messages, subjects
from components.enarx.config import EnarxConfig
from components.enarx.keep_record import REPORTABLE, KeepRecord, KeepState, now

CONTRACTS_BUCKET = "enarx_contracts"
KEEPS_BUCKET = "enarx_keeps"
KEEPMGR_SITE, WASMLDR_SITE = "enarx-keepmgr", "enarx-wasmldr"
MAX_PORT_SCAN = 1000


def _cbor(value: Any) -> Outgoing:
    return Outgoing(value, CBOR)


class KeepManager(Component):
    system = subjects.SYSTEM
    name = "keepmgr"
    description = "Enarx keep manager: contracts, keeps, keep loader processes"
    config: EnarxConfig

    async def setup(self) -> None:
        self.host = self.config.host   # the keeps this keep manager owns carry it
        self.contracts = await self.open_records(CONTRACTS_BUCKET, description="Enarx contract offers")
        self.keeps = await self.open_records(KEEPS_BUCKET, kind=KeepRecord, description="Enarx keeps", history=5)
        await self.keeps.mirror()  # the watchdog, listings and port choice read memory, not the bucket
        self._busy: set[str] = set()           # keeps being created or shut down here
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._spawning = asyncio.Lock()
        await self._offer_all()
        await self._check_keeps(reason="found dead after a keep manager restart")
        await self._forget_users_of_ended_keeps()
        self.every(self.config.watch_interval, self._watch, name="keep watchdog")

    async def teardown(self) -> None:
        if self._stops_keeps_on_exit:
            mine = [record for record in self._all_keeps() if record.value.is_local_live(self.host)]
            await asyncio.gather(*(self._shutdown(record.key) for record in mine), return_exceptions=True)
        await self.keeps.close()

    @property
    def _stops_keeps_on_exit(self) -> bool:
        """`teebus up` ends its keeps with itself; `teebus run` joined to a bus leaves them running."""
        configured = self.config.stop_keeps_on_exit
        return self.context.embedded if configured is None else configured

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("contracts", subjects.CONTRACTS, self.list_contracts),
                Endpoint("new_keep", subjects.NEW_KEEP, self.new_keep),
                Endpoint("new_keep_here", subjects.new_keep_on(self.host), self.new_keep),
                Endpoint("keeps", subjects.KEEPS, self.list_keeps),
                Endpoint("keep_get", subjects.KEEP_GET, self.get_keep),
                Endpoint("keep_delete", subjects.KEEP_DELETE, self.delete_keep),
                Endpoint("keep_delete_here", subjects.delete_on(self.host), self.delete_own_keep),
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
        return {"uuid": str(uuid.uuid4()), "backend": backend, "created": now(),
                "keepmgr": {"address": self.context.http_host, "port": self.context.ports[KEEPMGR_SITE]}}

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
        self._check_host(request.get("host"))
        if request.get("path_uuid") and messages.parse_uuid(request["path_uuid"], "path uuid") != contract["uuid"]:
            raise BadRequest(f"the URL names contract {request['path_uuid']} but the body names "
                             f"{contract['uuid']}; they must be the same")
        client = request.get("client") if isinstance(request.get("client"), str) else None
        self._check_room(client)
        await self._redeem(contract)
        return _cbor(messages.keep_cbor(await self._start_keep(contract, client)))

    def _check_host(self, wanted: Any) -> None:
        """A request that names a host is for that host's keep managers only: host names differing
        only in '.' and '_' share a subject (subjects.host_token), so the name is checked again here."""
        if wanted is not None and wanted != self.host:
            raise NotFound(f"no keep manager serves host {messages.parse_host(wanted, 'host')!r}; leave "
                           "out ?host= to let any keep manager take the keep")

    def _check_room(self, client: str | None) -> None:
        """Live keeps are bounded per host and per client address (a client cannot take them all)."""
        live = [r.value for r in self._all_keeps() if r.value.is_local_live(self.host)]
        if len(live) >= self.config.max_keeps:
            raise Unavailable(f"this host already runs {len(live)} keeps, its limit (max_keeps); "
                              "shut one down with DELETE /keep/<kuuid> first")
        theirs = sum(1 for keep in live if client is not None and keep.client == client)
        if theirs >= self.config.max_keeps_per_client:
            raise Unavailable(f"{client} already holds {theirs} live keeps, the limit per client "
                              "(max_keeps_per_client); shut one down with DELETE /keep/<kuuid> first")

    async def _start_keep(self, contract: dict[str, Any], client: str | None) -> KeepRecord:
        kuuid = contract["uuid"]
        self._busy.add(kuuid)
        try:
            async with self._spawning:
                port = self._free_port()
                await self.keeps.create(kuuid, KeepRecord(
                    kuuid=kuuid, backend=contract["backend"], host=self.host, wasmldr_port=port, client=client,
                    socket_path=str(keep_processes.socket_path(self.context.data_dir, kuuid))))
                await self.events.publish("keep", "created", {"kuuid": kuuid, "backend": contract["backend"]})
                try:
                    pid = await self._spawn(kuuid, contract["backend"], port)
                except BusError as exc:
                    await self._mark_error(kuuid, exc.message)
                    raise
            change = await self.keeps.mutate(kuuid, lambda keep: keep.changed(pid=pid))
            self.log.info("keep started", kuuid=kuuid, pid=pid, wasmldr_port=port)
            return change.after.value
        finally:
            self._busy.discard(kuuid)

    async def _spawn(self, kuuid: str, backend: str, port: int) -> int:
        user, password = await self._credentials(kuuid)
        process = await keep_processes.spawn(
            kuuid, data_dir=self.context.data_dir, nats_url=self.context.nats_url, user=user,
            password=password, host=self.context.http_host, port=port,
            evidence_timeout=self.config.evidence_timeout, handshake_timeout=self.config.handshake_timeout,
            limits=dataclasses.asdict(self.config.workload_limits),
            loader=self.config.keep_loaders.get(backend) if backend != "Nil" else None)
        self._processes[kuuid] = process
        self.spawn(self._reap(kuuid, process), name=f"reaper {kuuid}", wait=False)
        if not await self._answers(kuuid, self.config.loader_start_timeout, process):
            keep_processes.terminate(process.pid, kuuid, hard=True)
            log = keep_processes.log_path(self.context.data_dir, kuuid)
            if process.returncode is not None:
                raise Unavailable(f"the keep loader exited with code {process.returncode} while starting; "
                                  f"see {log}")
            raise Timeout(f"the keep loader did not answer within {self.config.loader_start_timeout:g}s; "
                          f"see {log}")
        return process.pid

    async def _reap(self, kuuid: str, process: asyncio.subprocess.Process) -> None:
        """Collect the loader's exit status (no zombie), forget the process, and the user of a keep
        that ended (one that reported Error and ended itself)."""
        try:
            await process.wait()
        finally:
            self._processes.pop(kuuid, None)
        record = self.keeps.mirrored_record(kuuid)
        if record is not None and record.value.state.ended:
            await self._forget_user(kuuid)

    async def _credentials(self, kuuid: str) -> tuple[str, str]:
        """A NATS user for this keep alone when the server is ours to configure, else the shared role."""
        if users.available(self.context.data_dir):
            password = secrets.token_urlsafe(32)
            await asyncio.to_thread(users.add, self.context.data_dir, users.User.with_password(
                keep_access.user_name(kuuid), password, keep_access.permissions(kuuid)))
            return keep_access.user_name(kuuid), password
        self.log.warning("no local nats-server to add a per-keep user to; the keep uses the shared "
                         f"{keep_access.SHARED_USER} role", kuuid=kuuid)
        return keep_access.SHARED_USER, load_credentials(self.context.data_dir)[keep_access.SHARED_USER]

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

    def _free_port(self) -> int:
        taken = {r.value.wasmldr_port for r in self._all_keeps() if r.value.is_local_live(self.host)}
        base = self.context.ports[WASMLDR_SITE]
        for port in range(base, min(base + MAX_PORT_SCAN, 65536)):
            if port not in taken and port_is_free(self.context.http_host, port):
                return port
        raise Unavailable(f"no free wasmldr port in {base}-{base + MAX_PORT_SCAN - 1}; "
                          "shut down keeps or move the range with --port enarx-wasmldr=PORT")

    async def list_keeps(self, incoming: Incoming) -> Outgoing:
        records = sorted(self._all_keeps(), key=lambda record: record.value.created)
        return _cbor([messages.keep_cbor(record.value) for record in records])

    async def get_keep(self, incoming: Incoming) -> Outgoing:
        return _cbor(messages.keep_cbor((await self._keep(incoming.payload)).value))

    async def delete_keep(self, incoming: Incoming) -> Outgoing:
        record = await self._keep(incoming.payload)
        if record.value.state != KeepState.SHUTDOWN and record.value.host != self.host:
            return await self._delete_elsewhere(record)
        return await self._delete(record)

    async def delete_own_keep(self, incoming: Incoming) -> Outgoing:
        """Another host's keep manager hands us the shutdown of one of our keeps (internal)."""
        return await self._delete(await self._keep(incoming.payload))

    async def _delete(self, record: Record[KeepRecord]) -> Outgoing:
        if record.value.state != KeepState.SHUTDOWN:
            record = await self._shutdown(record.key)
        return _cbor(messages.keep_cbor(record.value))

    async def _delete_elsewhere(self, record: Record[KeepRecord]) -> Outgoing:
        """Only the keep's own host can wait for its process and signal it, so its keep manager
        shuts it down. With none running there, the loader is asked to stop over the bus (it is
        reachable from any host) and the keep is recorded Shutdown here."""
        host = record.value.host
        try:
            reply = await self.requester.request(subjects.delete_on(host), {"kuuid": record.key}, content_type=CBOR,
                                                 timeout=self.config.shutdown_timeout + 10.0)
            return _cbor(reply.payload)
        except NoResponders:
            pass
        self.log.warning("no keep manager serves the keep's host; stopping its loader over the bus",
                         kuuid=record.key, keep_host=host)
        return await self._delete(record)

    async def _keep(self, payload: Any) -> Record[KeepRecord]:
        kuuid = messages.parse_uuid((payload or {}).get("kuuid") if isinstance(payload, dict) else None, "kuuid")
        record = await self.keeps.find(kuuid)
        if record is None:
            raise NotFound(f"no keep {kuuid} on this keep manager; GET /keeps lists them")
        return record

    async def _shutdown(self, kuuid: str) -> Record[KeepRecord]:
        """Stop the loader (politely, then by signal), drop its NATS user, record Shutdown."""
        self._busy.add(kuuid)
        try:
            keep = (await self.keeps.get(kuuid)).value
            try:
                await self.requester.request(subjects.control("shutdown", kuuid), {}, timeout=2.0)
            except BusError:
                pass  # already gone, or not answering: signals below
            if keep.host == self.host and not await keep_processes.wait_gone(
                    keep.pid, kuuid, self.config.shutdown_timeout):
                keep_processes.terminate(keep.pid, kuuid)
                if not await keep_processes.wait_gone(keep.pid, kuuid, 2.0):
                    keep_processes.terminate(keep.pid, kuuid, hard=True)
            await self._forget_user(kuuid)
            self._remove_socket(keep)
            change = await self.keeps.mutate(kuuid, lambda value: value.changed(
                state=KeepState.SHUTDOWN, wasmldr=None, pid=None))
            await self.events.publish("keep", "shutdown", {"kuuid": kuuid})
            self.log.info("keep shut down", kuuid=kuuid)
            return change.after
        finally:
            self._busy.discard(kuuid)

    # -- what keep loaders report ------------------------------------------------------------------

    async def report(self, incoming: Incoming) -> dict[str, Any]:
        kuuid = subjects.kuuid_of(incoming.subject)
        report = incoming.payload if isinstance(incoming.payload, dict) else {}
        try:
            state = KeepState(report.get("state"))
        except ValueError:
            state = None
        if state not in REPORTABLE:
            raise BadRequest(f"a keep loader may report the states {', '.join(REPORTABLE)}, "
                             f"not {report.get('state')!r}")
        fields = {name: report[name] for name in ("wasmldr", "certificate_as_pem", "human_readable_info", "error")
                  if name in report}

        def apply(keep: KeepRecord) -> KeepRecord:
            if keep.state.ended:
                return keep  # a late report never revives a keep that ended
            return keep.changed(state=state, **fields)

        change = await self.keeps.mutate(kuuid, apply)
        keep = change.after.value
        if keep.state != change.before.value.state:
            await self.events.publish("keep", state.lower(), {"kuuid": kuuid, **(
                {"wasmldr": keep.wasmldr} if state == KeepState.READY and keep.wasmldr else {})})
        # A loader that reports Error ends itself; its user goes when its process has gone (`_reap`),
        # not now: removing it would cut the loader's connection before this reply reaches it.
        return {"state": keep.state}

    # -- the watchdog ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        await self._check_keeps(reason="the keep loader process exited")
        await self._forget_old_keeps()

    async def _check_keeps(self, reason: str) -> None:
        for record in self._all_keeps():
            keep = record.value
            if (keep.is_local_live(self.host) and record.key not in self._busy and keep.pid
                    and not keep_processes.is_alive(keep.pid, record.key)):
                await self._mark_error(record.key, reason)

    async def _forget_users_of_ended_keeps(self) -> None:
        """After a restart: users of keeps that ended (and whose loaders are gone) while we were down."""
        for record in self._all_keeps():
            keep = record.value
            if keep.host == self.host and keep.state.ended and not keep_processes.is_alive(keep.pid, record.key):
                await self._forget_user(record.key)

    async def _forget_old_keeps(self) -> None:
        """Keep the newest `max_ended_keeps` ended keeps of this host; delete older records and their
        logs (a log lives on its keep's host: another host's keep manager could not delete it)."""
        ended = sorted((r for r in self._all_keeps() if r.value.host == self.host and r.value.state.ended),
                       key=lambda r: r.value.updated)
        for record in ended[:max(0, len(ended) - self.config.max_ended_keeps)]:
            try:
                await self.keeps.delete(record.key, record.revision)
            except BusError:
                continue  # changed or gone meanwhile: the next pass decides again
            keep_processes.log_path(self.context.data_dir, record.key).unlink(missing_ok=True)
            await self.events.publish("keep", "forgotten", {"kuuid": record.key})

    async def _mark_error(self, kuuid: str, reason: str) -> None:
        if (await self.keeps.get(kuuid)).value.state.ended:
            return  # it ended meanwhile (the watchdog reads a mirror that may be a moment behind)

        def apply(keep: KeepRecord) -> KeepRecord:
            if keep.state.ended:
                return keep
            return keep.changed(state=KeepState.ERROR, error=reason, wasmldr=None)

        change = await self.keeps.mutate(kuuid, apply)
        if change.after is change.before:
            return  # it ended meanwhile, through another path
        await self._forget_user(kuuid)
        self._remove_socket(change.after.value)
        await self.events.publish("keep", "error", {"kuuid": kuuid, "error": reason})
        self.log.warning("keep failed", kuuid=kuuid, error=reason)

    # -- helpers -----------------------------------------------------------------------------------

    def _all_keeps(self) -> list[Record[KeepRecord]]:
        return self.keeps.mirrored()

    async def _forget_user(self, kuuid: str) -> None:
        if users.available(self.context.data_dir):
            await asyncio.to_thread(users.remove, self.context.data_dir, keep_access.user_name(kuuid))

    def _remove_socket(self, keep: KeepRecord) -> None:
        """A dead loader cannot clean up after itself: remove its socket file for it."""
        if keep.host != self.host or not keep.socket_path:
            return
        path = Path(keep.socket_path)
        if path.is_socket():
            path.unlink(missing_ok=True)
