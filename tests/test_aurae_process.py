"""components/aurae/process.py: RunExecutable's runner, against real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from components.aurae.process import COMPLETE, ERROR, Limits, run, split_command

QUICK = Limits(timeout_seconds=10, grace_seconds=1)


def live_members(pgid: int) -> list[int]:
    """Processes of the group that are still running. Zombies do not count: on hosts whose
    pid 1 is slow to reap orphans (this one's is), a killed grandchild lingers as one."""
    live = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                live.append(int(entry))
    return live


async def assert_group_gone(pgid: int) -> None:
    for _ in range(50):
        if not live_members(pgid):
            return
        await asyncio.sleep(0.02)
    assert live_members(pgid) == []


# -- splitting ---------------------------------------------------------------------------------

def test_split_honours_quotes_like_a_shell():
    assert split_command("""sh -c 'echo "a b"; echo c'""") == ["sh", "-c", 'echo "a b"; echo c']
    assert split_command("""printf '%s\\n' "a b" c""") == ["printf", "%s\\n", "a b", "c"]
    assert split_command(r"echo a\ b 'x''y' """) == ["echo", "a b", "xy"]


@pytest.mark.parametrize("text, reason", [
    ("echo 'unbalanced", "closing quotation"),
    ('echo "unbalanced', "closing quotation"),
    ("echo trailing\\", "escaped character"),
    ("", "empty"),
    ("   \t ", "empty"),
])
def test_split_rejects_clearly(text, reason):
    with pytest.raises(ValueError, match=reason):
        split_command(text)


@pytest.mark.parametrize("kwargs", [
    {"timeout_seconds": 0}, {"timeout_seconds": -1}, {"grace_seconds": -1},
    {"max_output_bytes": -1}, {"max_line_bytes": 0}, {"drain_seconds": -0.5},
])
def test_limits_are_checked(kwargs):
    with pytest.raises(ValueError):
        Limits(**kwargs)


# -- running -----------------------------------------------------------------------------------

async def test_argv_runs_without_a_shell_and_reports_the_real_pid():
    started: list[int] = []

    async def on_start(pid: int) -> None:
        started.append(pid)
        assert os.path.exists(f"/proc/{pid}")  # right after spawn, the process is there

    outcome = await run(split_command("""printf '%s\\n' "a b" c '$HOME'"""), QUICK, on_start=on_start)
    assert outcome.status == COMPLETE and outcome.exit_code == 0 and outcome.signal is None
    assert outcome.stdout == "a b\nc\n$HOME\n"  # no shell: nothing expanded
    assert outcome.pid == started[0] and outcome.pid > 1
    assert outcome.message == "exited with code 0"


async def test_a_shell_when_asked_for_one():
    outcome = await run(split_command("""sh -c 'echo "a b"; echo c; echo e >&2'"""), QUICK)
    assert (outcome.stdout, outcome.stderr, outcome.exit_code) == ("a b\nc\n", "e\n", 0)


async def test_missing_binary_is_an_error_not_an_exception():
    outcome = await run(["/no/such/teebus-binary", "x"], QUICK)
    assert outcome.status == ERROR and outcome.pid is None and outcome.exit_code is None
    assert "/no/such/teebus-binary" in outcome.message and "No such file" in outcome.message
    outcome = await run(["teebus-no-such-command-anywhere"], QUICK)
    assert outcome.status == ERROR and "teebus-no-such-command-anywhere" in outcome.message


async def test_permission_denied_names_the_binary(tmp_path):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    outcome = await run([str(script)], QUICK)
    if os.geteuid() == 0 and os.access(script, os.X_OK):  # pragma: no cover - root with odd fs
        pytest.skip("root may execute anything on this filesystem")
    assert outcome.status == ERROR and str(script) in outcome.message and "Permission denied" in outcome.message


async def test_bad_cwd_is_an_error(tmp_path):
    outcome = await run(["true"], QUICK, cwd=tmp_path / "gone")
    assert outcome.status == ERROR and "gone" in outcome.message


async def test_non_zero_exit_is_complete_with_the_decimal_code():
    outcome = await run(["sh", "-c", "echo out; exit 3"], QUICK)
    assert outcome.status == COMPLETE and outcome.exit_code == 3 and outcome.stdout == "out\n"
    assert outcome.message == "exited with code 3"


async def test_killed_by_a_signal_is_an_error_naming_it():
    outcome = await run(["sh", "-c", "echo before; kill -USR1 $$; echo after"], QUICK)
    assert outcome.status == ERROR and outcome.signal == "SIGUSR1" and outcome.exit_code is None
    assert outcome.message == "killed by signal SIGUSR1" and outcome.stdout == "before\n"
    outcome = await run(["sh", "-c", "kill -9 $$"], QUICK)
    assert outcome.signal == "SIGKILL" and not outcome.timed_out


async def test_non_utf8_output_is_replaced_never_a_crash():
    lines: list[str] = []

    async def on_output(pid: int, channel: str, line: str, ts: int) -> None:
        lines.append(line)

    outcome = await run(["sh", "-c", r"printf 'ok \377\376 end\n'; printf '\300x' >&2"], QUICK, on_output=on_output)
    assert outcome.status == COMPLETE
    assert outcome.stdout == "ok \ufffd\ufffd end\n" and outcome.stderr == "\ufffdx"
    assert sorted(lines) == ["ok \ufffd\ufffd end", "\ufffdx"]


async def test_output_past_the_cap_is_cut_with_a_marker_but_streamed_whole():
    limits = Limits(timeout_seconds=10, max_output_bytes=1000, max_line_bytes=300)
    seen = {"stdout": 0, "stderr": 0}

    async def on_output(pid: int, channel: str, line: str, ts: int) -> None:
        seen[channel] += len(line)

    outcome = await run(["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x; head -c 1200 /dev/zero | tr '\\0' y >&2"],
                        limits, on_output=on_output)
    assert outcome.stdout == "x" * 1000 + "\n[teebus: 4000 more bytes cut]"
    assert outcome.stderr == "y" * 1000 + "\n[teebus: 200 more bytes cut]"
    assert (outcome.stdout_cut, outcome.stderr_cut) == (4000, 200)
    assert seen == {"stdout": 5000, "stderr": 1200}  # the cap bounds memory, not the stream


async def test_timeout_terms_then_kills_a_child_that_ignores_term():
    limits = Limits(timeout_seconds=0.4, grace_seconds=0.4)
    began = time.monotonic()
    outcome = await run(["sh", "-c", "trap '' TERM; echo waiting; sleep 30; echo never"], limits)
    took = time.monotonic() - began
    assert outcome.status == ERROR and outcome.timed_out and outcome.signal == "SIGKILL"
    assert "timed out after 0.4s" in outcome.message and "SIGKILL" in outcome.message
    assert outcome.stdout == "waiting\n"
    assert 0.7 < took < 3
    await assert_group_gone(outcome.pid)  # the whole group went, `sleep` included


async def test_timeout_stops_an_obedient_process_with_term():
    outcome = await run(["sleep", "30"], Limits(timeout_seconds=0.3, grace_seconds=5))
    assert outcome.timed_out and outcome.signal == "SIGTERM" and outcome.status == ERROR
    assert outcome.message == "timed out after 0.3s; stopped with SIGTERM"


async def test_twenty_runs_at_once_take_the_time_of_one_and_leave_the_loop_free():
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    began = time.monotonic()
    outcomes = await asyncio.gather(*(run(["sh", "-c", f"sleep 0.6; echo {i}"], QUICK) for i in range(20)))
    took = time.monotonic() - began
    beat.cancel()
    assert [o.stdout for o in outcomes] == [f"{i}\n" for i in range(20)]
    assert len({o.pid for o in outcomes}) == 20
    assert took < 1.8, took
    assert ticks > took / 0.01 * 0.5  # the loop kept ticking throughout


async def test_lines_arrive_while_the_process_still_runs():
    arrivals: list[tuple[str, str, int, float]] = []
    pids: list[int] = []

    async def on_output(pid: int, channel: str, line: str, ts: int) -> None:
        pids.append(pid)
        arrivals.append((channel, line, ts, time.monotonic()))

    before_ns = time.time_ns()
    outcome = await run(["sh", "-c", "echo first; echo warn >&2; sleep 0.8; echo second"], QUICK, on_output=on_output)
    ended = time.monotonic()
    assert [(c, line) for c, line, *_ in sorted(arrivals, key=lambda a: a[3])][-1] == ("stdout", "second")
    early = {line: when for _, line, _, when in arrivals}
    assert ended - early["first"] > 0.6 and ended - early["warn"] > 0.6
    assert {(c, line) for c, line, *_ in arrivals} == {("stdout", "first"), ("stderr", "warn"), ("stdout", "second")}
    assert all(before_ns <= ts <= time.time_ns() for _, _, ts, _ in arrivals)
    assert set(pids) == {outcome.pid}


async def test_long_lines_arrive_in_pieces_without_splitting_characters():
    pieces: list[str] = []

    async def on_output(pid: int, channel: str, line: str, ts: int) -> None:
        pieces.append(line)

    text = "é" * 100  # 200 bytes of two-byte characters
    await run(["printf", "%s\r\n", text], Limits(max_line_bytes=33), on_output=on_output)
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert all(len(p.encode()) <= 33 for p in pieces)


async def test_a_failing_callback_does_not_end_the_run():
    async def broken(*_: object) -> None:
        raise RuntimeError("caller bug")

    outcome = await run(["sh", "-c", "echo a; echo b"], QUICK, on_start=broken, on_output=broken)
    assert outcome.status == COMPLETE and outcome.stdout == "a\nb\n"


async def test_cancelling_a_run_kills_its_process_group():
    started = asyncio.Event()
    pids: list[int] = []

    async def on_start(pid: int) -> None:
        pids.append(pid)
        started.set()

    task = asyncio.create_task(run(["sh", "-c", "sleep 30 & sleep 30"], QUICK, on_start=on_start))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_group_gone(pids[0])


async def test_a_background_child_holding_the_pipes_does_not_hang_the_run():
    began = time.monotonic()
    outcome = await run(["sh", "-c", "sleep 30 & echo parent done"], Limits(timeout_seconds=10, drain_seconds=0.3))
    assert outcome.status == COMPLETE and outcome.stdout == "parent done\n"
    assert time.monotonic() - began < 3
    await assert_group_gone(outcome.pid)


async def test_env_and_cwd_are_passed(tmp_path):
    outcome = await run(["sh", "-c", 'echo "$GREETING"; pwd'], QUICK, env={"GREETING": "hi", "PATH": os.environ["PATH"]},
                        cwd=tmp_path)
    assert outcome.stdout == f"hi\n{tmp_path}\n"


def test_signal_names_come_from_the_signal_module():
    from components.aurae.process import signal_name
    assert signal_name(signal.SIGTERM) == "SIGTERM" and signal_name(9) == "SIGKILL"
    assert signal_name(signal.SIGRTMIN + 2).startswith("SIG")
