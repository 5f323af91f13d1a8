"""Fixtures and helpers for the Conclave tests: an enclave with its mailboxes and a web host in front
(`conclave` factory), and a client that speaks the published format (tests/conclave_wire.py)."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.http.conclave import HOST_SITE, KDS_SITE, host_routes, kds_site, render_error
from adapters.http.runner import HttpServer, Site
from bus.requester import Requester
from bus.server import free_port
from components.conclave.config import ConclaveConfig
from components.conclave.enclave import Enclave
from components.conclave.kds import Kds
from components.conclave.mailbox import Mailboxes
from tests import conclave_wire as wire

NO_CACHE = "no-store,no-cache,must-revalidate"


@dataclass
class Host:
    """One enclave with its mailboxes and a web host in front; `restart` keeps the sealed state."""

    start_component: Any
    connect_as: Any
    data_dir: Path
    config: ConclaveConfig
    url: str = ""
    port: int = field(default_factory=free_port)      # kept across restarts, as a real host's
    parts: list = field(default_factory=list)
    servers: list = field(default_factory=list)

    async def start(self) -> "Host":
        self.parts = [await self.start_component(Enclave, config=self.config),
                      await self.start_component(Mailboxes, config=self.config)]
        self.url = await self.add_site(self.port)
        return self

    async def add_site(self, port: int | None = None) -> str:
        """Another web host replica in front of the same enclave."""
        site = Site(HOST_SITE, port or free_port(), "adapter", host_routes(self.config), render_error,
                    body_limit=self.config.max_mail_bytes)
        server = HttpServer("127.0.0.1", self.data_dir)
        await server.start([site], {"adapter": Requester(await self.connect_as("adapter"))})
        self.servers.append(server)
        return server.bound[HOST_SITE]

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        self.servers.clear()
        for part in self.parts:
            await part.stop()
        self.parts.clear()

    async def restart(self, **changes: Any) -> "Host":
        await self.stop()
        if changes:
            self.config = ConclaveConfig(**{**self.config.__dict__, **changes})
        return await self.start()


@pytest.fixture
async def conclave(start_component, connect_as, data_dir, tmp_path):
    hosts: list[Host] = []

    async def factory(app: str = "hello-world", **options: Any) -> Host:
        config = ConclaveConfig(app=app, enclave=f"t{uuid.uuid4().hex[:12]}",
                                sealed_state_file=str(tmp_path / f"{len(hosts)}.sealed"), **options)
        host = await Host(start_component, connect_as, data_dir, config).start()
        hosts.append(host)
        return host

    yield factory
    for host in hosts:
        await host.stop()


@dataclass
class Client:
    """A Conclave client from the published format: its key, its numbers per topic, its routing hint."""

    url: str
    session: aiohttp.ClientSession
    private: bytes = field(default_factory=lambda: os.urandom(32))
    numbers: dict[str, int] = field(default_factory=dict)
    enclave_key: bytes = b""

    @property
    def correlation_id(self) -> str:
        return hashlib.sha256(self.private).hexdigest().upper()    # as Conclave's web client forms it

    async def attest(self) -> wire.Attestation:
        async with self.session.get(self.url + "/attestation") as response:
            assert response.status == 200 and response.headers["Cache-Control"] == NO_CACHE
            assert response.content_type == "application/octet-stream"
            eii = wire.read_eii(await response.read())
        self.enclave_key = eii.encryption_key
        return eii

    def mail(self, body: bytes, topic: str = "default", sequence: int | None = None) -> bytes:
        if sequence is None:
            sequence = self.numbers.get(topic, 0)
            self.numbers[topic] = sequence + 1
        return wire.write_mail(body, sender_private=self.private, recipient_public=self.enclave_key,
                               sequence=sequence, topic=topic, ephemeral_private=os.urandom(32))

    async def post(self, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes, Any]:
        sent = {"Correlation-ID": self.correlation_id, "Content-Type": "application/octet-stream", **headers}
        async with self.session.post(self.url + path, data=body, headers=sent) as response:
            assert response.headers.get("Cache-Control") == NO_CACHE, path
            return response.status, await response.read(), response

    async def deliver(self, mail: bytes) -> tuple[int, bytes]:
        status, body, _ = await self.post("/deliver-mail", mail)
        return status, body

    async def send(self, text: bytes, topic: str = "default") -> wire.ReadMail | None:
        status, body = await self.deliver(self.mail(text, topic))
        assert status == 200, body
        return self.open(body)

    async def poll(self, **headers: str) -> wire.ReadMail | None:
        status, body, _ = await self.post("/poll-mail", **headers)
        assert status == 200, body
        return self.open(body)

    def open(self, body: bytes) -> wire.ReadMail | None:
        if not body:
            return None
        mail = wire.read_mail(body, self.private)
        assert mail.sender == self.enclave_key        # replies come from the attested key
        return mail


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as http:
        yield http


async def client_of(host: Host, session: aiohttp.ClientSession, url: str | None = None) -> Client:
    client = Client(url or host.url, session)
    await client.attest()
    return client


@pytest.fixture
async def kds(start_component) -> Kds:
    return await start_component(Kds)


@pytest.fixture
async def kds_url(kds, connect_as, data_dir):
    """A KDS site as adapters/http/conclave.py serves it, in front of `kds`: its URL."""
    server = HttpServer("127.0.0.1", data_dir)
    await server.start([kds_site(free_port())], {"adapter": Requester(await connect_as("adapter"))})
    try:
        yield server.bound[KDS_SITE]
    finally:
        await server.stop()
