"""The Enarx wasm runner against real wasmtime: exits, every kind of stop, input checks, caches."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.config import add_arguments, from_arguments, from_mapping
from bus.errors import BadRequest, TooLarge, Unavailable, Unprocessable
from components.enarx.wasm_cache import DiskCache
from components.enarx.wasm_runner import Limits, RunRequest, RunResult, WasmRunner
from tests.wasm_modules import expensive_to_compile, many_memories, padded, wat

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


# --- the workload's total memory (issue 9, item 10) ------------------------------------------


@pytest.mark.parametrize("count, pages, touch", [(2, 1, False), (4, 4000, True), (40, 4000, False)])
def test_more_than_one_memory_is_refused_before_running(make_runner: MakeRunner, count: int,
                                                        pages: int, touch: bool) -> None:
    # Was: 4 x 250 MiB all touched ran to exit 0 at ~1 GB; 40 x 250 MiB were addressable.
    runner = make_runner()
    with pytest.raises(BadRequest, match="more than one linear memory"):
        runner.run(RunRequest(many_memories(count, pages, touch)))
    assert_hello(runner)


@pytest.mark.parametrize("name, match", [("memory64", "64-bit memory"),
                                         ("shared_memory", "shared memory")])
def test_memory_kinds_not_served_are_refused(make_runner: MakeRunner, name: str, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        run(make_runner(), name)


def test_more_than_one_table_is_refused(make_runner: MakeRunner) -> None:
    with pytest.raises(BadRequest, match="declares 2 tables.*max_table_elements"):
        run(make_runner(), "two_tables")


def test_initial_table_over_cap_stopped_as_memory(make_runner: MakeRunner) -> None:
    runner = make_runner(max_table_elements=1000)
    result = run(runner, "big_table")   # asks for 5000 elements
    assert (result.exit_code, result.stopped) == (None, "memory")
    assert "5,000 elements" in result.details and "max_table_elements" in result.details
    assert_hello(runner)


def test_table_cannot_grow_past_cap(make_runner: MakeRunner) -> None:
    assert run(make_runner(max_table_elements=1000), "table_grower").exit_code == 1  # refused
    assert run(make_runner(max_table_elements=10_000), "table_grower").exit_code == 0


# --- compiling is bounded (issue 9, item 11) ----------------------------------------------


def test_compile_over_its_memory_ceiling_is_refused(make_runner: MakeRunner) -> None:
    runner = make_runner(compile_memory_bytes=64 * 1024 * 1024)
    wasm = expensive_to_compile(400_000)   # ~375 MB to compile
    with pytest.raises(Unprocessable, match="more than 64 MiB.*compile_memory_bytes") as refused:
        runner.run(RunRequest(wasm))
    assert refused.value.status == 422
    result = run(runner, "echo", args=["next"])   # compiled afresh, same ceiling
    assert (result.exit_code, result.stdout, result.cached) == (1, b"next\n", False)


def test_compile_over_its_deadline_is_killed_and_refused(make_runner: MakeRunner) -> None:
    # ~7 s in process; a generous memory ceiling so that the deadline is what stops it.
    runner = make_runner(compile_seconds=1.0, compile_memory_bytes=8 * 1024 ** 3)
    started = time.monotonic()
    with pytest.raises(Unprocessable, match="longer than 1 s.*compile_seconds"):
        runner.run(RunRequest(expensive_to_compile(1_000_000)))
    assert time.monotonic() - started < 3.0
    result = run(runner, "echo", args=["next"])
    assert (result.exit_code, result.stdout, result.cached) == (1, b"next\n", False)


def test_refused_compile_is_not_cached(make_runner: MakeRunner, tmp_path: Path) -> None:
    runner = make_runner(cache_dir=tmp_path / "cache", compile_memory_bytes=64 * 1024 * 1024)
    wasm = expensive_to_compile(400_000)
    for _ in range(2):
        with pytest.raises(Unprocessable):
            runner.run(RunRequest(wasm))
    assert list((tmp_path / "cache").iterdir()) == []


def test_compile_errors_name_the_cause(make_runner: MakeRunner) -> None:
    import wasmtime
    wasm = wasmtime.wat2wasm('(module (func (export "_start") (drop)))')
    with pytest.raises(BadRequest, match="not a valid wasm module: .*type mismatch"):
        make_runner().run(RunRequest(bytes(wasm)))


# --- the disk cache is bounded (issue 9, item 12) -----------------------------------------


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def _keys(cache_dir: Path) -> set[str]:
    return {path.stem for path in cache_dir.glob("*.cwasm")}


def test_disk_cache_trims_least_recently_used_to_its_size(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=250)
    for age, key in ((30, "a"), (20, "b")):
        cache.store(key, b"x" * 100)
        _age(cache.path(key), age)
    assert cache.load("a") == b"x" * 100           # a hit: "a" is now the most recent
    cache.store("c", b"x" * 100)                   # 300 > 250: the least recently used goes
    assert _keys(tmp_path) == {"a", "c"}
    cache.store("huge", b"x" * 251)                # larger than the whole cache: not kept
    assert _keys(tmp_path) == {"a", "c"}


def test_disk_cache_drops_entries_unused_for_its_age(tmp_path: Path) -> None:
    week = 7 * 24 * 3600
    cache = DiskCache(tmp_path, max_age_seconds=week)
    cache.store("old", b"x")
    cache.store("young", b"x")
    _age(cache.path("old"), week + 60)
    _age(cache.path("young"), week - 60)
    stale_temp = tmp_path / ".dead.writer.tmp"
    stale_temp.write_bytes(b"half")
    _age(stale_temp, 2 * 3600)
    DiskCache(tmp_path, max_age_seconds=week)      # trimmed when a cache opens ...
    assert _keys(tmp_path) == {"young"} and not stale_temp.exists()
    _age(cache.path("young"), week + 60)
    cache.store("new", b"x")                       # ... and on every insert
    assert _keys(tmp_path) == {"new"}


def test_runner_bounds_its_disk_cache_by_its_limits(make_runner: MakeRunner, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = make_runner(cache_dir=cache_dir)
    run(first, "hello")
    [hello] = cache_dir.glob("*.cwasm")
    run(first, "echo")
    [echo] = set(cache_dir.glob("*.cwasm")) - {hello}
    _age(hello, 3600)
    _age(echo, 30)
    largest = max(hello.stat().st_size, echo.stat().st_size)
    make_runner(cache_dir=cache_dir, max_cache_bytes=largest)   # by size, on start
    assert not hello.exists() and echo.exists()
    make_runner(cache_dir=cache_dir, max_cache_age_seconds=10.0)  # by age, on start
    assert not echo.exists()


# --- the new limits: defaults, validation, flags ------------------------------------------


def test_new_limits_defaults() -> None:
    limits = Limits()
    assert (limits.compile_seconds, limits.compile_memory_bytes) == (30.0, 1024 ** 3)
    assert (limits.max_cache_bytes, limits.max_cache_age_seconds) == (1024 ** 3, 7 * 24 * 3600.0)
    assert limits.max_table_elements == 1_000_000


@pytest.mark.parametrize("overrides, field_name", [
    ({"compile_seconds": 0}, "compile_seconds"),
    ({"compile_seconds": float("inf")}, "compile_seconds"),
    ({"compile_memory_bytes": 1024}, "compile_memory_bytes"),
    ({"compile_memory_bytes": 2.5e9}, "compile_memory_bytes"),
    ({"max_cache_age_seconds": float("nan")}, "max_cache_age_seconds"),
    ({"max_cache_bytes": -1}, "max_cache_bytes"),
    ({"max_table_elements": -1}, "max_table_elements"),
])
def test_new_limits_are_validated(overrides: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=f"{field_name} must"):
        Limits.from_overrides(overrides)


def test_new_limits_have_command_line_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_argument_group("enarx"), Limits, "limits")
    args = parser.parse_args(["--wasm-compile-deadline", "5", "--wasm-compile-memory", "536870912",
                              "--wasm-cache-size", "1000", "--wasm-cache-age", "60"])
    limits = from_mapping(Limits, from_arguments(Limits, "limits", args), "limits")
    assert (limits.compile_seconds, limits.compile_memory_bytes) == (5.0, 512 * 1024 * 1024)
    assert (limits.max_cache_bytes, limits.max_cache_age_seconds) == (1000, 60.0)
