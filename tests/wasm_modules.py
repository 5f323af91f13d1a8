"""Hand-written WASI preview1 workloads for the Enarx wasm runner tests.

Each is tiny WAT compiled with `wasmtime.wat2wasm`, so the tests need no toolchain and every
behaviour (exit codes, stdin, memory bombs, output floods) is exactly what the source says.
"""

from __future__ import annotations

from functools import lru_cache

import wasmtime

FD_WRITE = ('(import "wasi_snapshot_preview1" "fd_write" '
             '(func $fd_write (param i32 i32 i32 i32) (result i32)))')

ECHO = """
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0: iovec, 8: nread/nwritten, 16/20: args sizes, 24/28: environ sizes
  (data (i32.const 64) "\\n")
  (data (i32.const 80) "GREETING=")
  (data (i32.const 96) "err-line\\n")
  (global $heap (mut i32) (i32.const 4096))

  ;; 8-aligned bump allocator that grows memory when needed
  (func $alloc (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (br_if $done (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
        (br $more))))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $end
      (loop $next
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func $is_greeting (param $p i32) (result i32)
    (local $i i32)
    (block $no
      (loop $next
        (if (i32.eq (local.get $i) (i32.const 9)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                           (i32.load8_u (i32.add (i32.const 80) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $line (param $p i32) (param $len i32)
    (call $write (i32.const 1) (local.get $p) (local.get $len))
    (call $write (i32.const 1) (i32.const 64) (i32.const 1)))

  (func (export "_start")
    (local $argc i32) (local $argv i32) (local $envc i32) (local $envp i32)
    (local $i i32) (local $p i32) (local $buf i32) (local $n i32)
    ;; argv[1..], one per line
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $argc (i32.load (i32.const 16)))
    (local.set $argv (call $alloc (i32.mul (local.get $argc) (i32.const 4))))
    (drop (call $args_get (local.get $argv) (call $alloc (i32.load (i32.const 20)))))
    (local.set $i (i32.const 1))
    (block $args_done
      (loop $args
        (br_if $args_done (i32.ge_u (local.get $i) (local.get $argc)))
        (local.set $p (i32.load (i32.add (local.get $argv) (i32.mul (local.get $i) (i32.const 4)))))
        (call $line (local.get $p) (call $strlen (local.get $p)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $args)))
    ;; $GREETING, if set
    (drop (call $environ_sizes_get (i32.const 24) (i32.const 28)))
    (local.set $envc (i32.load (i32.const 24)))
    (local.set $envp (call $alloc (i32.mul (local.get $envc) (i32.const 4))))
    (drop (call $environ_get (local.get $envp) (call $alloc (i32.load (i32.const 28)))))
    (local.set $i (i32.const 0))
    (block $env_done
      (loop $env
        (br_if $env_done (i32.ge_u (local.get $i) (local.get $envc)))
        (local.set $p (i32.load (i32.add (local.get $envp) (i32.mul (local.get $i) (i32.const 4)))))
        (if (call $is_greeting (local.get $p))
          (then (call $line (i32.add (local.get $p) (i32.const 9))
                            (i32.sub (call $strlen (local.get $p)) (i32.const 9)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $env)))
    ;; stdin -> stdout
    (local.set $buf (call $alloc (i32.const 65536)))
    (block $eof
      (loop $copy
        (i32.store (i32.const 0) (local.get $buf))
        (i32.store (i32.const 4) (i32.const 65536))
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (call $write (i32.const 1) (local.get $buf) (local.get $n))
        (br $copy)))
    (call $write (i32.const 2) (i32.const 96) (i32.const 9))
    (call $proc_exit (i32.sub (local.get $argc) (i32.const 1)))))
"""

LOOP = """
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
"""

MEMBOMB = """
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
      (br $more))))
"""

TRAP = """
(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))
"""

CHATTY = f"""
(module
  {FD_WRITE}
  (memory (export "memory") 2)
  (func (export "_start")
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
"""

HELLO = f"""
(module
  {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""



def _sleeper(nanoseconds: int) -> str:
    """Sleeps via WASI poll_oneoff (a relative monotonic clock subscription), then says "woke"."""
    return f"""
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 600) "woke\\n")
  (func (export "_start")
    ;; subscription at 0: userdata 7, tag 0 (clock), clock id 1 (monotonic), relative timeout
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const {nanoseconds}))
    (if (call $poll (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 512)) (then unreachable))
    ;; exactly one clock event for userdata 7
    (if (i32.ne (i32.load (i32.const 512)) (i32.const 1)) (then unreachable))
    (if (i64.ne (i64.load (i32.const 256)) (i64.const 7)) (then unreachable))
    (i32.store (i32.const 0) (i32.const 600))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


