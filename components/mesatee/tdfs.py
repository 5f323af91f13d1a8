"""The MesaTEE Trusted DFS: metadata and keys of users' encrypted files; the bytes live on disk.

A client asks Create with its plaintext's sha256 and size and gets a file id, an `access_path` and
an AES-GCM key config (made by the KMS, over the bus); it writes `ciphertext || tag` there (on this
machine, or with `PUT /files/<id>` through the HTTP adapter, which asks `access` where to). Records
live in the KV bucket `mesatee_tdfs_files`, one per file id, written with compare-and-set; keys
never rest here, only their `key_id`. The bytes are in `<data-dir>/mesatee/files` (file_store.py):
replicas of this component must share that directory.

Who sees what (`allow_policy`): 0 the owner, 1 the owner and `collaborator_list`, 2 everyone. A
file a user may not see is answered exactly as one that does not exist (404); what only the owner
may do (Delete, upload) is a 403 to the others who can see it.

Failure ordering, so nothing is lost or left half-done:
- Create: the KMS key first, then the record (`create`: fails if the id exists); if the record is
  not written, the key is deleted again. A key without a record can only outlive a crash between
  the two (the bus then lost the reply too, and the client retries with a new Create).
- Delete: the record is first marked `deleting` (Get, List and access stop seeing it at once), then
  the bytes go, then the key, and the record last: as long as any part remains, the record that
  names it remains, so a retried Delete (or the periodic sweep, for one nobody retries) finishes the
  job. Removing the record first would strand the key and the bytes with nothing pointing at them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import Conflict, Forbidden, Internal, NotFound
from bus.records import MAX_CAS_ATTEMPTS, Record
from components.mesatee import file_store, subjects
from components.mesatee import tdfs_messages as messages
from components.mesatee.auth import authenticate
from components.mesatee.config import MesateeConfig

BUCKET = "mesatee_tdfs_files"
MAX_RECORD_BYTES = 64 * 1024     # a record with 64 collaborators of the longest ids still fits


@dataclass(frozen=True)
class FileRecord:
    """A file as the bucket holds it (its key is the file id)."""

    user_id: str                          # the owner
    file_name: str
    sha256: str
    file_size: int
    key_id: str
    allow_policy: int = messages.OWNER_ONLY
    collaborator_list: tuple[str, ...] = ()
    task_id: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    deleting_since: float | None = None  # set by Delete before anything is removed

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["collaborator_list"] = list(self.collaborator_list)
        return value

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "FileRecord":
        return cls(**{**value, "collaborator_list": tuple(value.get("collaborator_list", ()))})

    def visible_to(self, user_id: str) -> bool:
        """May `user_id` read it (Get, download)?"""
        if self.deleting_since is not None:
            return False
        return messages.may_read(user_id, self.user_id, self.allow_policy, self.collaborator_list)

    def listed_for(self, user_id: str) -> bool:
        """Is it in `user_id`'s List: their own, or one that names them and lets them read it."""
        if self.deleting_since is not None:
            return False
        return user_id == self.user_id or (self.allow_policy != messages.OWNER_ONLY
                                           and user_id in self.collaborator_list)

    def public(self, access_path: str) -> dict[str, Any]:
        """The FileInfo fields every reply shares."""
        return {"user_id": self.user_id, "file_name": self.file_name, "sha256": self.sha256,
                "file_size": self.file_size, "access_path": access_path, "task_id": self.task_id,
                "collaborator_list": list(self.collaborator_list)}


