"""The Enarx scenario: a Nil keep from contract to workload result to shutdown, on the bus.

Regenerate tests/recordings/enarx_scenario.jsonl (needs no running NATS: it embeds its own server):

    python -m tests.replay.record_enarx [OUTPUT]

The driver speaks as the `adapter` role, as the `enarx-keepmgr` HTTP site does, and sends what that
site sends: the keep manager's subjects with CBOR bodies in serde form (the keep id as text in
`keep.get`/`keep.delete`, as the site takes it from the URL), and `POST /keep/<kuuid>` as the
opaque conversation on `enarx.keep.<kuuid>` (one CBOR item, typed application/octet-stream). The
workload goes to `enarx.wasmldr.workload.<kuuid>`, the subject the keep's HTTPS wasmldr site
forwards `POST /workload` to, with the body that site passes on. (Deployed, that request comes from
the keep's own connection, behind HTTPS pinned to the keep's certificate; here the driver sends it,
so the replay resends it and compares its reply like any other.)

The replies come to `_INBOX.adapter.` and the recording names that prefix: a replay resends only the
driver's requests and compares what the components ask of each other (the keep manager pinging the
keep loader it started and asking it to shut down; the loader reporting Ready, Running and Ready),
all carrying the driver's request ids. The keep manager pings a starting loader until it answers;
its unanswered pings depend on timing and are not compared (`polled_subjects`).

A fresh deployment: a keep manager on the data directory of the nats-server it shares with its keeps
(so each keep gets a NATS user of its own, as under `teebus up`), stopping its keeps when it stops.
The scenario checks every outcome while recording (the evidence's measurement is this code's, the
Ready keep carries the evidence's certificate, the workload's output is the echo module's), so a
broken keep manager or keep cannot be recorded as "expected".
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import cbor2
from nats.aio.client import Client

from bus import codec
from bus.component import Context
from bus.headers import CBOR, OCTETS
from bus.requester import Requester
from bus.roles import ADAPTER, inbox_prefix
from bus.server import free_port
from bus.testing import TestBus
from components.enarx import evidence, subjects
from components.enarx.config import EnarxConfig
from components.enarx.keepmgr import KEEPMGR_SITE, WASMLDR_SITE, KeepManager
from components.enarx.system import MANIFEST
from tests.replay.normalise import Normaliser
from tests.replay import regenerate
from tests.replay.recording import Recording
from tests.wasm_modules import wat

RECORDING = Path(__file__).resolve().parent.parent / "recordings" / "enarx_scenario.jsonl"
SCENARIO = "enarx"
DRIVER_ROLE = ADAPTER
DRIVER_INBOX = f"{inbox_prefix(DRIVER_ROLE)}."
CLIENT = "127.0.0.1"                      # the HTTP peer the site names in new_keep (limits per client)

REQUEST_EVIDENCE, LAUNCH, NOT_AN_ITEM = "request-evidence", "launch", "status"
WORKLOAD = {"wasm_binary": wat("echo"), "human_readable_info": "echo", "args": ["one", "two"],
            "env": {"GREETING": "hi"}, "stdin": b"from stdin\n"}
# The echo module prints its arguments, the GREETING variable and stdin; exits with the argument count.
ECHOED = {"exit_code": 2, "stdout": b"one\ntwo\nhi\nfrom stdin\n", "stderr": b"err-line\n", "cached": False}

CONFIG = EnarxConfig(stop_keeps_on_exit=True)

# Fresh on every run: contract and keep ids (16 bytes in CBOR, text in subjects and events), the
# keep's certificate, ports, paths under the data directory, times. The measurement is the SHA-256
# of components/enarx/*.py: not random, but it changes with every edit of that code, so it is
# compared by shape here and checked against `evidence.measurement()` by the recorder and the test.
ENARX_NORMALISER = Normaliser(
    random_paths=(
        "*.uuid", "*.keepmgr.port",                                   # ContractList
        "kuuid", "socket_path", "certificate_as_pem", "wasmldr.wasmldr_port",   # Keep; loader reports
        "evidence.measurement", "evidence.certificate_as_pem",        # the keep's evidence
        "elapsed_ms", "compile_ms",                                   # the workload's result
        "uuid", "at",                                                 # events
    ),
    opaque_cbor=True,                                   # the keep conversation: one CBOR item each way
    polled_subjects=(subjects.control("ping", "*"),),   # pings until the new loader answers
)

Connect = Callable[[str], Awaitable[Client]]


# -- a fresh deployment -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running_keepmgr(bus: TestBus, connect_as: Connect) -> AsyncIterator[KeepManager]:
    """A keep manager on `bus`'s data directory (per-keep NATS users), its sites on free ports;
    stopping it stops every keep it started."""
    context = Context(await connect_as(MANIFEST.role), bus.data_dir, CONFIG, nats_url=bus.url,
                      ports={KEEPMGR_SITE: free_port(), WASMLDR_SITE: free_port()})
    keepmgr = KeepManager(context)
    await keepmgr.start()
    try:
        yield keepmgr
    finally:
        await keepmgr.stop()


# -- the scenario -------------------------------------------------------------------------------------


def _check(condition: bool, step: str, value: Any) -> None:
    if not condition:
        raise AssertionError(f"{step}: unexpected {value!r}")


async def drive_enarx_scenario(driver: Requester) -> None:
    """Contracts; new_keep (Indeterminate); evidence; launch (Success); the keep (Ready); a workload;
    the redeemed contract again (409); an item the keep does not understand (400); shutdown."""
    async def keepmgr(subject: str, body: Any = None) -> Any:
        return (await driver.request(subject, body, content_type=CBOR, timeout=60.0)).payload

    async def converse(kuuid: str, item: Any) -> Any:
        reply = await driver.request(subjects.keep(kuuid), cbor2.dumps(item), content_type=OCTETS, encoded=True)
        return codec.loads_cbor(reply.data)

    contracts = await keepmgr(subjects.CONTRACTS)
    _check([c["backend"] for c in contracts] == ["Nil"], "the contracts on offer", contracts)
    contract = contracts[0]
    _check(isinstance(contract["uuid"], bytes) and len(contract["uuid"]) == 16, "a contract uuid", contract)
    new_keep = {"contract": contract, "client": CLIENT, "path_uuid": None}

    keep = await keepmgr(subjects.NEW_KEEP, new_keep)
    _check(keep["kuuid"] == contract["uuid"] and keep["backend"] == "Nil", "the new keep", keep)
    _check((keep["state"], keep["wasmldr"], keep["certificate_as_pem"]) == ("Indeterminate", None, None),
           "the new keep", keep)
    kuuid = str(uuid.UUID(bytes=keep["kuuid"]))
    _check(await keepmgr(subjects.KEEP_GET, {"kuuid": kuuid}) == keep, "the keep before its handshake", keep)

    proof = (await converse(kuuid, REQUEST_EVIDENCE))["evidence"]
    _check(proof["backend"] == "Nil" and proof["measurement"] == evidence.measurement(), "the evidence", proof)
    _check(proof["certificate_as_pem"].startswith(b"-----BEGIN CERTIFICATE-----"), "the evidence", proof)
    _check(await converse(kuuid, LAUNCH) == "Success", "launch", None)

    ready = await keepmgr(subjects.KEEP_GET, {"kuuid": kuuid})
    _check(ready["state"] == "Ready" and ready["certificate_as_pem"] == proof["certificate_as_pem"],
           "the launched keep", ready)
    _check(ready["wasmldr"]["wasmldr_ipaddr"] == "127.0.0.1", "the launched keep's wasmldr", ready)

    result = (await driver.request(subjects.workload(kuuid), cbor2.dumps(WORKLOAD), content_type=CBOR,
                                   encoded=True, timeout=60.0)).payload
    _check({name: result[name] for name in ECHOED} == ECHOED, "the workload's result", result)

    await regenerate.expect_error(409, keepmgr(subjects.NEW_KEEP, new_keep), "the redeemed contract again")
    await regenerate.expect_error(400, converse(kuuid, NOT_AN_ITEM), "an item the keep does not understand")

    ended = await keepmgr(subjects.KEEP_DELETE, {"kuuid": kuuid})
    _check((ended["state"], ended["wasmldr"]) == ("Shutdown", None), "the keep shut down", ended)


async def record_enarx(bus: TestBus, connect_as: Connect) -> Recording:
    """Run a fresh keep manager on `bus` and record the scenario driven against it."""
    async with running_keepmgr(bus, connect_as):
        return await regenerate.record_driven(connect_as, SCENARIO, DRIVER_ROLE, drive_enarx_scenario)


def main(argv: list[str]) -> int:
    return regenerate.main(argv, RECORDING, MANIFEST, lambda bus, connect_as, tmp: record_enarx(bus, connect_as))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
