"""A system defined only here plugs in through its manifest: no shared file knows it.

`echo` has one component with one KV bucket, one HTTP site and a typed configuration. It runs on a
bus of its own through the same launcher path as `teebus run`; the CLI builds its options and its
`[echo]` section from the manifest alone.
"""

from __future__ import annotations

import asyncio
import io
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import aiohttp
import orjson
import pytest
from aiohttp import web

from adapters.http import routes
from adapters.http.runner import Site, SiteContext
from adapters.unix.server import Socket
from bus import log
from bus.component import Component, Endpoint, Incoming
from bus.config import option
from bus.errors import BadRequest
from bus.manifest import AdapterSpec, ComponentSpec, Manifest
from bus.requester import Requester
from bus.server import free_port
from bus.testing import running_bus
from teebus import cli
from teebus.catalog import Catalog
from teebus.testing import node

SAY, NOTE = "echo.store.say", "echo.store.note"


@pytest.fixture(autouse=True)
def logging_restored():
    """`cli.main` configures logging onto the (captured) stderr of its test: undo that after it."""
    yield
    log.configure("warning", json=True, stream=sys.__stderr__)


@dataclass(frozen=True)
class EchoConfig:
    greeting: str = field(default="hello", metadata=option("--echo-greeting", "what the echo says first"))
    max_words: int = 8
    passphrase: str = field(default="not-to-be-printed", metadata=option(secret=True))

    def __post_init__(self) -> None:
        if self.max_words < 1:
            raise ValueError(f"max_words must be at least 1, not {self.max_words}")


class EchoComponent(Component):
    system = "echo"
    name = "store"
    config: EchoConfig

    async def setup(self) -> None:
        self.notes = await self.open_records("echo_notes")

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("say", SAY, self.say), Endpoint("note", NOTE, self.note)]

    async def say(self, incoming: Incoming) -> dict[str, Any]:
        words = str((incoming.payload or {}).get("words", "")).split()
        if len(words) > self.config.max_words:
            raise BadRequest(f"at most {self.config.max_words} words", details={"words": len(words)})
        record = await self.notes.create(f"n{len(await self.notes.keys())}", {"words": words})
        return {"said": " ".join([self.config.greeting, *words]), "note": record.key}

    async def note(self, incoming: Incoming) -> dict[str, Any]:
        return (await self.notes.get(incoming.payload["name"])).value


def render_error(status: int, message: str, details: Mapping[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message, **details}), status=status,
                        content_type="application/json")


def echo_routes(context: SiteContext) -> list[routes.Route]:
    async def note(request: web.BaseRequest) -> web.Response:
        reply = await context.requester.request(NOTE, {"name": routes.path_param(request, "name")})
        return web.Response(body=reply.data, content_type="application/json")

    return [routes.forward("POST", "/say", lambda _: SAY, content_type="application/json"),
            routes.get("/notes/{name}", note)]


def echo_sites(ports: Mapping[str, int], config: Any = None) -> list[Site]:
    return [Site("echo-http", ports["echo-http"], "adapter", echo_routes, render_error)]


def echo_sockets(data_dir: Path, config: Any = None) -> list[Socket]:
    """A line protocol on a Unix socket: each line is said, each answer is a line."""

    def serve(requester: Requester):
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                reply = await requester.request(SAY, {"words": line.decode().strip()})
                writer.write(reply.payload["said"].encode() + b"\n")
                await writer.drain()
            writer.close()

        return connection

    return [Socket("echo-lines", data_dir / "echo" / "lines.sock", "adapter", serve)]


ECHO = Manifest(
    name="echo", summary="Echo (a test system)", config=EchoConfig,
    components=(ComponentSpec("store", f"{__name__}:EchoComponent"),),
    adapters=(AdapterSpec("http", f"{__name__}:echo_sites"), AdapterSpec("unix", f"{__name__}:echo_sockets")),
    ports={"echo-http": 7999}, buckets=("echo_notes",))
CATALOG = Catalog((ECHO,))


async def test_a_system_defined_in_a_test_runs_through_the_launcher(tmp_path):
    async with running_bus(tmp_path / "data", [ECHO]) as bus:
        async with node(bus, ["echo.store", "http.echo"], CATALOG, document={"echo": {"greeting": "hi"}}) as echo:
            url = echo.http.bound["echo-http"]
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/say/", data=b'{"words": "there you"}') as response:
                    said = await response.json()
                assert said == {"said": "hi there you", "note": "n0"}
                async with http.get(f"{url}/notes/n0") as response:
                    assert await response.json() == {"words": ["there", "you"]}
                async with http.post(f"{url}/say", data=orjson.dumps({"words": "a " * 9})) as response:
                    assert response.status == 400
                    assert await response.json() == {"error": "at most 8 words", "words": 9}  # details travel
            assert [c.service_name for c in echo.components] == ["echo-store"]
        async with node(bus, ["echo.store", "unix.echo"], CATALOG) as echo:
            reader, writer = await asyncio.open_unix_connection(echo.sockets["echo-lines"].path)
            writer.write(b"over a socket\n")
            assert await reader.readline() == b"hello over a socket\n"
            writer.close()
            assert "echo-lines (unix)" in echo.listening()


