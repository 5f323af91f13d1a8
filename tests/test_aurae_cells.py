"""components/aurae/cells.py and oci.py: RunCell on this machine, for real.

The containers run `cellinfo`, a static binary built here from a few lines of C (no busybox on
the development machines), in a root filesystem the test makes. Where the host cannot run cells,
every cell test asserts CellUnsupported with the probe's message instead of skipping.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from components.aurae import cells, oci
from components.aurae.cells import CellSupport, CellUnsupported, ContainerSpec, probe, run_cell
from components.aurae.process import COMPLETE, ERROR, Limits
from tests.aurae_fixtures import info

LIMITS = Limits(timeout_seconds=15, grace_seconds=1)
MIB = 1 << 20

@pytest.fixture(scope="module")
def support() -> CellSupport:
    return probe()


async def run_or_unsupported(support: CellSupport, *args, **kwargs):
    """On a host that cannot run cells, the call must say so (CellUnsupported, the probe's
    message); the test then ends there, having checked that."""
    if not support.usable:
        with pytest.raises(CellUnsupported) as raised:
            await run_cell(*args, support=support, **kwargs)
        assert raised.value.message == support.message
        assert raised.value.message.startswith("RunCell is not available on this host: ")
        return None
    return await run_cell(*args, support=support, **kwargs)


def own_cgroup_lines() -> dict[str, str]:
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            found[name] = path
    return found


# -- the probe ---------------------------------------------------------------------------------

def test_probe_reports_what_this_machine_really_has(support: CellSupport):
    print("\n" + support.message)
    assert support.root == (os.geteuid() == 0)
    mountinfo = Path("/proc/self/mountinfo").read_text()
    own = own_cgroup_lines()
    if support.cgroup_version == 1:
        assert "memory" in support.controllers
        for controller in support.controllers:
            parent = Path(support.cgroup_parents[controller])
            assert parent.is_dir() and os.access(parent, os.W_OK)
            assert any(" - cgroup " in line and controller in line.rsplit(" ", 1)[-1].split(",")
                       and str(parent).startswith(line.split()[4]) for line in mountinfo.splitlines())
            assert str(parent).endswith(own[controller].rstrip("/")), (parent, own[controller])
    elif support.cgroup_version == 2:
        parent = Path(support.cgroup_parents["unified"])
        assert "memory" in (parent / "cgroup.controllers").read_text().split()
    # cgroup v2 without a memory controller must not be claimed (this machine's v2 is hybrid)
    for line in mountinfo.splitlines():
        if " - cgroup2 " in line:
            point = Path(line.split()[4]) / own.get("", "/").lstrip("/")
            if "memory" not in (point / "cgroup.controllers").read_text().split():
                assert support.cgroup_version != 2
                assert any("no memory controller" in note for note in support.notes)
    if support.root and shutil.which("unshare"):
        works = subprocess.run(["unshare", "--pid", "--mount", "--uts", "--ipc", "--fork", "true"],
                               capture_output=True).returncode == 0
        assert support.namespaces == works
    if support.usable:
        assert support.message.startswith("RunCell available: cgroup v")
    else:
        assert support.message.startswith("RunCell is not available on this host: ")
        assert all(problem in support.message for problem in support.missing)


def test_probe_leaves_no_cgroup_behind(support: CellSupport):
    for parent in support.cgroup_parents.values():
        assert not [p for p in os.listdir(parent) if p.startswith("teebus-probe-")]


async def test_a_host_without_support_gets_cell_unsupported_with_the_reason(tmp_path: Path):
    lacking = CellSupport(root=False, user_namespace=False, namespaces=False, cgroup_version=None,
                          cgroup_parents={}, controllers=(),
                          missing=("pid/mount/uts/ipc namespaces in an unprivileged user namespace: Operation not permitted",
                                   "no writable cgroup with the memory controller (v2 or v1)"))
    with pytest.raises(CellUnsupported) as raised:
        await run_cell("c1", [ContainerSpec("a", tmp_path, ["true"])], LIMITS, work_dir=tmp_path, support=lacking)
    assert "Operation not permitted" in raised.value.message and "memory controller" in raised.value.message


async def test_a_missing_controller_is_named(tmp_path: Path, support: CellSupport):
    only_memory = CellSupport(root=True, user_namespace=False, namespaces=True, cgroup_version=1,
                              cgroup_parents={"memory": "/nonexistent"}, controllers=("memory",))
    with pytest.raises(CellUnsupported, match="pids"):
        await run_cell("c1", [ContainerSpec("a", tmp_path, ["true"], pids_limit=5)], LIMITS, work_dir=tmp_path,
                       support=only_memory)


# -- cells -------------------------------------------------------------------------------------

async def test_a_cell_shares_namespaces_has_its_hostname_and_its_limits(support, rootfs, tmp_path):
    lines: list[tuple[int, str, str]] = []
    started: dict[str, int] = {}

    async def on_start(name: str, pid: int) -> None:
        started[name] = pid

    async def on_output(pid: int, channel: str, line: str, ts: int) -> None:
        lines.append((pid, channel, line))

    specs = [ContainerSpec("one", rootfs, ["/bin/cellinfo", "info"], memory_limit_bytes=32 * MIB, pids_limit=20),
             ContainerSpec("two", rootfs, ["cellinfo", "info"], memory_limit_bytes=48 * MIB)]
    began = time.monotonic()
    cell = await run_or_unsupported(support, "cell-a", specs, LIMITS, work_dir=tmp_path / "work",
                                    on_start=on_start, on_output=on_output)
    if cell is None:
        return
    print(f"\ncell ran in {time.monotonic() - began:.2f}s")
    assert cell.status == COMPLETE, cell.message
    one, two = (info(c.outcome.stdout) for c in cell.containers)
    host_ns = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("pid", "uts", "ipc", "mnt")}
    for seen, container in ((one, cell.containers[0]), (two, cell.containers[1])):
        assert container.outcome.exit_code == 0 and container.outcome.stderr == ""
        # pid namespace: pid 1 is the cell's holder, the containers come next; the host pid differs
        assert seen["init"] == "teebus-cell" and 2 <= int(seen["pid"]) <= 10
        assert int(seen["pid"]) != container.container_pid and container.container_pid > 0
        assert seen["hostname"] == "cell-a"
        for kind in ("pid", "uts", "ipc", "mnt"):
            assert seen[f"{kind}ns"] != host_ns[kind]
        assert seen["hostfile"] == "-" and seen["marker"] == "from the rootfs"  # chrooted
    for kind in ("pid", "uts", "ipc", "mnt"):  # shared by the cell's containers
        assert one[f"{kind}ns"] == two[f"{kind}ns"]
    assert int(one["pid"]) != int(two["pid"])
    if cell.cgroup_version == 1:
        assert (one["memlimit"], two["memlimit"]) == (str(32 * MIB), str(48 * MIB))
        assert one["pidsmax"] == "20" and two["pidsmax"] == "max"
    else:
        assert (one["memmax"], two["memmax"]) == (str(32 * MIB), str(48 * MIB))
    assert started == {c.name: c.pid for c in cell.containers}
    assert {(pid, channel) for pid, channel, _ in lines} == {(started["one"], "stdout"), (started["two"], "stdout")}
    assert ("hostname=cell-a" in {line for _, _, line in lines})
    assert cell.cgroup_dirs and not any(os.path.exists(d) for d in cell.cgroup_dirs)
    assert list((tmp_path / "work" / "run").iterdir()) == []
    assert (rootfs / "bin" / "cellinfo").exists() and not os.listdir(rootfs / "proc")  # image untouched


async def test_the_memory_limit_is_enforced(support, rootfs, tmp_path):
    specs = [ContainerSpec("hog", rootfs, ["cellinfo", "alloc", "96"], memory_limit_bytes=16 * MIB),
             ContainerSpec("fine", rootfs, ["cellinfo", "alloc", "8"], memory_limit_bytes=64 * MIB)]
    cell = await run_or_unsupported(support, "cell-mem", specs, LIMITS, work_dir=tmp_path / "work")
    if cell is None:
        return
    hog, fine = cell.containers
    assert hog.outcome.status == ERROR and hog.outcome.signal == "SIGKILL" and hog.oom_killed
    assert "out of memory" in hog.outcome.message and "allocated" not in hog.outcome.stdout
    assert fine.outcome.status == COMPLETE and fine.outcome.stdout == "allocated 8 MiB\n" and not fine.oom_killed
    assert cell.status == ERROR and "container hog: killed by signal SIGKILL" in cell.message
    assert not any(os.path.exists(d) for d in cell.cgroup_dirs)


async def test_exit_codes_missing_commands_and_timeouts_in_a_cell(support, rootfs, tmp_path):
    specs = [ContainerSpec("code", rootfs, ["cellinfo", "exit", "7"]),
             ContainerSpec("missing", rootfs, ["/bin/not-in-the-image"]),
             ContainerSpec("slow", rootfs, ["cellinfo", "sleep", "20000"])]
    began = time.monotonic()
    cell = await run_or_unsupported(support, "cell-err", specs, Limits(timeout_seconds=0.5, grace_seconds=0.5),
                                    work_dir=tmp_path / "work")
    if cell is None:
        return
    assert time.monotonic() - began < 5
    code, missing, slow = cell.containers
    assert code.outcome.status == COMPLETE and code.outcome.exit_code == 7
    assert missing.outcome.status == ERROR and "/bin/not-in-the-image" in missing.outcome.message
    assert slow.outcome.timed_out and slow.outcome.status == ERROR and "timed out" in slow.outcome.message
    assert not any(os.path.exists(d) for d in cell.cgroup_dirs)


async def test_cancelling_a_cell_cleans_up(support, rootfs, tmp_path):
    if not support.usable:
        await run_or_unsupported(support, "cell-cancel", [ContainerSpec("s", rootfs, ["cellinfo"])], LIMITS,
                                 work_dir=tmp_path)
        return
    started = asyncio.Event()

    pids: list[int] = []

    async def on_start(name: str, pid: int) -> None:
        pids.append(pid)
        started.set()

    task = asyncio.create_task(run_cell("cell-cancel", [ContainerSpec("s", rootfs, ["cellinfo", "sleep", "20000"])],
                                        LIMITS, work_dir=tmp_path / "work", support=support, on_start=on_start))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for parent in support.cgroup_parents.values():
        assert not [p for p in os.listdir(parent) if p.startswith("teebus-cell-cancel-")]
    assert not alive(pids[0])  # the container's helper (and so its process group) is gone
    assert list((tmp_path / "work" / "run").iterdir()) == []


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a slow pid 1 to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


# -- images ------------------------------------------------------------------------------------

def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _tar(entries: list[tuple[str, bytes | None]] | None = None, tree: Path | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if tree is not None:
            tar.add(tree, arcname=".")
        for name, content in entries or []:
            member = tarfile.TarInfo(name)
            member.size = len(content or b"")
            tar.addfile(member, io.BytesIO(content or b""))
    return buffer.getvalue()


def _hardlink_tar(target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("etc/stolen")
        member.type, member.linkname = tarfile.LNKTYPE, target
        tar.addfile(member)
    return buffer.getvalue()


def build_layout(layout: Path, layers: list[tuple[bytes, str]], config: dict | None = None) -> Path:
    """An OCI image layout as `skopeo copy ... oci:DIR` writes one."""
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layer_descs = [{"mediaType": media, **_blob(layout, data)} for data, media in layers]
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(layout, json.dumps({"architecture": "amd64", "os": "linux",
                                               "config": config or {}}).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": layer_descs}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **_blob(layout, json.dumps(manifest).encode())}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    return layout


def two_layer_image(where: Path, rootfs: Path) -> Path:
    (rootfs / "etc" / "gone").write_text("deleted by the upper layer\n")
    (rootfs / "etc" / "old").mkdir()
    (rootfs / "etc" / "old" / "file").write_text("x")
    lower = gzip.compress(_tar(tree=rootfs))
    upper = _tar([("etc/.wh.gone", b""), ("etc/old/.wh..wh..opq", b""), ("etc/old/new", b"y"),
                  ("etc/marker", b"from the upper layer\n")])
    return build_layout(where / "layout", [(lower, "application/vnd.oci.image.layer.v1.tar+gzip"),
                                           (upper, "application/vnd.oci.image.layer.v1.tar")],
                        {"Cmd": ["/bin/cellinfo", "echo", "from-config"], "Env": ["GREETING=hi"]})


async def test_an_oci_layout_is_unpacked_once_with_whiteouts(rootfs, tmp_path):
    layout = two_layer_image(tmp_path, rootfs)
    image = await oci.resolve_image(layout, tmp_path / "work")
    root = image.rootfs
    assert root.parent == tmp_path / "work" / "images" and root.name.startswith("sha256-")
    assert (root / "bin" / "cellinfo").stat().st_mode & 0o111
    assert not (root / "etc" / "gone").exists()
    assert sorted(os.listdir(root / "etc" / "old")) == ["new"]
    assert (root / "etc" / "marker").read_text() == "from the upper layer\n"
    assert all((root / p).is_dir() for p in ("proc", "dev", "sys/fs/cgroup"))
    assert image.argv == ["/bin/cellinfo", "echo", "from-config"] and image.env == {"GREETING": "hi"}
    stamp = (root / "bin" / "cellinfo").stat().st_mtime_ns
    again = await oci.resolve_image(layout, tmp_path / "work")
    assert again.rootfs == root and (root / "bin" / "cellinfo").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "work" / "images").iterdir()] == [root.name]  # no leftovers


async def test_a_cell_runs_from_an_oci_layout(support, rootfs, tmp_path):
    layout = two_layer_image(tmp_path, rootfs)
    specs = [ContainerSpec("from-config", layout),  # the image config's Cmd
             ContainerSpec("explicit", layout, ["cellinfo", "info"], memory_limit_bytes=24 * MIB)]
    cell = await run_or_unsupported(support, "cell-oci", specs, LIMITS, work_dir=tmp_path / "work")
    if cell is None:
        return
    assert cell.status == COMPLETE, cell.message
    assert cell.containers[0].outcome.stdout == "from-config\n"
    seen = info(cell.containers[1].outcome.stdout)
    assert seen["marker"] == "from the upper layer" and seen["hostname"] == "cell-oci"
    assert seen.get("memlimit") == str(24 * MIB) or seen.get("memmax") == str(24 * MIB)


@pytest.mark.parametrize("breakage", ["relative", "nothing", "file", "version", "blob", "digest", "escape", "zstd",
                                      "hardlink", "abs-hardlink"])
async def test_bad_images_are_value_errors(breakage, rootfs, tmp_path):
    layout = tmp_path / "layout"
    if breakage == "relative":
        target: Path | str = "some/dir"
    elif breakage == "nothing":
        target = tmp_path / "absent"
    elif breakage == "file":
        target = rootfs / "etc" / "marker"
    else:
        layer = _tar([("../../escaped", b"x")]) if breakage == "escape" else _tar([("a", b"x")])
        if breakage in ("hardlink", "abs-hardlink"):
            layer = _hardlink_tar("../../../../../../etc/passwd" if breakage == "hardlink" else "/etc/passwd")
        media = "application/vnd.oci.image.layer.v1.tar+zstd" if breakage == "zstd" else \
            "application/vnd.oci.image.layer.v1.tar"
        build_layout(layout, [(layer, media)])
        blobs = sorted((layout / "blobs" / "sha256").iterdir())
        if breakage == "version":
            (layout / "oci-layout").write_text('{"imageLayoutVersion": "9"}')
        elif breakage == "blob":
            for blob in blobs:
                blob.unlink()
        elif breakage == "digest":
            for blob in blobs:
                blob.write_bytes(blob.read_bytes() + b" ")
        target = layout
    reasons = {"relative": "absolute", "nothing": "neither", "file": "neither", "version": "imageLayoutVersion",
               "blob": "missing", "digest": "does not match", "escape": "not a usable tar", "zstd": "zstd",
               "hardlink": "outside", "abs-hardlink": "outside"}
    with pytest.raises(ValueError, match=reasons[breakage]):
        await oci.resolve_image(target, tmp_path / "work")
    images = tmp_path / "work" / "images"
    assert not images.exists() or list(images.iterdir()) == []  # no half-unpacked copy left
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


async def test_bad_cell_arguments_are_value_errors(support, rootfs, tmp_path):
    with pytest.raises(ValueError):
        ContainerSpec("bad/name", rootfs, ["x"])
    with pytest.raises(ValueError):
        ContainerSpec("a", rootfs, ["x"], memory_limit_bytes=10)
    with pytest.raises(ValueError, match="hostname"):
        await run_cell("bad name", [ContainerSpec("a", rootfs, ["x"])], LIMITS, work_dir=tmp_path, support=support)
    with pytest.raises(ValueError, match="unique"):
        await run_cell("c", [ContainerSpec("a", rootfs, ["x"])] * 2, LIMITS, work_dir=tmp_path, support=support)
    if support.usable:
        with pytest.raises(ValueError, match="no command"):
            await run_cell("c", [ContainerSpec("a", rootfs)], LIMITS, work_dir=tmp_path, support=support)
        with pytest.raises(ValueError, match="registr"):
            await run_cell("c", [ContainerSpec("a", Path("docker.io/library/alpine"), ["sh"])], LIMITS,
                           work_dir=tmp_path, support=support)


def test_mountinfo_and_cgroup_parsing():
    text = ("30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory\n"
            "31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
            "32 25 0:28 / /mnt/with\\040space rw - cgroup cgroup rw,pids\n"
            "40 25 0:40 / /proc rw - proc proc rw\n")
    found = cells.mounts(text)
    assert [(m.point, m.fstype, m.options) for m in found] == [
        ("/sys/fs/cgroup/memory", "cgroup", ("rw", "memory")), ("/sys/fs/cgroup/unified", "cgroup2", ("rw",)),
        ("/mnt/with space", "cgroup", ("rw", "pids"))]
    assert cells.own_cgroups("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user.slice\n") == {
        "memory": "/a/b", "cpu": "/", "cpuacct": "/", "": "/user.slice"}
