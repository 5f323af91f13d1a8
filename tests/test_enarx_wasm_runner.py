"""The Enarx wasm runner against real wasmtime: exits, every kind of stop, input checks, caches."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.errors import BadRequest, TooLarge, Unavailable
from components.enarx.wasm_runner import Limits, RunRequest, RunResult, WasmRunner
from tests.wasm_modules import padded, wat

MakeRunner = Callable[..., WasmRunner]


@pytest.fixture
def make_runner() -> Iterator[MakeRunner]:
    """Runners with the given limit overrides, all closed after the test."""
    made: list[WasmRunner] = []

    def make(cache_dir: Path | None = None, **limits: object) -> WasmRunner:
        runner = WasmRunner(Limits(**limits), cache_dir=cache_dir)  # type: ignore[arg-type]
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def run(runner: WasmRunner, name: str, **request: object) -> RunResult:
    return runner.run(RunRequest(wat(name), **request))  # type: ignore[arg-type]


def assert_hello(runner: WasmRunner) -> None:
    result = run(runner, "hello")
    assert (result.exit_code, result.stopped, result.stdout) == (0, None, b"hello\n")


# --- normal exits -------------------------------------------------------------------------


def test_echo_sees_args_env_and_stdin_and_exits_with_proc_exit(make_runner: MakeRunner) -> None:
    result = run(make_runner(), "echo", args=["one", "twö", "three"],
                 env={"GREETING": "hi there", "OTHER": "x"}, stdin=b"line 1\nline 2\n")
    assert result.exit_code == 3
    assert result.stopped is None and result.details == ""
    assert result.stdout == "one\ntwö\nthree\nhi there\nline 1\nline 2\n".encode()
    assert result.stderr == b"err-line\n"


def test_echo_without_greeting_or_stdin(make_runner: MakeRunner) -> None:
    result = run(make_runner(), "echo", args=["a"])
    assert (result.exit_code, result.stdout, result.stderr) == (1, b"a\n", b"err-line\n")


def test_hello_returns_normally_with_exit_zero(make_runner: MakeRunner) -> None:
    result = run(make_runner(), "hello")
    assert (result.exit_code, result.stopped, result.stdout, result.stderr) == (0, None, b"hello\n", b"")
    assert result.elapsed_ms > 0


def test_run_async(make_runner: MakeRunner) -> None:
    runner = make_runner()
    result = asyncio.run(runner.run_async(RunRequest(wat("echo"), args=["x", "y"])))
    assert (result.exit_code, result.stdout) == (2, b"x\ny\n")


# --- stops --------------------------------------------------------------------------------


def test_loop_stopped_by_deadline_and_runner_still_works(make_runner: MakeRunner) -> None:
    runner = make_runner(deadline_seconds=0.5)
    result = run(runner, "loop")
    assert (result.exit_code, result.stopped) == (None, "deadline")
    assert 450 <= result.elapsed_ms < 1500
    assert "0.5 s deadline" in result.details and "deadline_seconds" in result.details
    assert_hello(runner)


def test_sleep_cannot_outlast_deadline(make_runner: MakeRunner) -> None:
    runner = make_runner(deadline_seconds=0.5)
    assert run(runner, "nap").stdout == b"woke\n"    # a short sleep works normally
    result = run(runner, "sleepy")                   # asks for 60 s
    assert (result.exit_code, result.stopped, result.stdout) == (None, "deadline", b"")
    assert result.elapsed_ms < 1500
    assert_hello(runner)


def test_loop_stopped_by_fuel(make_runner: MakeRunner) -> None:
    runner = make_runner(deadline_seconds=30.0, fuel=20_000_000)
    result = run(runner, "loop")
    assert (result.exit_code, result.stopped) == (None, "fuel")
    assert "20,000,000" in result.details and "fuel" in result.details
    assert result.elapsed_ms < 5000
    assert_hello(runner)


def test_unlimited_fuel_still_has_a_deadline(make_runner: MakeRunner) -> None:
    result = run(make_runner(deadline_seconds=0.2, fuel=None), "loop")
    assert result.stopped == "deadline"


def test_membomb_stopped_as_memory(make_runner: MakeRunner) -> None:
    runner = make_runner(max_memory_bytes=16 * 1024 * 1024)
    result = run(runner, "membomb")
    assert (result.exit_code, result.stopped) == (None, "memory")
    assert "16 MiB cap" in result.details and "max_memory_bytes" in result.details
    assert_hello(runner)


def test_initial_memory_over_cap_stopped_as_memory(make_runner: MakeRunner) -> None:
    result = run(make_runner(max_memory_bytes=16 * 1024 * 1024), "bigmem")  # asks for 32 MiB
    assert (result.exit_code, result.stopped) == (None, "memory")
    assert "32 MiB" in result.details


def test_trap(make_runner: MakeRunner) -> None:
    runner = make_runner()
    result = run(runner, "trap")
    assert (result.exit_code, result.stopped) == (None, "trap")
    assert "unreachable" in result.details
    assert_hello(runner)


def test_chatty_stopped_at_output_cap(make_runner: MakeRunner) -> None:
    runner = make_runner(max_output_bytes=100 * 1024)
    result = run(runner, "chatty")
    assert (result.exit_code, result.stopped) == (None, "output")
    assert len(result.stdout) == 100 * 1024 and set(result.stdout) == {ord("x")}
    assert "stdout" in result.details and "max_output_bytes" in result.details
    assert result.elapsed_ms < 2000
    assert_hello(runner)


# --- refused before running -----------------------------------------------------------------


@pytest.mark.parametrize("wasm", [b"", b"not wasm at all", b"\0asm\x01\0\0\0garbage",
                                  b"\0asm\x0d\x00\x01\x00"])
def test_invalid_bytes_are_bad_request(make_runner: MakeRunner, wasm: bytes) -> None:
    with pytest.raises(BadRequest):
        make_runner().run(RunRequest(wasm))


def test_module_over_size_limit_is_too_large(make_runner: MakeRunner) -> None:
    runner = make_runner(max_module_bytes=4096)
    with pytest.raises(TooLarge, match="max_module_bytes"):
        runner.run(RunRequest(padded(wat("hello"), 4097)))
    assert runner.run(RunRequest(padded(wat("hello"), 4096))).stdout == b"hello\n"


def test_stdin_over_limit_is_too_large(make_runner: MakeRunner) -> None:
    with pytest.raises(TooLarge, match="max_stdin_bytes"):
        run(make_runner(max_stdin_bytes=10), "echo", stdin=b"x" * 11)


def test_missing_start_is_bad_request(make_runner: MakeRunner) -> None:
    with pytest.raises(BadRequest, match="_start"):
        run(make_runner(), "nostart")


@pytest.mark.parametrize("request_fields, match", [
    ({"args": ["a"] * 5}, "arguments"),
    ({"env": {f"K{i}": "v" for i in range(5)}}, "environment"),
    ({"args": ["x" * 200]}, "max_arg_bytes"),
    ({"args": ["nul\0byte"]}, "NUL"),
    ({"env": {"A=B": "c"}}, "'='"),
])
def test_bad_args_and_env_are_bad_request(make_runner: MakeRunner, request_fields: dict,
                                          match: str) -> None:
    runner = make_runner(max_args=4, max_env=4, max_arg_bytes=100)
    with pytest.raises(BadRequest, match=match):
        run(runner, "echo", **request_fields)


def test_foreign_import_is_bad_request(make_runner: MakeRunner) -> None:
    import wasmtime
    wasm = wasmtime.wat2wasm('(module (import "env" "f" (func)) (func (export "_start")))')
    with pytest.raises(BadRequest, match="env::f"):
        make_runner().run(RunRequest(bytes(wasm)))


def test_closed_runner_refuses(make_runner: MakeRunner) -> None:
    runner = make_runner()
    runner.close()
    with pytest.raises(Unavailable):
        run(runner, "hello")


# --- caches, threads, size ------------------------------------------------------------------


def test_second_run_hits_the_cache(make_runner: MakeRunner) -> None:
    runner = make_runner()
    first, second = run(runner, "echo"), run(runner, "echo")
    assert (first.cached, second.cached) == (False, True)
    assert first.compile_ms > 0.0 and second.compile_ms == 0.0
    assert first.stdout == second.stdout == b""


def test_disk_cache_survives_a_new_runner(make_runner: MakeRunner, tmp_path: Path) -> None:
    cache_dir = tmp_path / "wasm-cache"
    first = run(make_runner(cache_dir=cache_dir), "hello")
    assert first.cached is False
    files = list(cache_dir.glob("*.cwasm"))
    assert len(files) == 1 and len(files[0].stem) == 64
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600

    second = run(make_runner(cache_dir=cache_dir), "hello")
    assert (second.cached, second.compile_ms, second.stdout) == (True, 0.0, b"hello\n")


def test_disk_cache_ignores_unsafe_or_broken_files(make_runner: MakeRunner, tmp_path: Path) -> None:
    cache_dir = tmp_path / "wasm-cache"
    run(make_runner(cache_dir=cache_dir), "hello")
    [cached] = cache_dir.glob("*.cwasm")
    os.chmod(cached, 0o644)                     # readable by others: not trusted
    assert run(make_runner(cache_dir=cache_dir), "hello").cached is False
    cached.write_bytes(b"corrupt")              # rewritten 0600 above; now garbage
    os.chmod(cached, 0o600)
    result = run(make_runner(cache_dir=cache_dir), "hello")
    assert (result.cached, result.stdout) == (False, b"hello\n")


def test_concurrent_runs_from_threads(make_runner: MakeRunner) -> None:
    runner = make_runner(deadline_seconds=5.0)
    barrier = threading.Barrier(4)
    results: dict[int, RunResult] = {}

    def work(i: int) -> None:
        barrier.wait()
        results[i] = run(runner, "echo", args=[f"arg{i}"] * (i + 1), env={"GREETING": f"g{i}"},
                         stdin=f"stdin {i}\n".encode() * 1000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [0, 1, 2, 3]
    for i, result in results.items():
        expected = f"arg{i}\n" * (i + 1) + f"g{i}\n" + f"stdin {i}\n" * 1000
        assert (result.exit_code, result.stdout, result.stderr) == (i + 1, expected.encode(), b"err-line\n")
    assert sum(not r.cached for r in results.values()) == 1   # compiled once


def test_concurrent_stops_do_not_disturb_each_other(make_runner: MakeRunner) -> None:
    runner = make_runner(deadline_seconds=0.5, max_output_bytes=100 * 1024)
    names = ["loop", "chatty", "trap", "echo"]
    results: dict[str, RunResult] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, run(runner, n)))
               for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert {n: results[n].stopped for n in names} == {
        "loop": "deadline", "chatty": "output", "trap": "trap", "echo": None}
    assert results["echo"].exit_code == 0


def test_twenty_megabyte_module_runs(make_runner: MakeRunner) -> None:
    big = padded(wat("hello"), 20 * 1024 * 1024)
    assert len(big) == 20 * 1024 * 1024
    result = make_runner().run(RunRequest(big))
    assert (result.exit_code, result.stdout) == (0, b"hello\n")


def test_limits_from_overrides() -> None:
    assert Limits.from_overrides({"fuel": None}).fuel is None
    with pytest.raises(ValueError, match="deadline_secs"):
        Limits.from_overrides({"deadline_secs": 1})
    with pytest.raises(ValueError):
        Limits(deadline_seconds=0)


@pytest.mark.parametrize("overrides", [{"deadline_seconds": float("nan")}, {"deadline_seconds": float("inf")},
                                       {"deadline_seconds": 0}, {"fuel": True}, {"fuel": 0}])
def test_limits_that_could_never_stop_a_workload_are_refused(overrides):
    with pytest.raises(ValueError, match="deadline_seconds|fuel"):
        Limits.from_overrides(overrides)
