"""The MesaTEE user registry: tokens hashed at rest, one 401 for every failure, a cache that forgets
a rotated or removed token at once (on every replica), and `teebus users` and `teebus up --demo` as a
person runs them (through `teebus.cli.main`, the command line's own parser)."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from bus import log
from bus.component import Incoming
from bus.errors import BadRequest, Conflict, NotFound, Unauthorized
from bus.records import Records
from bus.requester import Requester
from bus.server import free_port
from components.mesatee import subjects
from components.mesatee.auth import authenticate
from components.mesatee.config import MesateeConfig
from components.mesatee.user_store import BUCKET, UserRecord, hash_token, parse_user_id, verify_token
from components.mesatee.users import UNAUTHORIZED, UsersComponent, VerifiedTokens
from components.mesatee.users_cli import create_demo_users, main
from teebus.cli import main as teebus_main
from teebus.settings import REPO_ROOT
from teebus.testing import settings_for
from tests.conftest import eventually

_names = itertools.count()


def unique(prefix: str = "u") -> str:
    """A user name no other test (or earlier run on this bucket) uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}-{os.urandom(3).hex()}"


async def call(requester: Requester, operation: str, body: dict) -> dict:
    return (await requester.request(subjects.users(operation), body)).payload


def incoming(operation: str, body: dict) -> Incoming:
    """A request as a handler sees it: to ask one replica in particular."""
    return Incoming(subjects.users(operation), body, "application/json", {}, log.new_request_id())


@pytest.fixture
async def users(start_component):
    return await start_component(UsersComponent)


@pytest.fixture
async def requester(users, connect_as) -> Requester:
    """A requester as the MesaTEE components' role (what TDFS and TMS authenticate as)."""
    return Requester(await connect_as("mesatee"), timeout=10)


async def test_add_authenticate_rotate_remove(users, requester):
    name = unique()
    added = await call(requester, "add", {"user_id": name})
    assert set(added) == {"user_id", "user_token"} and added["user_id"] == name
    assert len(added["user_token"]) >= 32
    assert await authenticate(requester, name, added["user_token"]) == name

    rotated = await call(requester, "rotate", {"user_id": name})
    assert rotated["user_id"] == name and rotated["user_token"] != added["user_token"]
    with pytest.raises(Unauthorized, match=UNAUTHORIZED):   # at once: no wait, no retry
        await authenticate(requester, name, added["user_token"])
    assert await authenticate(requester, name, rotated["user_token"]) == name

    assert await call(requester, "remove", {"user_id": name}) == {"user_id": name}
    with pytest.raises(Unauthorized, match=UNAUTHORIZED):
        await authenticate(requester, name, rotated["user_token"])
    with pytest.raises(NotFound, match=f"no user {name}"):
        await call(requester, "remove", {"user_id": name})
    with pytest.raises(NotFound, match=f"no user {name}"):
        await call(requester, "rotate", {"user_id": name})


async def test_a_chosen_token_and_a_taken_name(users, requester):
    name = unique()
    assert await call(requester, "add", {"user_id": name, "token": "token1"}) == {"user_id": name, "user_token": "token1"}
    assert await authenticate(requester, name, "token1") == name
    with pytest.raises(Conflict, match=f"user {name} already exists"):
        await call(requester, "add", {"user_id": name})
    assert await authenticate(requester, name, "token1") == name   # the loser changed nothing


async def test_wrong_token_and_unknown_user_are_the_same_refusal(users, requester):
    name = unique()
    await call(requester, "add", {"user_id": name, "token": "right"})
    refusals = []
    for user_id, token in ((name, "wrong"), (unique("nobody"), "right"), (name, ""), ("not a name!", "right")):
        before = users.cold_verifies
        with pytest.raises(Unauthorized) as refused:
            await authenticate(requester, user_id, token)
        refusals.append((refused.value.status, refused.value.message, refused.value.details))
        if user_id != "not a name!" and token:   # a name that could exist costs a KDF run, found or not
            assert users.cold_verifies == before + 1
    # one status, one message, no details: nothing tells an unknown user from a wrong token
    assert all((status, message, dict(details)) == (401, UNAUTHORIZED, {}) for status, message, details in refusals)


