"""Aurae's `runtime.Core/RunCell`: a set of containers in a cgroup of their own with shared
pid, mount, uts and ipc namespaces, on the host's kernel.

Images are local (`components/aurae/oci.py`): a root filesystem directory or an OCI image layout.
Aurae's docs say RunCell "will always pull the image"; teebus never pulls from a registry.

How a cell runs (the design choice the brief left open: one namespace holder per cell):
1. `probe()` checks what this host really allows (it creates namespaces and cgroups, then removes
   them); without namespaces or a writable memory cgroup, `run_cell` raises `CellUnsupported`
   saying what is missing (the caller's FAILED_PRECONDITION).
2. A cgroup for the cell is made below the cgroup teebus itself runs in (so the host's accounting
   of teebus still covers its cells): cgroup v2 where the memory controller is available there,
   v1 (`memory`, and `pids`/`cpu` where writable) otherwise. Inside it: `init/` for the holder and
   `c-<container>/` per container with that container's limits (memory, and swap held to the same
   limit; pids; cpu shares or weight).
3. A holder process (`nsexec.py init`) creates the namespaces; pid 1 of the new pid namespace is
   `teebus-cell`, which only reaps orphans. Containers are therefore pid 2, 3, ... inside: like a
   Kubernetes pod's pause process, the holder keeps the namespaces alive whichever container ends
   first (had the first container been pid 1, its exit would have killed its siblings). The
   holder sets the hostname to the cell's name and, in the cell's private mount namespace, binds
   each container's root filesystem on a view directory of its own with /proc, a minimal /dev
   and its cgroup directory mounted read-only at /sys/fs/cgroup (v2) or /sys/fs/cgroup/<controller>
   (v1) -- each only where the root filesystem has that directory.
4. Each container is `nsexec.py enter`, run through `process.run` (the same reading, capping,
   timeout and callbacks as RunExecutable): it joins its cgroup, setns()es into the holder's
   namespaces through /proc/<pid>/ns/*, chroots into its view and forks the command. The pid
   reported (and passed to `on_start`/`on_output`) is that helper's host pid, the root of the
   container's process tree; `container_pid` is the command's own host pid.
5. When every container has ended, the holder is killed: pid 1's death ends the pid namespace
   (any process left in it) and with the mount namespace every mount; then the cgroups and the
   (empty) view directories are removed.

Root runs containers as real root in a chroot (no user namespace, no capability dropping yet);
an unprivileged teebus uses a user namespace that maps its own uid to root inside.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from components.aurae import process
from components.aurae.oci import Image, resolve_image
from components.aurae.process import COMPLETE, ERROR, Limits, OnOutput, Outcome

NSEXEC = Path(__file__).with_name("nsexec.py")
HELPER = (sys.executable, "-I", "-S", str(NSEXEC))
CONTROLLERS = ("memory", "pids", "cpu")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROBE_SECONDS = 10.0
HOLDER_READY_SECONDS = 10.0
RMDIR_SECONDS = 3.0
V2_KEY = "unified"

OnContainerStart = Callable[[str, int], Awaitable[None]]


class CellUnsupported(Exception):
    """The host lacks what a cell needs; `message` says what (for FAILED_PRECONDITION)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ContainerSpec:
    """One container of a cell. An empty `command` takes the OCI image config's Entrypoint + Cmd."""

    name: str
    image: Path
    command: list[str] = field(default_factory=list)
    memory_limit_bytes: int | None = None
    pids_limit: int | None = None
    cpu_shares: int | None = None
    env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ValueError(f"container name {self.name!r} must be 1-63 letters, digits, '.', '_' or '-'")
        if self.memory_limit_bytes is not None and not 1 << 20 <= self.memory_limit_bytes <= 1 << 50:
            raise ValueError(f"memory_limit_bytes must be from 1 MiB to 1 PiB, not {self.memory_limit_bytes}")
        if self.pids_limit is not None and not 1 <= self.pids_limit <= 4_194_304:
            raise ValueError(f"pids_limit must be from 1 to 4194304, not {self.pids_limit}")
        if self.cpu_shares is not None and not 2 <= self.cpu_shares <= 262_144:
            raise ValueError(f"cpu_shares must be from 2 to 262144, not {self.cpu_shares}")
        if any("\x00" in arg for arg in self.command):
            raise ValueError("the command contains a NUL character")