def test_its_options_and_section_come_from_its_manifest(tmp_path):
    help_text = io.StringIO()
    with redirect_stdout(help_text), pytest.raises(SystemExit):
        cli.main(["up", "--help"], catalog=CATALOG)
    assert "--echo-greeting" in help_text.getvalue() and "Echo (a test system)" in help_text.getvalue()
    config_file = tmp_path / "teebus.toml"
    config_file.write_text('[echo]\ngreeting = "from the file"\nmax_words = 3\n[ports]\necho-http = 7100\n')
    shown = io.StringIO()
    with redirect_stdout(shown):
        assert cli.main(["config", "--config", str(config_file), "--echo-greeting", "from the flag"],
                        catalog=CATALOG) == 0
    assert 'greeting = "from the flag"' in shown.getvalue()      # the command line wins over the file
    assert "max_words = 3" in shown.getvalue() and "echo-http = 7100" in shown.getvalue()
    assert "not-to-be-printed" not in shown.getvalue() and 'passphrase = "<secret>"' in shown.getvalue()


@pytest.mark.parametrize("text,complaint", [
    ("[echo]\ngreting = 1\n", "[echo] has no option 'greting'"),
    ("[echo]\nmax_words = 0\n", "[echo] max_words must be at least 1"),
    ("[echo]\nmax_words = \"many\"\n", "[echo] max_words must be a whole number"),
    ("[ekho]\n", "unknown section [ekho]"),
    ("[ports]\necho-web = 80\n", "[ports] names no site 'echo-web'"),
    ("[teebus]\nreplicas = 9\n", "replicas must be 1 to 5"),
])
def test_a_bad_configuration_names_the_section_and_the_option(tmp_path, capsys, text, complaint):
    config_file = tmp_path / "teebus.toml"
    config_file.write_text(text)
    assert cli.main(["config", "--config", str(config_file)], catalog=CATALOG) == 1
    assert complaint in capsys.readouterr().err


async def test_its_component_reaches_only_its_own_subjects_and_bucket(tmp_path):
    async with running_bus(tmp_path / "data", [ECHO]) as bus:
        async with bus.scope() as scope:
            violations: list[str] = []

            async def on_error(exc: Exception) -> None:
                violations.append(str(exc).lower())

            client = await scope.connect("echo", error_cb=on_error)
            await client.publish("mesatee.kms.internal.get", b"{}")
            await client.publish("events.enarx.keep.created", b"{}")
            await client.publish("$KV.mesatee_kms_keys.x", b"{}")
            await client.publish("echo.store.say", b"{}")          # its own: allowed
            await client.flush()
            await _until(lambda: len(violations) >= 3)
            assert all("permissions violation" in v for v in violations)
            assert {"mesatee.kms.internal.get", "events.enarx.keep.created", "$kv.mesatee_kms_keys.x"} == \
                {v.split('"')[1] for v in violations}


async def _until(check, timeout: float = 5.0) -> None:
    from tests.conftest import eventually

    await eventually(check, timeout)


def test_site_names_and_system_names_are_checked():
    with pytest.raises(ValueError, match="must be named 'echo-<what>'"):
        Manifest("echo", "x", ports={"web": free_port()})
    with pytest.raises(ValueError, match="lower-case"):
        Manifest("Echo", "x")
    with pytest.raises(TypeError, match="must be a dataclass"):
        Manifest("echo", "x", config=dict)
    with pytest.raises(ValueError, match="adapter kind 'grpc'"):
        AdapterSpec("grpc", "x:y")


def test_a_nested_table_is_named_by_its_dotted_path(tmp_path, capsys):
    from teebus.launcher import default_catalog

    config_file = tmp_path / "teebus.toml"
    config_file.write_text("[enarx.workload_limits]\nfuel = -1\n")
    assert cli.main(["config", "--config", str(config_file)], catalog=default_catalog()) == 1
    assert "[enarx.workload_limits] fuel must be a positive integer" in capsys.readouterr().err


def test_the_layers_keep_their_imports():
    """Components speak only over subjects: none imports an adapter; bus/ imports neither."""
    import ast

    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for folder, forbidden in (("components", ("adapters",)), ("bus", ("adapters", "components", "teebus"))):
        for path in (repo / folder).rglob("*.py"):
            for statement in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in statement.names] if isinstance(statement, ast.Import) else \
                    [statement.module or ""] if isinstance(statement, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(repo)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert offenders == []


def test_the_host_of_a_system_process_names_it_by_manifest(capsys):
    from teebus import host

    assert host.main(["nosuch.keep"]) == 2 and "unknown system 'nosuch'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="declares no host 'nope'"):
        host.main(["enarx.nope"])


def test_the_kernel_names_no_system():
    """bus/ serves every system and names none, not even in a comment: each declares itself."""
    from teebus.systems import installed

    repo = Path(__file__).resolve().parent.parent
    names = [manifest.name for manifest in installed()]
    offenders = [f"{path.relative_to(repo)}:{number}: {name}"
                 for path in (repo / "bus").rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 for name in names if name in line.lower()]
    assert offenders == []