@pytest.mark.parametrize("body, message", [
    ({"user_id": "alice", "user_token": 7}, "user_token must be a string, not a number"),
    ({"user_id": "alice", "user_token": None}, "user_token is missing"),
    ({"user_id": "alice"}, "user_token is missing"),
    ({"user_id": ["alice"], "user_token": "t"}, "user_id must be a string, not a list"),
    ({"user_id": "alice", "user_token": "t", "extra": 1}, "takes no field 'extra'"),
])
async def test_credentials_that_are_not_strings_are_400(users, requester, body, message):
    with pytest.raises(BadRequest, match=message):
        await call(requester, "authenticate", body)
    if "extra" not in body:   # the helper other components use refuses them before asking
        with pytest.raises(BadRequest, match=message):
            await authenticate(Requester(requester.client, timeout=0.01), body.get("user_id"), body.get("user_token"))


@pytest.mark.parametrize("operation, body, message", [
    ("add", {"user_id": "has space"}, "not a valid user name: use 1 to 64 characters of letters"),
    ("add", {"user_id": "x" * 65}, "not a valid user name"),
    ("add", {"user_id": "-dash"}, "starting with a letter or digit"),
    ("add", {"user_id": "a.b"}, "'_' and '-'"),
    ("add", {}, "add needs user_id"),
    ("add", {"user_id": "alice", "user_token": "t"}, "add takes no field 'user_token'"),
    ("add", {"user_id": "alice", "token": ""}, "token must be a non-empty string"),
    ("add", {"user_id": "alice", "token": "t" * 257}, "longer than 256"),
    ("remove", {"user_id": 3}, "user_id must be a string"),
    ("rotate", {"user_id": "a/b"}, "not a valid user name"),
    ("list", {"user_id": "alice"}, "list takes no field 'user_id'"),
])
async def test_bad_requests_say_what_is_wrong(users, requester, operation, body, message):
    with pytest.raises(BadRequest, match=message):
        await call(requester, operation, body)


async def test_concurrent_adds_of_one_name_one_wins(users, requester):
    name = unique()
    results = await asyncio.gather(*(call(requester, "add", {"user_id": name}) for _ in range(8)),
                                   return_exceptions=True)
    won = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if isinstance(r, Conflict)]
    assert len(won) == 1 and len(lost) == 7
    assert await authenticate(requester, name, won[0]["user_token"]) == name


async def test_the_bucket_holds_salted_hashes_never_tokens(users, requester, connect_as):
    first, second = unique(), unique()
    for name in (first, second):
        await call(requester, "add", {"user_id": name, "token": "the-same-token"})
    records = await Records.open(await connect_as("admin"), BUCKET, kind=UserRecord)
    stored = [(await records.get(name)).value for name in (first, second)]
    assert stored[0].token_hash != stored[1].token_hash               # salted
    for record in stored:
        assert record.token_hash.startswith("scrypt$")
        assert "the-same-token" not in orjson.dumps(record.to_dict()).decode()
        assert verify_token("the-same-token", record.token_hash)
        assert not verify_token("the-same-tokem", record.token_hash)


async def test_list_shows_names_and_dates_never_hashes(users, requester):
    name = unique()
    await call(requester, "add", {"user_id": name})
    await call(requester, "rotate", {"user_id": name})
    listed = (await call(requester, "list", {}))["users"]
    assert listed == sorted(listed, key=lambda user: user["user_id"])
    mine = [user for user in listed if user["user_id"] == name]
    assert len(mine) == 1 and set(mine[0]) == {"user_id", "created", "rotated"}
    assert mine[0]["rotated"] >= mine[0]["created"]
    assert "scrypt" not in orjson.dumps(listed).decode()


async def test_a_warm_cache_skips_the_kdf_and_concurrent_cold_checks_share_one(users, requester):
    name = unique()
    token = (await call(requester, "add", {"user_id": name}))["user_token"]
    before = users.cold_verifies
    await asyncio.gather(*(authenticate(requester, name, token) for _ in range(20)))
    assert users.cold_verifies == before + 1      # one KDF run for twenty requests in flight together
    for _ in range(20):
        await authenticate(requester, name, token)
    assert users.cold_verifies == before + 1      # then answered from memory