@dataclass(frozen=True)
class ContainerOutcome:
    name: str
    image: str
    pid: int | None              # host pid of the container's helper (root of its process tree)
    container_pid: int | None    # host pid of the command itself
    outcome: Outcome
    oom_killed: bool = False


@dataclass(frozen=True)
class CellOutcome:
    name: str
    status: str                  # COMPLETE when every container completed, else ERROR
    message: str
    cgroup_version: int
    cgroup_dirs: tuple[str, ...]  # the cell's cgroup directories (removed by the time this returns)
    containers: tuple[ContainerOutcome, ...]


# -- what this host allows ---------------------------------------------------------------------

@dataclass(frozen=True)
class CellSupport:
    """What `probe` found. `cgroup_parents` maps a controller (v1) or "unified" (v2) to the
    directory cells are created under; `missing` lists what blocks cells, `notes` the rest."""

    root: bool
    user_namespace: bool          # cells need (and got) a user namespace: teebus is not root
    namespaces: bool              # pid/mount/uts/ipc namespaces really work here
    cgroup_version: int | None
    cgroup_parents: dict[str, str]
    controllers: tuple[str, ...]
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.missing

    @property
    def message(self) -> str:
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        if not self.usable:
            return f"RunCell is not available on this host: {'; '.join(self.missing)}{notes}"
        who = "in a user namespace" if self.user_namespace else "as root"
        return (f"RunCell available: cgroup v{self.cgroup_version} ({', '.join(self.controllers)}) under "
                f"{', '.join(sorted(set(self.cgroup_parents.values())))}; pid, mount, uts and ipc "
                f"namespaces {who}{notes}")


def probe() -> CellSupport:
    """Check, for real, whether cells can run here. Blocking (a helper process, sysfs writes):
    call it at start-up or through `asyncio.to_thread`, as `run_cell` does."""
    root = os.geteuid() == 0
    missing: list[str] = []
    notes: list[str] = []
    ns_problem = _probe_namespaces(user_ns=not root)
    if ns_problem:
        missing.append(ns_problem)
    version, parents, controllers, cg_notes = _probe_cgroups()
    notes.extend(cg_notes)
    if version is None:
        missing.append("no writable cgroup with the memory controller (v2 or v1)")
    return CellSupport(root=root, user_namespace=not root and not ns_problem, namespaces=not ns_problem,
                       cgroup_version=version, cgroup_parents=parents, controllers=controllers,
                       missing=tuple(missing), notes=tuple(notes))


