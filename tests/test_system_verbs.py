"""Each system's own verbs (`teebus <system> ...`), run as a person runs them, against a running node."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from tests.conftest import internal_token
from tests.wasm_modules import wat

REPO = Path(__file__).resolve().parent.parent
FAST = {"enarx": {"watch_interval": 0.2, "stop_keeps_on_exit": True}}


async def teebus(*args: str, timeout: float = 60) -> tuple[int, bytes, str]:
    """`teebus ARGS` in a fresh interpreter: exit status, stdout bytes, stderr text."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "teebus.cli", *args, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, stdout, stderr.decode()


async def test_mesatee_kms_verbs_create_get_and_delete(start_node, data_dir):
    node = await start_node(["mesatee.kms", "http.mesatee"])
    common = ["--data-dir", str(data_dir), "--url", node.http.bound["mesatee-kms"] + "/"]
    status, out, _ = await teebus("mesatee", "kms", "create", *common)
    created = orjson.loads(out)
    assert status == 0 and created["type"] == "Create"
    status, out, _ = await teebus("mesatee", "kms", "get", created["key_id"], *common)
    assert status == 0 and orjson.loads(out) == {"type": "Get", "config": created["config"]}
    assert (await teebus("mesatee", "kms", "delete", created["key_id"], *common))[0] == 0
    status, out, err = await teebus("mesatee", "kms", "get", created["key_id"], *common)
    assert status == 1 and orjson.loads(out)["status"] == 404 and "404" in err
    assert internal_token(data_dir)  # the verbs read the same credential the site demands


async def test_enarx_run_takes_a_module_through_a_keep_and_returns_its_exit_status(start_node, data_dir, tmp_path):
    node = await start_node(["enarx.keepmgr", "http.enarx"], document=FAST)
    url = node.http.bound["enarx-keepmgr"]
    (tmp_path / "echo.wasm").write_bytes(wat("echo"))
    (tmp_path / "stdin.txt").write_bytes(b"from a file\n")
    status, out, err = await teebus("enarx", "run", str(tmp_path / "echo.wasm"), "--arg", "one", "--arg", "two",
                                    "--env", "GREETING=hi", "--stdin", str(tmp_path / "stdin.txt"), "--url", url,
                                    "--data-dir", str(data_dir))
    assert (status, out) == (2, b"one\ntwo\nhi\nfrom a file\n"), err   # echo exits with its argument count
    status, out, _ = await teebus("enarx", "keeps", "--url", url, "--data-dir", str(data_dir))
    assert status == 0 and out.decode().split()[-1] == "Shutdown"       # `run` shut its keep down
    status, _, err = await teebus("enarx", "run", str(tmp_path / "echo.wasm"), "--env", "NO-EQUALS",
                                  "--url", url, "--data-dir", str(data_dir))
    assert status == 1 and "--env takes NAME=VALUE" in err