async def test_a_request_after_a_rotation_never_shares_a_check_begun_before_it(users):
    """Concurrent checks of one token share a KDF run, but not across a change of the record."""
    name = unique()
    old = (await users.add(incoming("add", {"user_id": name})))["user_token"]
    check = incoming("authenticate", {"user_id": name, "user_token": old})
    entered, release = asyncio.Event(), asyncio.Event()
    real_verify = users.hasher.verify

    async def held(token: str, token_hash: str) -> bool:   # the KDF run, kept in flight
        entered.set()
        result = await real_verify(token, token_hash)
        await release.wait()
        return result

    users.hasher.verify = held
    begun = asyncio.create_task(users.authenticate(check))   # read the record before the rotation
    await asyncio.wait_for(entered.wait(), 5)
    await users.rotate(incoming("rotate", {"user_id": name}))
    after = asyncio.create_task(users.authenticate(check))
    await asyncio.sleep(0.05)
    release.set()
    assert await begun == {"user_id": name}                 # it overlapped the rotation: either answer
    with pytest.raises(Unauthorized):
        await after                                          # it came after: refused
    with pytest.raises(Unauthorized):
        await users.authenticate(check)


async def test_a_rotation_through_one_replica_reaches_the_other(start_component):
    first = await start_component(UsersComponent)
    second = await start_component(UsersComponent)
    name = unique()
    old = (await first.add(incoming("add", {"user_id": name})))["user_token"]
    check = {"user_id": name, "user_token": old}
    await eventually(lambda: second.store.mirrored(name) is not None)
    for replica in (first, second):   # both have verified the token and answer it from memory
        assert await replica.authenticate(incoming("authenticate", check)) == {"user_id": name}
        before = replica.cold_verifies
        assert await replica.authenticate(incoming("authenticate", check)) == {"user_id": name}
        assert replica.cold_verifies == before

    new = (await first.rotate(incoming("rotate", {"user_id": name})))["user_token"]
    with pytest.raises(Unauthorized):
        await first.authenticate(incoming("authenticate", check))

    async def second_refuses_the_old_token() -> bool:
        try:
            await second.authenticate(incoming("authenticate", check))
            return False
        except Unauthorized:
            return True

    await eventually(second_refuses_the_old_token, timeout=2)
    fresh = {"user_id": name, "user_token": new}
    assert await second.authenticate(incoming("authenticate", fresh)) == {"user_id": name}

    await second.remove(incoming("remove", {"user_id": name}))
    with pytest.raises(Unauthorized):
        await second.authenticate(incoming("authenticate", fresh))

    async def first_refuses_too() -> bool:
        try:
            await first.authenticate(incoming("authenticate", fresh))
            return False
        except Unauthorized:
            return True

    await eventually(first_refuses_too, timeout=2)


async def test_a_user_added_through_another_replica_authenticates_at_once(start_component):
    first = await start_component(UsersComponent)
    second = await start_component(UsersComponent)
    name = unique()
    token = (await first.add(incoming("add", {"user_id": name})))["user_token"]
    # no waiting for the second replica's mirror: a cold check reads the bucket
    assert await second.authenticate(incoming("authenticate", {"user_id": name, "user_token": token})) == \
        {"user_id": name}


async def test_events_name_the_user_and_never_the_token(users, requester, connect_as):
    observer = await connect_as("observer")
    seen: list[bytes] = []

    async def keep(msg) -> None:
        seen.append(msg.data)

    sub = await observer.subscribe("events.mesatee.user.*", cb=keep)
    await observer.flush()
    name = unique()
    added = await call(requester, "add", {"user_id": name})
    rotated = await call(requester, "rotate", {"user_id": name})
    await call(requester, "remove", {"user_id": name})
    await eventually(lambda: sum(orjson.loads(d)["user_id"] == name for d in seen) == 3)
    await sub.unsubscribe()
    mine = [orjson.loads(d) for d in seen if orjson.loads(d)["user_id"] == name]
    assert [event["what"] for event in mine] == ["added", "rotated", "removed"]
    text = orjson.dumps(mine).decode()
    assert added["user_token"] not in text and rotated["user_token"] not in text and "scrypt" not in text


