"""A Python client for the Enarx keep manager and wasmldr, speaking CBOR as the Rust client did.

    async with EnarxClient("http://127.0.0.1:3030") as enarx:
        contract = (await enarx.contracts())[0]
        keep = await enarx.new_keep(contract)
        evidence = await enarx.converse(keep["kuuid"], "request-evidence")
        assert await enarx.converse(keep["kuuid"], "launch") == "Success"
        ready = await enarx.keep(keep["kuuid"])
        result = await enarx.deploy(ready, wasm_bytes, args=["a"], env={"K": "v"}, stdin=b"...")

Errors raise `EnarxError` with the status and the LocalCborErr `details`. The wasmldr's certificate
is pinned: the client trusts exactly the certificate the keep presented in its evidence.
"""

from __future__ import annotations

import ssl
import uuid
from typing import Any
from urllib.parse import urlencode

import aiohttp
import cbor2

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=300)


class EnarxError(Exception):
    def __init__(self, status: int, details: str, body: Any = None) -> None:
        super().__init__(f"{status}: {details}")
        self.status = status
        self.details = details
        self.body = body


def kuuid_text(value: bytes | str) -> str:
    return str(uuid.UUID(bytes=value)) if isinstance(value, bytes) else str(uuid.UUID(value))


def pinned_context(certificate_pem: bytes) -> ssl.SSLContext:
    """Trust only this certificate (the keep's own, from its evidence)."""
    context = ssl.create_default_context(cadata=certificate_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class EnarxClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._pinned: dict[bytes, ssl.SSLContext] = {}   # one per keep certificate: connections are reused

    async def __aenter__(self) -> "EnarxClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def contracts(self) -> list[dict[str, Any]]:
        return await self._call("POST", "/contracts")

    async def new_keep(self, contract: dict[str, Any], in_path: bool = False,
                       host: str | None = None) -> dict[str, Any]:
        """Redeem `contract`; with `host`, on that host's keep manager (`?host=`), else on any."""
        path = f"/new_keep/{kuuid_text(contract['uuid'])}" if in_path else "/new_keep/"
        if host is not None:
            path += "?" + urlencode({"host": host})
        return await self._call("POST", path, cbor2.dumps(contract))

    async def converse(self, kuuid: bytes | str, item: Any) -> Any:
        """Send one CBOR item to the keep's loader through the keep manager; return its reply."""
        return await self._call("POST", f"/keep/{kuuid_text(kuuid)}", cbor2.dumps(item))

    async def keeps(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/keeps")

    async def keep(self, kuuid: bytes | str) -> dict[str, Any]:
        return await self._call("GET", f"/keep/{kuuid_text(kuuid)}")

    async def shutdown(self, kuuid: bytes | str) -> dict[str, Any]:
        return await self._call("DELETE", f"/keep/{kuuid_text(kuuid)}")

    async def deploy(self, keep: dict[str, Any], wasm: bytes, *, info: str = "", args: list[str] | None = None,
                     env: dict[str, str] | None = None, stdin: bytes | None = None) -> dict[str, Any]:
        """Send a Workload to a Ready keep's wasmldr over HTTPS, pinned to the keep's certificate."""
        workload: dict[str, Any] = {"wasm_binary": wasm, "human_readable_info": info}
        if args is not None:
            workload["args"] = args
        if env is not None:
            workload["env"] = env
        if stdin is not None:
            workload["stdin"] = stdin
        return await self.send_workload(keep, cbor2.dumps(workload))

    async def send_workload(self, keep: dict[str, Any], body: bytes) -> dict[str, Any]:
        wasmldr = keep.get("wasmldr")
        if not wasmldr or not keep.get("certificate_as_pem"):
            raise EnarxError(409, f"keep {kuuid_text(keep['kuuid'])} is {keep['state']}: launch it first")
        url = f"https://{wasmldr['wasmldr_ipaddr']}:{wasmldr['wasmldr_port']}/workload"
        certificate = keep["certificate_as_pem"]
        if certificate not in self._pinned:
            self._pinned[certificate] = pinned_context(certificate)
        async with self._session.post(url, data=body, ssl=self._pinned[certificate]) as response:
            return self._decode(response.status, await response.read())

    async def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        async with self._session.request(method, self.base_url + path, data=body) as response:
            return self._decode(response.status, await response.read())

    @staticmethod
    def _decode(status: int, raw: bytes) -> Any:
        try:
            body = cbor2.loads(raw) if raw else None
        except cbor2.CBORDecodeError:
            raise EnarxError(status, f"the reply is not CBOR: {raw[:200]!r}") from None
        if status >= 400:
            details = body.get("details") if isinstance(body, dict) else str(body)
            raise EnarxError(status, details or "no details", body)
        return body