class TdfsComponent(Component):
    system = subjects.SYSTEM
    name = "tdfs"
    description = "MesaTEE Trusted DFS: encrypted files' metadata and keys"
    config: MesateeConfig

    async def setup(self) -> None:
        self.directory = file_store.open_store(self.context.data_dir)
        self.files = await self.open_records(BUCKET, kind=FileRecord, description="MesaTEE TDFS file metadata",
                                             max_value_size=MAX_RECORD_BYTES)
        # List and the limits read the mirror; room beyond the cap for what replicas add at once
        await self.files.mirror(limit=2 * self.config.tdfs_max_files)
        self._creating: dict[str, int] = {}   # creates in flight on this replica, per owner
        self.every(self.config.tdfs_sweep_seconds, self.sweep, "tdfs sweep")

    async def teardown(self) -> None:
        await self.files.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("create", subjects.tdfs("Create"), self.create),
                Endpoint("get", subjects.tdfs("Get"), self.get),
                Endpoint("list", subjects.tdfs("List"), self.list_files),
                Endpoint("delete", subjects.tdfs("Delete"), self.delete),
                Endpoint("access", subjects.TDFS_ACCESS, self.access),
                Endpoint("internal-create", subjects.tdfs_internal("Create"), self.create_internal),
                Endpoint("internal-get", subjects.tdfs_internal("Get"), self.get_internal)]

    # -- external (5065) --------------------------------------------------------------------------------

    async def create(self, incoming: Incoming) -> dict:
        request = messages.parse_request(incoming.payload, expected="Create")
        owner = await authenticate(self.requester, request.user_id, request.user_token)
        return await self._create(owner, request)     # allow_policy 0, no collaborators

    async def get(self, incoming: Incoming) -> dict:
        request = messages.parse_request(incoming.payload, expected="Get")
        user = await authenticate(self.requester, request.user_id, request.user_token)
        record = await self._visible(request.file_id, user)
        try:
            config = (await self.requester.request(subjects.kms("Get"), {"type": "Get", "key_id": record.value.key_id})).payload
        except NotFound:   # deleted between our read and the KMS's: the file is going
            raise _no_file(request.file_id) from None
        info = messages.file_info(record.value.public(self._path(record.key)), key_config=config["config"])
        return messages.info_response("Get", info)

    async def list_files(self, incoming: Incoming) -> dict:
        """The user's own files, then (newest first, at most `tdfs_max_files_per_user`) those whose
        collaborator_list names them under policy 1 or 2. Files of others open to everyone are not
        listed: the original listed a user's own files, and a list of every public file would grow
        with all users' files; their ids reach a reader through the task that made them."""
        request = messages.parse_request(incoming.payload, expected="List")
        user = await authenticate(self.requester, request.user_id, request.user_token)
        own, shared = [], []
        for record in self.files.mirrored():
            if record.value.listed_for(user):
                (own if record.value.user_id == user else shared).append(record)
        own.sort(key=_age)
        shared.sort(key=_age, reverse=True)
        listed = own + shared[:self.config.tdfs_max_files_per_user]
        return messages.list_response([record.key for record in listed])

    async def delete(self, incoming: Incoming) -> dict:
        request = messages.parse_request(incoming.payload, expected="Delete")
        user = await authenticate(self.requester, request.user_id, request.user_token)
        record = await self._find(request.file_id)
        owner = record.value.user_id
        if record.value.deleting_since is None and not record.value.visible_to(user):
            raise _no_file(request.file_id)
        if owner != user:
            if record.value.deleting_since is not None:
                raise _no_file(request.file_id)
            raise Forbidden(f"only the owner of file {request.file_id} may delete it")
        config = await self._delete(record)
        if config is None:
            raise NotFound(f"file {request.file_id} was already being deleted; its deletion is now complete")
        info = messages.file_info(record.value.public(self._path(record.key)), key_config=config)
        return messages.info_response("Delete", info)

    async def access(self, incoming: Incoming) -> dict:
        """For the HTTP adapter's upload (`write`: the owner only) and download (`read`: as Get):
        where the bytes are and exactly how many there are (file_size + 16)."""
        request = messages.parse_access(incoming.payload)
        user = await authenticate(self.requester, request.user_id, request.user_token)
        record = await self._visible(request.file_id, user, fresh=request.mode == messages.WRITE)
        if request.mode == messages.WRITE and record.value.user_id != user:
            raise Forbidden(f"only the owner of file {request.file_id} may upload its content")
        return messages.access_response(self._path(record.key), messages.stored_size(record.value.file_size))

    # -- internal (5066) --------------------------------------------------------------------------------

    async def create_internal(self, incoming: Incoming) -> dict:
        """A task's output for `user_id` (no token: the internal credential vouched for the caller)."""
        request = messages.parse_internal_request(incoming.payload, expected="Create")
        return await self._create(request.user_id, request)

    async def get_internal(self, incoming: Incoming) -> dict:
        request = messages.parse_internal_request(incoming.payload, expected="Get")
        record = await self._find(request.file_id, lookup=True)
        if record.value.deleting_since is not None:
            raise _no_file(request.file_id)
        info = messages.file_info(record.value.public(self._path(record.key)),
                                  allow_policy=record.value.allow_policy, key_id=record.value.key_id)
        return messages.info_response("Get", info)

    # -- the rules --------------------------------------------------------------------------------------

    async def _create(self, owner: str, request: messages.TdfsRequest) -> dict:
        self._reserve(owner)
        try:
            created = (await self.requester.request(subjects.kms("Create"), {"type": "Create"})).payload
            key_id = created["key_id"]
            record = FileRecord(owner, request.file_name, request.sha256, request.file_size, key_id,
                                request.allow_policy, request.collaborator_list, request.task_id)
            file_id = str(uuid.uuid4())
            try:
                await self.files.create(file_id, record)
            except BaseException as exc:
                await asyncio.shield(self._delete_key(key_id, "its file record was not written"))
                if isinstance(exc, Conflict):   # a UUIDv4 collision: never overwrite another's file
                    raise Internal("file id collision; retry the request") from None
                raise
        finally:
            self._release(owner)
        await self.events.publish("file", "created", {"file_id": file_id, "user_id": owner, "task_id": request.task_id})
        self.log.info("file created", file_id=file_id, user_id=owner, task_id=request.task_id)
        return messages.create_response(file_id, self._path(file_id), created["config"])

    def _reserve(self, owner: str) -> None:
        """Count a create against the limits (this replica's mirror, plus its creates in flight)."""
        records = self.files.mirrored()
        in_flight = sum(self._creating.values())
        if len(records) + in_flight >= self.config.tdfs_max_files:
            raise Conflict(f"the TDFS holds its maximum of {self.config.tdfs_max_files} files "
                           "(tdfs_max_files); delete files or raise the limit")
        owned = self._creating.get(owner, 0) + sum(1 for record in records if record.value.user_id == owner)
        limit = self.config.tdfs_max_files_per_user
        if owned >= limit:
            raise Conflict(f"user {owner} already owns {owned} files, the most the TDFS keeps per user "
                           f"(tdfs_max_files_per_user = {limit}); delete some first")
        self._creating[owner] = self._creating.get(owner, 0) + 1

    def _release(self, owner: str) -> None:
        left = self._creating.get(owner, 0) - 1
        if left > 0:
            self._creating[owner] = left
        else:
            self._creating.pop(owner, None)

    async def _delete(self, record: Record[FileRecord]) -> dict[str, str] | None:
        """Mark, remove the bytes, the key, then the record (see the module's docstring). Returns the
        key's config, or None when an earlier attempt had already deleted the key."""
        file_id = record.key
        for _ in range(MAX_CAS_ATTEMPTS):
            if record.value.deleting_since is not None:
                break
            try:
                record = await self.files.update(file_id, replace(record.value, deleting_since=time.time()),
                                                 record.revision)
            except Conflict:
                record = await self._find(file_id)
        else:
            raise Conflict(f"file {file_id} is changing too fast to delete; retry")
        await asyncio.to_thread(file_store.remove, file_store.path_of(self.directory, file_id))
        try:
            reply = await self.requester.request(subjects.kms("Delete"), {"type": "Delete", "key_id": record.value.key_id})
            config = reply.payload["config"]
        except NotFound:
            config = None
        try:
            await self.files.delete(file_id, record.revision)
        except Conflict:   # another Delete of it got there first (nothing else writes a marked record)
            if await self.files.find(file_id) is not None:
                raise
        await self.events.publish("file", "deleted", {"file_id": file_id, "user_id": record.value.user_id})
        self.log.info("file deleted", file_id=file_id, user_id=record.value.user_id)
        return config

    async def _delete_key(self, key_id: str, why: str) -> None:
        try:
            await self.requester.request(subjects.kms("Delete"), {"type": "Delete", "key_id": key_id})
        except NotFound:
            pass
        except Exception as exc:
            self.log.error("a KMS key is left without a file; delete it with `teebus mesatee kms delete`",
                           key_id=key_id, why=why, error=str(exc))

    async def sweep(self) -> None:
        """Finish deletions abandoned half-way, and remove abandoned uploads and orphan bytes."""
        stale = self.config.tdfs_stale_seconds
        now = time.time()
        for record in self.files.mirrored():
            since = record.value.deleting_since
            if since is not None and now - since > stale:
                try:
                    current = await self.files.find(record.key)
                    if current is not None:
                        await self._delete(current)
                except Exception as exc:   # the next pass tries again; the others go on now
                    self.log.warning("could not finish a deletion", file_id=record.key, error=str(exc))

        async def exists(file_id: str) -> bool:
            return await self.files.find(file_id) is not None

        removed = await file_store.sweep(self.directory, exists, stale_after=stale)
        if removed:
            self.log.info("file store swept", removed=len(removed))

    async def _visible(self, file_id: str, user: str, *, fresh: bool = False) -> Record[FileRecord]:
        """The record if `user` may read it; a 404 alike for the absent and the hidden. `fresh` reads
        the bucket itself rather than the mirror (a write must not follow a Delete's mark)."""
        record = await self._find(file_id, lookup=not fresh)
        if not record.value.visible_to(user):
            raise _no_file(file_id)
        return record

    async def _find(self, file_id: str, *, lookup: bool = False) -> Record[FileRecord]:
        try:
            return await (self.files.lookup(file_id) if lookup else self.files.get(file_id))
        except NotFound:
            raise _no_file(file_id) from None

    def _path(self, file_id: str) -> str:
        return str(file_store.path_of(self.directory, file_id))


def _age(record: Record[FileRecord]) -> tuple[str, str]:
    return record.value.created, record.key


def _no_file(file_id: str) -> NotFound:
    """The same words whether the file does not exist or the user may not see it."""
    return NotFound(f"no file {file_id} that you may access")

