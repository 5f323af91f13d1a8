"""The MesaTEE Task Management Service: tasks created, approved, listed and moved through their lifecycle.

Tasks live in the KV bucket `mesatee_tms_tasks`, one record per task, every change a compare-and-set
(`Records.mutate`), so concurrent approvals never lose one and a task becomes Running once. Each
status change is an event (`events.mesatee.task.<status>`), which `teebus mesatee task watch`
follows. A Running task whose function node vanished (its `running_deadline` passed) is failed by
the sweeper, so no task waits forever for a node that restarted.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from typing import Any

from bus.component import Component, Endpoint, Incoming
from bus.errors import Conflict, NotFound, TooLarge
from bus.records import Change
from components.mesatee import auth, subjects, tdfs_messages
from components.mesatee import tms_messages as messages
from components.mesatee.config import MesateeConfig
from components.mesatee.functions import FUNCTIONS, is_multiparty
from components.mesatee.fields import MAX_COLLABORATORS
from components.mesatee.tms_messages import Task

BUCKET = "mesatee_tms_tasks"
FNS_SITE = "mesatee-fns"
SWEEP_SECONDS = 10.0


class TmsComponent(Component):
    system = subjects.SYSTEM
    name = "tms"
    description = "MesaTEE task management: create, approve, list tasks and follow their status"
    config: MesateeConfig

    async def setup(self) -> None:
        self.tasks = await self.open_records(BUCKET, kind=Task, description="MesaTEE tasks",
                                             max_value_size=64 * 1024)
        await self.tasks.mirror(limit=2 * self.config.tms_max_tasks)   # List scans the tasks a user takes part in
        self.fns = {"ip": _fns_ip(self.config.fns_ip or self.context.http_host),
                    "port": self.context.ports.get(FNS_SITE, 3444)}
        self.every(SWEEP_SECONDS, self._sweep, "sweep lost tasks")

    async def teardown(self) -> None:
        await self.tasks.close()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("create", subjects.tms("Create"), self.create),
                Endpoint("get", subjects.tms("Get"), self.get),
                Endpoint("update", subjects.tms("Update"), self.update),
                Endpoint("list", subjects.tms("List"), self.list),
                Endpoint("internal-get", subjects.tms_internal("Get"), self.internal_get, inline=True),
                Endpoint("internal-update", subjects.tms_internal("Update"), self.internal_update)]

    # -- external (port 5554) -----------------------------------------------------------------------------

    async def create(self, incoming: Incoming) -> dict[str, Any]:
        request = messages.parse_request(incoming.payload, expected="Create")
        user = await auth.authenticate(self.requester, request.user_id, request.user_token)
        if request.function_name not in FUNCTIONS:
            raise NotFound("function_name names no function of this function node; it runs: "
                           f"{', '.join(sorted(FUNCTIONS))}")
        await self._check_readable(user, request.files)
        self._check_quota(user)
        task = Task.new(str(uuid.uuid4()), user, request.function_name, is_multiparty(request.function_name),
                        request.collaborator_list, request.files)
        await self.tasks.create(task.task_id, task)
        await self._event(task, "created")
        self.log.info("task created", task_id=task.task_id, function=task.function_name, user_id=user)
        return {"type": "Create", "task_id": task.task_id, "task_token": task.task_token, **self.fns}

    async def get(self, incoming: Incoming) -> dict[str, Any]:
        request = messages.parse_request(incoming.payload, expected="Get")
        user = await auth.authenticate(self.requester, request.user_id, request.user_token)
        task = await self._visible(request.task_id, user)
        return {"type": "Get", "task_info": messages.task_info(task, self.fns, user)}

    async def update(self, incoming: Incoming) -> dict[str, Any]:
        request = messages.parse_request(incoming.payload, expected="Update")
        user = await auth.authenticate(self.requester, request.user_id, request.user_token)
        task = await self._visible(request.task_id, user)
        if user == task.user_id:
            raise Conflict(f"user {user} created task {task.task_id}; only its collaborators approve it")
        await self._check_readable(user, request.files)
        change: Change[Task] = await self.tasks.mutate(task.task_id, lambda current: current.approve(user, request.files),
                                                        attempts=MAX_COLLABORATORS + 2)
        after = change.after.value
        await self._event(after, "approved", {"by": user})
        if after.status == messages.READY:
            await self._event(after, "ready")
        self.log.info("task approved", task_id=after.task_id, user_id=user, status=after.status)
        return {"type": "Update", "success": True, "status": after.status, **self.fns,
                "task_token": after.task_token}

    async def list(self, incoming: Incoming) -> dict[str, Any]:
        request = messages.parse_request(incoming.payload, expected="List")
        user = await auth.authenticate(self.requester, request.user_id, request.user_token)
        mine = sorted((r.value for r in self.tasks.mirrored() if r.value.involves(user)), key=lambda t: t.created)
        return {"type": "List", "list": [task.task_id for task in mine]}

    # -- internal (port 5555: the function node) ------------------------------------------------------------

    async def internal_get(self, incoming: Incoming) -> dict[str, Any]:
        task_id = messages.parse_internal_request(incoming.payload, expected="Get")
        record = self.tasks.mirrored_record(task_id) or await self._find(task_id)
        return {"type": "Get", "task_info": messages.internal_task_info(record.value, self.fns)}

    async def internal_update(self, incoming: Incoming) -> dict[str, Any]:
        update = messages.parse_internal_request(incoming.payload, expected="Update")
        await self._find(update.task_id)
        change: Change[Task] = await self.tasks.mutate(update.task_id, lambda task: task.advance(update))
        before, after = change.before.value, change.after.value
        if after.status != before.status:
            reason = {"reason": after.failure_reason} if after.failure_reason else {}
            await self._event(after, after.status.lower(), reason)
            self.log.info("task status", task_id=after.task_id, status=after.status, **reason)
        return {"type": "Update", "success": True}

    # -- rules ----------------------------------------------------------------------------------------------

    async def _find(self, task_id: str):
        try:
            return await self.tasks.get(task_id)
        except NotFound:
            raise NotFound(f"no task with task_id {task_id}") from None

    async def _visible(self, task_id: str, user: str) -> Task:
        """The task, if `user` takes part in it; otherwise the same 404 as for no task at all."""
        record = self.tasks.mirrored_record(task_id)
        if record is None:
            try:
                record = await self.tasks.get(task_id)
            except NotFound:
                record = None
        if record is None or not record.value.involves(user):
            raise NotFound(f"no task {task_id} in which user {user} takes part")
        return record.value

    async def _check_readable(self, user: str, files: tuple[str, ...]) -> None:
        """A user may name only files they may read (their own, or shared with them by policy)."""
        for file_id in files:
            try:
                reply = await self.requester.request(subjects.tdfs_internal("Get"), {"type": "Get", "file_id": file_id})
                info = reply.payload["file_info"]
            except NotFound:
                info = None
            if info is None or not tdfs_messages.may_read(user, info["user_id"], info["allow_policy"],
                                                          info["collaborator_list"]):
                raise NotFound(f"no file {file_id} that user {user} may read: name your own files, or "
                               "files shared with you")

    def _check_quota(self, user: str) -> None:
        tasks = self.tasks.mirrored()
        if len(tasks) >= self.config.tms_max_tasks:
            raise TooLarge(f"the task management service holds {len(tasks)} tasks, its limit "
                           "(tms_max_tasks); ask the operator to raise it")
        owned = sum(1 for r in tasks if r.value.user_id == user)
        if owned >= self.config.tms_max_tasks_per_user:
            raise TooLarge(f"user {user} has {owned} tasks, the most one user may hold "
                           f"(tms_max_tasks_per_user); finished tasks are kept for their results")

    async def _event(self, task: Task, what: str, extra: dict[str, Any] | None = None) -> None:
        await self.events.publish("task", what, {"task_id": task.task_id, "status": task.status,
                                                 "function_name": task.function_name, **(extra or {})})

    async def _sweep(self) -> None:
        """Fail Running tasks whose function node is gone (their deadline passed long ago)."""
        now = time.time()
        for record in self.tasks.mirrored():
            task = record.value
            if task.status == messages.RUNNING and task.running_deadline and now > task.running_deadline:
                update = messages.InternalUpdate(task.task_id, status=messages.FAILED, failure_reason=(
                    "the function node running this task stopped answering before its deadline: "
                    "create the task again"))
                try:
                    change = await self.tasks.mutate(task.task_id, lambda current: current.advance(update))
                except (Conflict, NotFound):
                    continue   # it ended meanwhile
                await self._event(change.after.value, "failed", {"reason": update.failure_reason})
                self.log.warning("lost task failed", task_id=task.task_id)


def _fns_ip(host: str) -> str:
    """Where clients reach the function node: the sites' host, or loopback when they listen on all."""
    try:
        return "127.0.0.1" if ipaddress.ip_address(host).is_unspecified else host
    except ValueError:
        return host