def _probe_namespaces(user_ns: bool) -> str | None:
    what = "pid/mount/uts/ipc namespaces" + (" in an unprivileged user namespace" if user_ns else "")
    try:
        result = subprocess.run([*HELPER, "probe", json.dumps({"user_ns": user_ns})], capture_output=True,
                                text=True, errors="replace", timeout=PROBE_SECONDS, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{what}: the probe did not run ({exc})"
    if result.returncode == 0 and "ok" in result.stdout.split():
        return None
    said = [line[6:] for line in result.stdout.splitlines() if line.startswith("error ")]
    detail = said[-1] if said else (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    return f"{what}: {detail}"


@dataclass(frozen=True)
class _Mount:
    root: str
    point: str
    fstype: str
    options: tuple[str, ...]


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mounts(text: str | None = None) -> list[_Mount]:
    """cgroup and cgroup2 mounts from /proc/self/mountinfo (v1 controllers are in the super options)."""
    if text is None:
        text = Path("/proc/self/mountinfo").read_text()
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype = fields[sep + 1]
        if fstype in ("cgroup", "cgroup2"):
            found.append(_Mount(_unescape(fields[3]), _unescape(fields[4]), fstype,
                                tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else ()))
    return found


def own_cgroups(text: str | None = None) -> dict[str, str]:
    """Our cgroup path per v1 controller, and under "" the v2 path (/proc/self/cgroup)."""
    if text is None:
        text = Path("/proc/self/cgroup").read_text()
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _cgroup_dir(mount: _Mount, path: str) -> str:
    if mount.root != "/" and path.startswith(mount.root):
        path = path[len(mount.root):]
    return os.path.normpath(os.path.join(mount.point, path.lstrip("/")))


def _probe_cgroups() -> tuple[int | None, dict[str, str], tuple[str, ...], list[str]]:
    notes: list[str] = []
    try:
        found, own = mounts(), own_cgroups()
    except (OSError, ValueError) as exc:
        return None, {}, (), [f"cannot read this process's cgroups: {exc}"]
    v2 = _probe_v2(found, own, notes)
    if v2 is not None:
        return 2, {V2_KEY: v2[0]}, v2[1], notes
    parents = _probe_v1(found, own, notes)
    if "memory" in parents:
        return 1, parents, tuple(c for c in CONTROLLERS if c in parents), notes
    return None, {}, (), notes


def _probe_v2(found: list[_Mount], own: dict[str, str], notes: list[str]) -> tuple[str, tuple[str, ...]] | None:
    mount = next((m for m in found if m.fstype == "cgroup2"), None)
    if mount is None or "" not in own:
        notes.append("cgroup v2: not mounted")
        return None
    parent = _cgroup_dir(mount, own[""])
    available = _read_words(os.path.join(parent, "cgroup.controllers"))
    if "memory" not in available:
        notes.append(f"cgroup v2 at {parent}: no memory controller (cgroup.controllers: {' '.join(available) or 'empty'})")
        return None
    wanted = [c for c in CONTROLLERS if c in available]
    enabled = _read_words(os.path.join(parent, "cgroup.subtree_control"))
    if "memory" not in enabled:
        try:
            _write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            notes.append(f"cgroup v2: cannot enable memory below {parent} ({exc.strerror})")
            return None
    problem = _try_mkdir(parent, "memory.max")
    if problem:
        notes.append(f"cgroup v2: {problem}")
        return None
    usable = tuple(c for c in wanted if c in _read_words(os.path.join(parent, "cgroup.subtree_control")))
    return parent, usable


def _probe_v1(found: list[_Mount], own: dict[str, str], notes: list[str]) -> dict[str, str]:
    expect = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.shares"}
    parents: dict[str, str] = {}
    for controller in CONTROLLERS:
        mount = next((m for m in found if m.fstype == "cgroup" and controller in m.options), None)
        if mount is None or controller not in own:
            notes.append(f"cgroup v1 {controller}: not mounted")
            continue
        parent = _cgroup_dir(mount, own[controller])
        problem = _try_mkdir(parent, expect[controller])
        if problem:
            notes.append(f"cgroup v1 {controller}: {problem}")
            continue
        parents[controller] = parent
    return parents


def _try_mkdir(parent: str, expect: str) -> str | None:
    """Create and remove a child cgroup: the only real test of 'writable' (access() says little
    on cgroupfs, and a delegated hierarchy may still refuse)."""
    probe_dir = os.path.join(parent, f"teebus-probe-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        os.mkdir(probe_dir)
    except OSError as exc:
        return f"cannot create a cgroup in {parent} ({exc.strerror})"
    try:
        if not os.path.exists(os.path.join(probe_dir, expect)):
            return f"a new cgroup in {parent} has no {expect}"
        return None
    finally:
        try:
            os.rmdir(probe_dir)
        except OSError:
            pass


def _read_words(path: str) -> list[str]:
    try:
        return Path(path).read_text().split()
    except OSError:
        return []


def _write(path: str | Path, text: str) -> None:
    with open(path, "w") as stream:
        stream.write(text)


# -- the cell's cgroup -------------------------------------------------------------------------

@dataclass
class CellCgroup:
    """The cell's cgroup directories: `cells[key]` per hierarchy ("unified" for v2, else the v1
    controller), `init/` below it for the holder, `c-<name>/` per container."""

    version: int
    cells: dict[str, Path] = field(default_factory=dict)
    containers: dict[str, dict[str, Path]] = field(default_factory=dict)

    @classmethod
    def create(cls, support: CellSupport, cell_id: str, specs: Sequence[ContainerSpec]) -> CellCgroup:
        assert support.cgroup_version is not None
        cgroup = cls(support.cgroup_version)
        try:
            for key, parent in support.cgroup_parents.items():
                cgroup._create_tree(key, Path(parent) / f"teebus-{cell_id}", support.controllers, specs)
        except OSError as exc:
            cgroup.remove_now()
            raise CellUnsupported(f"cannot set up the cell's cgroup: {exc}") from None
        return cgroup

    def _create_tree(self, key: str, cell: Path, controllers: Sequence[str], specs: Sequence[ContainerSpec]) -> None:
        cell.mkdir()
        self.cells[key] = cell
        if self.version == 2:
            _write(cell / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
        (cell / "init").mkdir()
        for spec in specs:
            directory = cell / f"c-{spec.name}"
            directory.mkdir()
            self.containers.setdefault(spec.name, {})[key] = directory
            _apply_limits(self.version, key, directory, spec)

    def init_procs(self) -> list[str]:
        return [str(cell / "init" / "cgroup.procs") for cell in self.cells.values()]

    def container_procs(self, name: str) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.containers[name].values()]

    def container_dirs(self, name: str) -> dict[str, str]:
        return {key: str(d) for key, d in self.containers[name].items()}

    def oom_kills(self, name: str) -> int:
        """How often the kernel's OOM killer struck in this container's cgroup."""
        dirs = self.containers.get(name, {})
        source = dirs.get(V2_KEY, Path()) / "memory.events" if self.version == 2 else \
            dirs.get("memory", Path()) / "memory.oom_control"
        for line in _read_lines(source):
            word, _, count = line.partition(" ")
            if word == "oom_kill" and count.strip().isdigit():
                return int(count)
        return 0

    def all_dirs(self) -> list[Path]:
        """Deepest first, the order they can be removed in."""
        dirs: list[Path] = []
        for key, cell in self.cells.items():
            dirs += [d[key] for d in self.containers.values() if key in d]
            dirs += [cell / "init", cell]
        return dirs

    async def remove(self) -> None:
        """Kill what is left (nothing, normally: pid 1 of the cell is gone) and remove every
        directory; a cgroup whose last task is still exiting refuses rmdir (EBUSY) for a moment."""
        deadline = asyncio.get_running_loop().time() + RMDIR_SECONDS
        for directory in self.all_dirs():
            while directory.exists():
                _kill_tasks(directory)
                try:
                    directory.rmdir()
                except OSError:
                    if asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.02)

    def remove_now(self) -> None:
        for directory in self.all_dirs():
            try:
                directory.rmdir()
            except OSError:
                pass


def _apply_limits(version: int, key: str, directory: Path, spec: ContainerSpec) -> None:
    """A container's limits; swap is held to the memory limit so it cannot be escaped."""
    values: list[tuple[str, int | str]] = []
    if version == 2:
        if spec.memory_limit_bytes is not None:
            values += [("memory.max", spec.memory_limit_bytes), ("memory.swap.max", 0)]
        if spec.pids_limit is not None:
            values.append(("pids.max", spec.pids_limit))
        if spec.cpu_shares is not None:
            values.append(("cpu.weight", 1 + (spec.cpu_shares - 2) * 9999 // 262142))
    elif key == "memory" and spec.memory_limit_bytes is not None:
        values += [("memory.limit_in_bytes", spec.memory_limit_bytes),
                   ("memory.memsw.limit_in_bytes", spec.memory_limit_bytes)]
    elif key == "pids" and spec.pids_limit is not None:
        values.append(("pids.max", spec.pids_limit))
    elif key == "cpu" and spec.cpu_shares is not None:
        values.append(("cpu.shares", spec.cpu_shares))
    for name, value in values:
        if (directory / name).exists():
            _write(directory / name, str(value))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _kill_tasks(directory: Path) -> None:
    for line in _read_lines(directory / "cgroup.procs"):
        try:
            os.kill(int(line), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


# -- the namespace holder ----------------------------------------------------------------------

@dataclass
class _Holder:
    proc: asyncio.subprocess.Process
    init_pid: int


async def _start_holder(hostname: str, cgroup: CellCgroup, views: list[dict[str, object]],
                        user_ns: bool) -> _Holder:
    spec = {"hostname": hostname, "cgroup_procs": cgroup.init_procs(), "user_ns": user_ns, "views": views}
    proc = await asyncio.create_subprocess_exec(
        *HELPER, "init", json.dumps(spec), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        init_pid, error = await asyncio.wait_for(_handshake(proc), HOLDER_READY_SECONDS)
    except asyncio.TimeoutError:
        init_pid, error = None, f"the namespace holder was not ready within {HOLDER_READY_SECONDS:g}s"
    except BaseException:
        await _stop_holder(proc)
        raise
    if error or init_pid is None:
        await _stop_holder(proc)
        raise CellUnsupported(f"cannot create the cell's namespaces: {error}")
    return _Holder(proc, init_pid)


async def _handshake(proc: asyncio.subprocess.Process) -> tuple[int | None, str | None]:
    """Read `pid N` and `ready` (in either order: two processes write them) or `error ...`."""
    assert proc.stdout is not None and proc.stderr is not None
    pid, ready = None, False
    while not (pid and ready):
        line = (await proc.stdout.readline()).decode(errors="replace").strip()
        if not line:
            said = (await proc.stderr.read(8192)).decode(errors="replace").strip().splitlines()
            return pid, f"the namespace holder ended ({said[-1] if said else 'no message'})"
        word, _, rest = line.partition(" ")
        if word == "pid" and rest.isdigit():
            pid = int(rest)
        elif word == "ready":
            ready = True
        elif word == "error":
            return pid, rest
    return pid, None


async def _stop_holder(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the holder's process group: its pid 1 goes with it, and so the whole cell."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    await asyncio.shield(proc.wait())


# -- containers --------------------------------------------------------------------------------

async def _run_container(spec: ContainerSpec, image: Image, view: Path, cell_name: str, cgroup: CellCgroup,
                         holder: _Holder, support: CellSupport, limits: Limits,
                         on_start: OnContainerStart | None, on_output: OnOutput | None) -> ContainerOutcome:
    env = {"PATH": DEFAULT_PATH, "HOME": "/", "HOSTNAME": cell_name, **image.env, **(spec.env or {})}
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    writer = _OnceClosed(write_fd)
    enter = {"target": holder.init_pid, "cgroup_procs": cgroup.container_procs(spec.name),
             "user_ns": support.user_namespace, "root": str(view), "cwd": image.cwd,
             "status_fd": write_fd, "argv": spec.command or image.argv}

    async def started(pid: int) -> None:
        writer.close()  # our copy: the pipe then ends when the helper and its child are gone
        if on_start is not None:
            await on_start(spec.name, pid)

    try:
        outcome = await process.run([*HELPER, "enter", json.dumps(enter)], limits, on_start=started,
                                    on_output=on_output, env=env, pass_fds=(write_fd,))
    finally:
        writer.close()
        report = _read_available(read_fd)
        os.close(read_fd)
    return _container_outcome(spec, outcome, report, cgroup.oom_kills(spec.name))


class _OnceClosed:
    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_available(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _container_outcome(spec: ContainerSpec, outcome: Outcome, report: str, oom_kills: int) -> ContainerOutcome:
    container_pid = None
    failure = None
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "started" and rest.isdigit():
            container_pid = int(rest)
        elif word == "execfail":
            failure = rest
        elif word == "error":
            failure = f"cannot enter the cell: {rest}"
    if failure:
        outcome = replace(outcome, status=ERROR, exit_code=None, message=failure)
    oom = oom_kills > 0 and outcome.signal == "SIGKILL"
    if oom:
        outcome = replace(outcome, message=f"{outcome.message}; out of memory (limit {spec.memory_limit_bytes} bytes)")
    return ContainerOutcome(spec.name, str(spec.image), outcome.pid, container_pid, outcome, oom)


# -- the cell ----------------------------------------------------------------------------------

async def run_cell(cell_name: str, containers: Sequence[ContainerSpec], limits: Limits, *, work_dir: Path,
                   support: CellSupport | None = None, on_start: OnContainerStart | None = None,
                   on_output: OnOutput | None = None) -> CellOutcome:
    """Run every container of the cell at once, to its end (each under `limits`), and clean up.

    `work_dir` holds unpacked OCI images (`images/`, kept) and the cell's view directories
    (`run/`, removed). `support` is `probe()`'s answer (probed here when None). Raises
    CellUnsupported when the host cannot run cells, ValueError for bad names or images.
    `on_start(container_name, pid)` and `on_output(pid, channel, line, timestamp_ns)` are
    `process.run`'s hooks, per container.
    """
    _check_names(cell_name, containers)
    if support is None:
        support = await asyncio.to_thread(probe)
    if not support.usable:
        raise CellUnsupported(support.message)
    _check_controllers(support, containers)
    images = [await resolve_image(spec.image, work_dir) for spec in containers]
    for spec, image in zip(containers, images):
        if not (spec.command or image.argv):
            raise ValueError(f"container {spec.name!r} has no command and its image names none")
    cell_id = f"{cell_name}-{secrets.token_hex(4)}"
    views = _make_views(work_dir / "run" / cell_id, containers)
    try:
        cgroup = CellCgroup.create(support, cell_id, containers)
        try:
            outcomes = await _run_in_holder(cell_name, containers, images, views, cgroup, support, limits,
                                            on_start, on_output)
        finally:
            await cgroup.remove()
    finally:
        _remove_views(work_dir / "run" / cell_id, views)
    return _cell_outcome(cell_name, cgroup, outcomes)


async def _run_in_holder(cell_name: str, specs: Sequence[ContainerSpec], images: list[Image], views: list[Path],
                         cgroup: CellCgroup, support: CellSupport, limits: Limits,
                         on_start: OnContainerStart | None, on_output: OnOutput | None) -> list[ContainerOutcome]:
    mounts_spec = [{"rootfs": str(image.rootfs), "view": str(view), "cgroups": cgroup.container_dirs(spec.name),
                    "cgroup_version": cgroup.version} for spec, image, view in zip(specs, images, views)]
    holder = await _start_holder(cell_name, cgroup, mounts_spec, support.user_namespace)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_run_container(spec, image, view, cell_name, cgroup, holder, support,
                                                      limits, on_start, on_output))
                     for spec, image, view in zip(specs, images, views)]
        return [task.result() for task in tasks]
    finally:
        await _stop_holder(holder.proc)


def _check_names(cell_name: str, containers: Sequence[ContainerSpec]) -> None:
    if not isinstance(cell_name, str) or not NAME.match(cell_name):
        raise ValueError(f"cell name {cell_name!r} must be 1-63 letters, digits, '.', '_' or '-' (it is the hostname)")
    if not containers:
        raise ValueError("a cell needs at least one container")
    names = [spec.name for spec in containers]
    if len(set(names)) != len(names):
        raise ValueError(f"container names must be unique in a cell: {names}")


def _check_controllers(support: CellSupport, containers: Sequence[ContainerSpec]) -> None:
    needs = {"pids": any(s.pids_limit is not None for s in containers),
             "cpu": any(s.cpu_shares is not None for s in containers)}
    lacking = [name for name, needed in needs.items() if needed and name not in support.controllers]
    if lacking:
        raise CellUnsupported(f"the cell asks for {' and '.join(lacking)} limits, but this host's cgroup "
                              f"v{support.cgroup_version} has no writable {' or '.join(lacking)} controller")


def _make_views(run_dir: Path, containers: Sequence[ContainerSpec]) -> list[Path]:
    views = [run_dir / spec.name for spec in containers]
    for view in views:
        view.mkdir(parents=True)
    return views


def _remove_views(run_dir: Path, views: list[Path]) -> None:
    """rmdir only, never a recursive delete: should a mount ever be visible here, the image
    underneath must survive."""
    for directory in [*views, run_dir]:
        try:
            directory.rmdir()
        except OSError:
            pass


def _cell_outcome(cell_name: str, cgroup: CellCgroup, outcomes: list[ContainerOutcome]) -> CellOutcome:
    failed = [c for c in outcomes if c.outcome.status != COMPLETE]
    if failed:
        status = ERROR
        message = "; ".join(f"container {c.name}: {c.outcome.message}" for c in failed)
    else:
        status = COMPLETE
        message = f"{len(outcomes)} container{'s' if len(outcomes) != 1 else ''} completed"
    dirs = tuple(str(cell) for cell in cgroup.cells.values())
    return CellOutcome(cell_name, status, message, cgroup.version, dirs, tuple(outcomes))
