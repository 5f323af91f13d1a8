"""components/aurae/runtime.py through bus requests on the session bus (the gRPC adapter is tested
elsewhere): real processes, real cells where this host allows them, output in AURAE_OUTPUT."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from bus.errors import BadRequest, PreconditionFailed, Unavailable
from bus.requester import Requester
from components.aurae import output_store, output_writer, subjects
from components.aurae.cells import CellSupport, probe
from components.aurae.config import AuraeConfig
from components.aurae.runtime import Runtime
from tests.aurae_fixtures import info, make_rootfs

CONFIG = AuraeConfig(timeout_seconds=1.0, grace_seconds=0.5, max_output_bytes=1024, max_concurrent_runs=32)
RUN_TIMEOUT = 20.0


@pytest.fixture
async def runtime(start_component) -> Runtime:
    return await start_component(Runtime, config=CONFIG)


@pytest.fixture
async def requester(connect_as) -> Requester:
    return Requester(await connect_as("adapter"), timeout=RUN_TIMEOUT)


async def run(requester: Requester, command: str, name: str = "") -> dict:
    executable = {"meta": {"name": name, "message": ""}, "command": command, "comment": ""}
    return (await requester.request(subjects.run_executable(CONFIG.host), executable)).payload


async def stored(client, host: str, pid: int, channel: str) -> list[tuple[dict, dict]]:
    """What the stream keeps on one of a pid's subjects, in order: (headers, body) of every record
    and marker, (headers, LogItem) of every line (a batch split)."""
    js = client.jetstream()
    subject = subjects.output(host, pid, channel)
    info = await js.stream_info(subjects.OUTPUT_STREAM, subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    found: list[tuple[dict, dict]] = []
    seen, done = [0], asyncio.Event()

    async def keep(msg) -> None:
        hdrs = msg.headers or {}
        if output_store.END in hdrs or output_store.START in hdrs:
            found.append((hdrs, orjson.loads(msg.data)))
        else:
            found.extend((hdrs, item) for item in output_store.lines(msg.data))
        seen[0] += 1
        if seen[0] >= count:
            done.set()

    if count:
        subscription = await js.subscribe(subject, stream=subjects.OUTPUT_STREAM, cb=keep, ordered_consumer=True)
        await asyncio.wait_for(done.wait(), 10)
        await subscription.unsubscribe()
    return found


# --- RunExecutable ---------------------------------------------------------------------------------

async def test_a_command_is_split_like_a_shell_and_named_by_itself(runtime, requester):
    reply = await run(requester, """printf '%s|' "a b" 'c d' e\\ f""")
    assert reply == {"meta": {"name": """printf '%s|' "a b" 'c d' e\\ f""", "message": "exited with code 0"},
                     "proc": {"pid": reply["proc"]["pid"]}, "status": "STATUS_COMPLETE", "stdout": "a b|c d|e f|",
                     "stderr": "", "exit_code": "0"}
    assert reply["proc"]["pid"] > 0
    assert (await run(requester, "true", name="greeter"))["meta"]["name"] == "greeter"


async def test_a_missing_binary_is_an_error_status_naming_it(runtime, requester):
    reply = await run(requester, "no-such-binary-for-teebus --flag")
    assert reply["status"] == "STATUS_ERROR" and reply["proc"] == {"pid": 0} and reply["exit_code"] == ""
    assert "no-such-binary-for-teebus" in reply["meta"]["message"]
    assert "No such file or directory" in reply["meta"]["message"]


async def test_a_non_zero_exit_completes_with_its_code(runtime, requester):
    reply = await run(requester, "sh -c 'echo oops >&2; exit 7'")
    assert (reply["status"], reply["exit_code"], reply["stderr"]) == ("STATUS_COMPLETE", "7", "oops\n")
    assert reply["meta"]["message"] == "exited with code 7"


async def test_a_signal_is_an_error_naming_it(runtime, requester):
    reply = await run(requester, "sh -c 'kill -KILL $$'")
    assert (reply["status"], reply["exit_code"]) == ("STATUS_ERROR", "")
    assert reply["meta"]["message"] == "killed by signal SIGKILL"


async def test_output_that_is_not_utf8_is_replaced_not_fatal(runtime, requester):
    reply = await run(requester, r"printf '\377\376ok\n'")
    assert reply["stdout"] == "\ufffd\ufffdok\n" and reply["status"] == "STATUS_COMPLETE"


async def test_output_past_the_cap_is_cut_with_a_marker(runtime, requester):
    reply = await run(requester, "sh -c 'head -c 5000 /dev/zero | tr \"\\0\" a'")
    assert reply["stdout"] == "a" * 1024 + "\n[teebus: 3976 more bytes cut]"


async def test_a_process_past_the_timeout_is_stopped(runtime, requester):
    started = time.monotonic()
    reply = await run(requester, "sleep 30")
    assert time.monotonic() - started < 5
    assert (reply["status"], reply["exit_code"]) == ("STATUS_ERROR", "")
    assert reply["meta"]["message"] == "timed out after 1s; stopped with SIGTERM"


@pytest.mark.parametrize("command, reason", [("echo 'unclosed", "no closing quotation"),
                                             ("", "the command is empty"),
                                             (17, "command must be text")])
async def test_a_command_that_does_not_split_is_a_400(runtime, requester, command, reason):
    with pytest.raises(BadRequest, match=reason):
        await run(requester, command)


async def test_twenty_run_at_once_without_blocking_each_other(runtime, requester):
    started = time.monotonic()
    replies = await asyncio.gather(*(run(requester, f"sh -c 'sleep 0.5; echo {i}'") for i in range(20)))
    assert time.monotonic() - started < 4           # one after another would take 10 s
    assert [r["stdout"] for r in replies] == [f"{i}\n" for i in range(20)]
    assert len({r["proc"]["pid"] for r in replies}) == 20
    assert runtime.running == 0


async def test_more_runs_than_allowed_are_unavailable(start_component, requester):
    runtime = await start_component(Runtime, config=replace(CONFIG, max_concurrent_runs=2, timeout_seconds=5))
    held = [asyncio.create_task(run(requester, "sleep 0.6")) for _ in range(2)]
    while runtime.running < 2:
        await asyncio.sleep(0.01)
    with pytest.raises(Unavailable, match="at most 2 may run at once"):
        await run(requester, "true")
    assert all(r["status"] == "STATUS_COMPLETE" for r in await asyncio.gather(*held))
    assert (await run(requester, "true"))["status"] == "STATUS_COMPLETE"


async def test_output_lines_are_stored_in_order_with_end_markers(runtime, requester, connect_as):
    script = "for i in $(seq 1 500); do echo out$i; echo err$i >&2; done; exit 3"
    reply = await run(requester, f"sh -c '{script}'")
    pid, admin = reply["proc"]["pid"], await connect_as("admin")
    for channel in ("stdout", "stderr"):
        kept = await stored(admin, CONFIG.host, pid, channel)
        lines, (end_headers, end) = kept[:-1], kept[-1]
        assert [body["line"] for _, body in lines] == [f"{channel[3:]}{i}" for i in range(1, 501)]
        assert all(body["channel"] == channel for _, body in lines)
        stamps = [body["timestamp"] for _, body in lines]
        assert stamps == sorted(stamps) and stamps[0] > 1.6e18
        assert end_headers[output_store.END] == "STATUS_COMPLETE"
        assert end == {"status": "STATUS_COMPLETE", "message": "exited with code 3", "exit_code": "3", "dropped": 0}
    records = await stored(admin, CONFIG.host, pid, output_store.PROC)
    (start_headers, started), (_, ended) = records[-2:]
    assert output_store.START in start_headers and started["command"] == f"sh -c '{script}'"
    assert ended["ended"] and ended["exit_code"] == "3" and ended["start_seq"] > 0
    assert runtime.processes[pid].ended and runtime.processes[pid].status == "STATUS_COMPLETE"
    found = await output_store.find(admin.jetstream(), CONFIG.host, pid)
    assert found is not None and found.start_seq == ended["start_seq"]


async def test_a_fast_printer_loses_no_line(runtime, requester, connect_as):
    reply = await run(requester, "seq 1 20000")
    kept = await stored(await connect_as("admin"), CONFIG.host, reply["proc"]["pid"], "stdout")
    assert [body["line"] for _, body in kept[:-1]] == [str(i) for i in range(1, 20001)]
    assert kept[-1][1]["dropped"] == 0


# --- RunCell ---------------------------------------------------------------------------------------

def cell(name: str, *containers: tuple[str, str, str]) -> dict:
    return {"meta": {"name": name, "message": ""},
            "containers": [{"meta": {"name": c, "message": command}, "image": image}
                           for c, image, command in containers]}


async def run_cell(requester: Requester, payload: dict) -> dict:
    return (await requester.request(subjects.run_cell(CONFIG.host), payload)).payload


@pytest.fixture(scope="module")
def support():
    return probe()


async def test_a_cell_runs_its_containers_and_stores_their_output(runtime, requester, connect_as, support,
                                                                 cellinfo, tmp_path):  # noqa: F811
    rootfs = str(make_rootfs(tmp_path, cellinfo))
    payload = cell("webcell", ("hello", rootfs, "/bin/cellinfo echo hello 'big world'"),
                   ("about", rootfs, "/bin/cellinfo info"))
    if not support.usable:
        with pytest.raises(PreconditionFailed) as raised:
            await run_cell(requester, payload)
        assert raised.value.status == 412 and raised.value.message == support.message
        return
    reply = await run_cell(requester, payload)
    assert reply["meta"] == {"name": "webcell", "message": "2 containers completed"}
    assert reply["status"] == "STATUS_COMPLETE"
    hello, about = reply["container_statuses"]
    assert hello["meta"] == {"name": "hello", "message": "exited with code 0"}
    assert hello["status"] == about["status"] == "STATUS_COMPLETE"
    assert hello["proc"]["pid"] > 0 and about["proc"]["pid"] > 0
    admin = await connect_as("admin")
    kept = await stored(admin, CONFIG.host, hello["proc"]["pid"], "stdout")
    assert [body["line"] for _, body in kept[:-1]] == ["hello", "big world"]
    assert kept[-1][0][output_store.END] == "STATUS_COMPLETE"
    shown = info("\n".join(body["line"] for _, body in
                           (await stored(admin, CONFIG.host, about["proc"]["pid"], "stdout"))[:-1]))
    assert shown["hostname"] == "webcell" and shown["marker"] == "from the rootfs"
    record = await output_store.find(admin.jetstream(), CONFIG.host, hello["proc"]["pid"])
    assert record is not None and (record.kind, record.cell, record.ended) == ("container", "webcell", True)


async def test_a_container_that_cannot_start_fails_the_cell(runtime, requester, support, cellinfo,  # noqa: F811
                                                            tmp_path):
    if not support.usable:
        pytest.skip("this host cannot run cells: the 412 is asserted above")
    rootfs = str(make_rootfs(tmp_path, cellinfo))
    reply = await run_cell(requester, cell("c2", ("ok", rootfs, "/bin/cellinfo exit 4"),
                                           ("bad", rootfs, "/bin/not-in-the-image")))
    ok, bad = reply["container_statuses"]
    assert ok["status"] == "STATUS_COMPLETE" and ok["meta"]["message"] == "exited with code 4"
    assert bad["status"] == "STATUS_ERROR" and "/bin/not-in-the-image" in bad["meta"]["message"]
    assert reply["status"] == "STATUS_ERROR" and reply["meta"]["message"].startswith("container bad: ")


@pytest.mark.parametrize("image, command, reason", [
    ("docker.io/library/alpine:3.16", "/bin/true", "no registry pulls"),
    ("/no/such/rootfs/anywhere", "/bin/true", "does not pull from registries"),
    ("ROOTFS", "", "has no command and its image names none"),
    ("ROOTFS", "/bin/cellinfo 'unclosed", "container 'one': cannot split"),
])
async def test_bad_cells_are_400s_saying_why(runtime, requester, support, cellinfo, tmp_path,  # noqa: F811
                                             image, command, reason):
    if not support.usable:
        with pytest.raises(PreconditionFailed):
            await run_cell(requester, cell("bad", ("one", "/x", "")))
        return
    image = str(make_rootfs(tmp_path, cellinfo)) if image == "ROOTFS" else image
    with pytest.raises(BadRequest, match=reason):
        await run_cell(requester, cell("bad", ("one", image, command)))


async def test_a_cell_without_containers_is_a_400(runtime, requester):
    with pytest.raises(BadRequest, match="a Cell needs containers"):
        await run_cell(requester, {"meta": {"name": "empty", "message": ""}, "containers": []})


def test_the_config_bounds_the_stream():
    config = AuraeConfig(output_kept_bytes=8 * 1024 * 1024, output_kept_seconds=3600)
    stream = output_store.stream_config(config, 1)
    assert stream.subjects == [subjects.output_filter()] and stream.max_age == 3600
    assert stream.max_msgs_per_subject == 65536 and stream.max_bytes == 512 * 1024 * 1024
    assert Path(subjects.output("a.b", 7, "stdout")).name.endswith("a_b.7.stdout")


async def test_a_host_without_cells_answers_412_with_what_it_lacks(runtime, requester):
    runtime._support = CellSupport(root=False, user_namespace=False, namespaces=False, cgroup_version=None,
                                   cgroup_parents={}, controllers=(), missing=("no cgroup for this test",))
    with pytest.raises(PreconditionFailed) as raised:
        await run_cell(requester, cell("nocell", ("one", "/x", "/bin/true")))
    assert raised.value.status == 412
    assert raised.value.message == "RunCell is not available on this host: no cgroup for this test"


async def test_lines_the_stream_cannot_keep_up_with_are_dropped_and_counted(runtime, requester, connect_as,
                                                                          monkeypatch):
    monkeypatch.setattr(output_writer, "QUEUE_BYTES", 4000)     # a few dozen lines
    reply = await run(requester, "seq 1 5000")
    kept = await stored(await connect_as("admin"), CONFIG.host, reply["proc"]["pid"], "stdout")
    (end_headers, end), numbers = kept[-1], [int(body["line"]) for _, body in kept[:-1]]
    assert end["dropped"] > 0 and end_headers[output_store.DROPPED] == str(end["dropped"])
    assert numbers == sorted(numbers) and len(numbers) + end["dropped"] == 5000
    assert reply["stdout"].count("\n") > 0          # the reply's own capture is not affected