NOSTART = """
(module
  (memory (export "memory") 1)
  (func (export "main")))
"""

BIGMEM = """
(module
  (memory (export "memory") 512)
  (func (export "_start")))
"""

SOURCES = {"echo": ECHO, "loop": LOOP, "membomb": MEMBOMB, "trap": TRAP, "chatty": CHATTY,
           "hello": HELLO, "nostart": NOSTART, "bigmem": BIGMEM,
           "nap": _sleeper(50_000_000), "sleepy": _sleeper(60_000_000_000)}


@lru_cache(maxsize=None)
def wat(name: str) -> bytes:
    """The compiled wasm bytes of the named workload (see `SOURCES`)."""
    return bytes(wasmtime.wat2wasm(SOURCES[name]))


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def padded(wasm: bytes, total: int, name: bytes = b"padding") -> bytes:
    """`wasm` plus one custom section so the module is exactly `total` bytes and still valid.

    Custom sections are ignored by the engine, so this makes big uploads without big programs.
    """
    header = leb128(len(name)) + name
    room = total - len(wasm) - 1  # minus the section id byte
    for size_len in range(1, 6):
        payload = room - size_len - len(header)
        if payload >= 0 and len(leb128(len(header) + payload)) == size_len:
            section = b"\x00" + leb128(len(header) + payload) + header + b"\x00" * payload
            return wasm + section
    raise ValueError(f"cannot pad a {len(wasm)}-byte module to {total} bytes")


# --- workloads that test the bounds on the whole workload and on compiling (issue 9, 10-11) ---

TWO_TABLES = """
(module
  (table 1 funcref)
  (table 1 funcref)
  (memory (export "memory") 1)
  (func (export "_start")))
"""

BIG_TABLE = """
(module
  (table 5000 funcref)
  (memory (export "memory") 1)
  (func (export "_start")))
"""

# Grows its table by 5000 elements; exits 1 if that was refused, 0 if it was granted.
TABLE_GROWER = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (table $t 1 funcref)
  (memory (export "memory") 1)
  (func (export "_start")
    (call $proc_exit (i32.eq (table.grow $t (ref.null func) (i32.const 5000)) (i32.const -1)))))
"""

MEMORY64 = """
(module
  (memory (export "memory") i64 1)
  (func (export "_start")))
"""

SHARED_MEMORY = """
(module
  (memory (export "memory") 1 2 shared)
  (func (export "_start")))
"""

SOURCES.update({"two_tables": TWO_TABLES, "big_table": BIG_TABLE, "table_grower": TABLE_GROWER,
                "memory64": MEMORY64, "shared_memory": SHARED_MEMORY})


def many_memories(count: int, pages: int = 1, touch: bool = False) -> bytes:
    """`count` memories of `pages` 64 KiB pages each, all filled by `_start` when `touch`."""
    memories = " ".join(f"(memory $m{i} {pages})" for i in range(count))
    fills = " ".join(f"(memory.fill $m{i} (i32.const 0) (i32.const 7) (i32.const {pages * 65536}))"
                     for i in range(count)) if touch else ""
    return bytes(wasmtime.wat2wasm(f'(module {memories} (export "memory" (memory $m0)) '
                                   f'(func (export "_start") {fills}))'))


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + leb128(len(payload)) + payload


def expensive_to_compile(body_bytes: int, locals_count: int = 100) -> bytes:
    """One `_start` made of ~`body_bytes` of tiny blocks that each branch out and bump a local.

    Written as binary (WAT of this size would be slow to assemble). Cranelift's cost grows faster
    than the size here: 100 KB compiles in ~0.4 s to ~120 MB, 400 KB in ~2.4 s to ~375 MB,
    1 MB in ~7 s to ~900 MB (wasmtime 50, in process).
    """
    body = bytearray()
    i = 0
    while len(body) < body_bytes:
        local = leb128(i % locals_count)
        # block; local.get; br_if 0; local.get; i32.const 1; i32.add; local.set; end
        body += b"\x02\x40\x20" + local + b"\x0d\x00\x20" + local + b"\x41\x01\x6a\x21" + local + b"\x0b"
        i += 1
    code = b"\x01" + leb128(locals_count) + b"\x7f" + bytes(body) + b"\x0b"
    return (b"\0asm\x01\x00\x00\x00"
            + _section(1, b"\x01\x60\x00\x00")                          # type 0: [] -> []
            + _section(3, b"\x01\x00")                                  # one function of type 0
            + _section(5, b"\x01\x00\x01")                              # one memory, 1 page
            + _section(7, b"\x01" + leb128(6) + b"_start" + b"\x00\x00")  # export func 0
            + _section(10, b"\x01" + leb128(len(code)) + code))