def cli_args(operation: str, name: str | None = None, token: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(users_operation=operation, name=name, token=token)


async def test_the_cli_prints_a_token_once_and_manages_users(users, requester, bus, catalog, capsys):
    settings = settings_for(bus, catalog)
    name = unique("cli")
    assert await main(cli_args("add", name), settings) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n" and "shown only now" in err and token not in err
    assert await authenticate(requester, name, token) == name

    assert await main(cli_args("list"), settings) == 0
    out, _ = capsys.readouterr()
    assert name in out and token not in out and "scrypt" not in out

    assert await main(cli_args("rotate", name), settings) == 0
    out, err = capsys.readouterr()
    new = out.strip()
    assert new != token and out == new + "\n" and "shown only now" in err
    with pytest.raises(Unauthorized):
        await authenticate(requester, name, token)

    assert await main(cli_args("add", name), settings) == 1
    _, err = capsys.readouterr()
    assert f"user {name} already exists" in err

    assert await main(cli_args("remove", name), settings) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"user {name} removed" in err
    assert await main(cli_args("remove", name), settings) == 1
    assert f"no user {name}" in capsys.readouterr().err

    chosen = unique("cli")
    assert await main(cli_args("add", chosen, token="my-own-token"), settings) == 0
    out, err = capsys.readouterr()
    assert out == "" and "my-own-token" not in err   # a token the operator chose is not echoed
    assert await authenticate(requester, chosen, "my-own-token") == chosen


async def test_demo_users_are_created_once(users, connect_as):
    admin = await connect_as("admin")
    await create_demo_users(admin)
    await create_demo_users(admin)   # idempotent: no error, nothing changed
    requester = Requester(await connect_as("mesatee"))
    assert await authenticate(requester, "user1", "token1") == "user1"
    assert await authenticate(requester, "user2", "token2") == "user2"
    listed = [user["user_id"] for user in (await call(requester, "list", {}))["users"]]
    assert listed.count("user1") == 1 and listed.count("user2") == 1


def test_names_tokens_and_settings_are_checked():
    assert parse_user_id("user1") == "user1" and parse_user_id("A_b-9") == "A_b-9"
    for bad in ("", "a b", "a.b", "_a", "é", "x" * 65, "a\n"):
        with pytest.raises(BadRequest):
            parse_user_id(bad)
    assert hash_token("t") != hash_token("t")
    with pytest.raises(ValueError, match="users_cache_entries must be at least 1"):
        MesateeConfig(users_cache_entries=0)
    assert log.is_secret("user_token") and log.is_secret("token") and log.is_secret("token_hash")


def test_the_verified_tokens_are_bounded_and_keyed():
    cache = VerifiedTokens(max_entries=2)
    digests = [cache.digest(f"t{i}") for i in range(3)]
    assert cache.digest("t0") == digests[0] and VerifiedTokens(2).digest("t0") != digests[0]  # a key per process
    for i, digest in enumerate(digests):
        cache.put("u", digest, i)
    assert len(cache) == 2 and not cache.holds("u", digests[0], 0)
    assert cache.holds("u", digests[2], 2) and not cache.holds("u", digests[2], 3)   # another revision


def test_a_new_token_never_looks_like_an_option():
    from components.mesatee.user_store import new_token
    tokens = [new_token() for _ in range(3000)]     # about 47 would begin with "-" by chance
    assert not [t for t in tokens if t.startswith("-")] and len(set(tokens)) == 3000


# -- `teebus users` and `teebus up [--demo]` through the command line ------------------------------------

async def teebus(capsys, *argv: str) -> tuple[int, str, str]:
    """`teebus ARGV` through teebus.cli.main (in a thread: it runs an event loop of its own): the exit
    status, stdout and stderr."""
    capsys.readouterr()
    status = await asyncio.to_thread(teebus_main, list(argv))   # conftest puts structlog back after
    out, err = capsys.readouterr()
    return status, out, err


def listed_users(out: str) -> list[str]:
    """The user names of `teebus users list`'s table (a header line, then a user per line)."""
    lines = out.splitlines()
    if not lines:
        return []
    assert lines[0].split() == ["USER", "CREATED", "ROTATED"], out
    return [line.split()[0] for line in lines[1:]]


async def test_teebus_users_add_and_list_through_the_command_line(users, requester, bus, capsys, monkeypatch):
    where = ("--data-dir", str(bus.data_dir), "--nats", bus.url, "--log-level", "warning")
    name = unique("cmd")
    status, out, err = await teebus(capsys, "users", "add", name, *where)
    token = out.strip()
    assert status == 0 and out == token + "\n" and "shown only now" in err and token not in err, err
    assert await authenticate(requester, name, token) == name

    chosen = unique("cmd")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-token-from-stdin\n"))
    status, out, err = await teebus(capsys, "users", "add", chosen, "--token", "-", *where)
    assert (status, out) == (0, "") and "a-token-from-stdin" not in err, err
    assert await authenticate(requester, chosen, "a-token-from-stdin") == chosen

    status, out, _ = await teebus(capsys, "users", "list", *where)
    assert status == 0 and {name, chosen} <= set(listed_users(out))
    assert token not in out and "a-token-from-stdin" not in out and "scrypt" not in out

    status, out, err = await teebus(capsys, "users", "add", name, *where)
    assert (status, out) == (1, "") and f"user {name} already exists" in err


class Up:
    """`teebus up` as a person starts it (`python -m teebus.cli up`), on a data directory of its own with
    every site and the nats-server on free ports; stderr kept in a file."""

    def __init__(self, data_dir: Path, catalog, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.nats_url = f"nats://127.0.0.1:{free_port()}"
        self.ports = {site: free_port() for site in catalog.ports()}
        self.process: asyncio.subprocess.Process | None = None
        self.output = ""

    async def start(self, *options: str, timeout: float = 60) -> None:
        argv = ["up", "--data-dir", str(self.data_dir), "--nats-port", self.nats_url.rsplit(":", 1)[1],
                "--log-level", "warning", *options]
        for site, port in self.ports.items():
            argv += ["--port", f"{site}={port}"]
        with open(self.log, "ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "teebus.cli", *argv, cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            async with asyncio.timeout(timeout):
                while "Ctrl-C stops everything." not in self.output:
                    line = await self.process.stdout.readline()
                    if not line:      # it exited
                        break
                    self.output += line.decode()
        except TimeoutError:
            pass
        if "Ctrl-C stops everything." not in self.output:
            await self.stop()
            raise AssertionError(f"teebus up did not come up: rc={self.process.returncode} out={self.output!r} "
                                 f"err={self.log.read_text()!r}")

    def where(self) -> tuple[str, ...]:
        return ("--data-dir", str(self.data_dir), "--nats", self.nats_url, "--log-level", "warning")

    async def tms_list(self, user: str, token: str) -> int:
        """The status a TMS List of (user, token) gets on this deployment's mesatee-tms site."""
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{self.ports['mesatee-tms']}/",
                                    data=orjson.dumps({"type": "List", "user_id": user, "user_token": token})) as reply:
                return reply.status

    async def stop(self) -> int:
        """SIGTERM, as Ctrl-C would; the exit status (SIGKILL after 20 s)."""
        process = self.process
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode


async def test_teebus_up_demo_creates_the_seeds_users(tmp_path, catalog, capsys):
    up = Up(tmp_path / "data", catalog, tmp_path / "up.stderr")
    await up.start("--demo")
    try:
        status, out, _ = await teebus(capsys, "users", "list", *up.where())
        assert status == 0 and listed_users(out) == ["user1", "user2"], out
        assert await up.tms_list("user1", "token1") == 200     # the seed's examples run verbatim
        assert await up.tms_list("user2", "token2") == 200
        assert await up.tms_list("user1", "token2") == 401
    finally:
        code = await up.stop()
    assert code == 0, up.log.read_text()
    assert "demo data created" in up.log.read_text()


async def test_teebus_up_without_demo_has_no_user1(tmp_path, catalog, capsys):
    up = Up(tmp_path / "data", catalog, tmp_path / "up.stderr")
    await up.start()
    try:
        status, out, err = await teebus(capsys, "users", "list", *up.where())
        assert status == 0 and listed_users(out) == [] and "no users yet" in err, (out, err)
        assert await up.tms_list("user1", "token1") == 401
        status, out, _ = await teebus(capsys, "users", "add", "alice", *up.where())
        assert status == 0 and await up.tms_list("alice", out.strip()) == 200
        status, out, _ = await teebus(capsys, "users", "list", *up.where())
        assert listed_users(out) == ["alice"]
    finally:
        code = await up.stop()
    assert code == 0, up.log.read_text()
