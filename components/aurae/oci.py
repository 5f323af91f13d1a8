"""A container's root filesystem from what `runtime.Container.image` names: a local directory.

Aurae's documentation says RunCell "will always pull the image"; teebus never pulls from a
registry. `image` is either
* a root filesystem directory, used in place (the container writes into it), or
* an OCI image layout directory (`oci-layout` + `index.json` + `blobs/`, as `skopeo copy
  ... oci:DIR` or `docker buildx --output type=oci` write it): index -> manifest (one per host
  platform is picked; a nested index is followed) -> layers, each a tar or tar+gzip blob whose
  digest is checked, unpacked in order into `<work_dir>/images/<manifest digest>` once and reused.

Layers are applied simply: a whiteout `.wh.NAME` removes NAME from the layers below, an opaque
`.wh..wh..opq` empties its directory first; device nodes are skipped (the cell mounts its own /dev);
nothing is written outside the root filesystem (tarfile's `tar` filter, plus a check on hard link
targets); owners are numeric and modes kept (setuid included). An unpacked image gets empty
`proc`, `dev` and `sys/fs/cgroup` directories so the cell can mount them.

A bad path or layout is a ValueError with the reason (the caller's INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import posixpath
import secrets
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MAX_JSON_BYTES = 4 * 1024 * 1024
MOUNT_POINTS = ("proc", "dev", "sys/fs/cgroup")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64"}

_unpacking: dict[str, asyncio.Lock] = {}


@dataclass(frozen=True)
class Image:
    """A resolved image: where its root filesystem is, and the OCI config's defaults (if any)."""

    rootfs: Path
    argv: list[str] = field(default_factory=list)    # Entrypoint + Cmd
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    digest: str | None = None                         # the manifest's, for an OCI layout


async def resolve_image(image: str | os.PathLike[str], work_dir: Path) -> Image:
    """The root filesystem for `image`, unpacking an OCI layout (off the event loop) if needed."""
    path = Path(image)
    if not path.is_absolute():
        raise ValueError(f"the image must be an absolute local path (no registry pulls), not {str(image)!r}")
    if (path / "oci-layout").is_file():
        return await _resolve_layout(path, work_dir)
    if not path.is_dir():
        raise ValueError(f"the image {str(path)!r} is neither a root filesystem directory nor an OCI image "
                         "layout (teebus does not pull from registries)")
    if path.resolve() == Path("/"):
        raise ValueError("the image cannot be the host's own root directory")
    return Image(rootfs=path)


async def _resolve_layout(layout: Path, work_dir: Path) -> Image:
    manifest_desc, manifest = await asyncio.to_thread(read_manifest, layout)
    config = await asyncio.to_thread(_read_config, layout, manifest)
    digest = manifest_desc["digest"]
    target = work_dir / "images" / digest.replace(":", "-")
    lock = _unpacking.setdefault(digest, asyncio.Lock())
    async with lock:
        if not target.is_dir():
            await asyncio.to_thread(unpack, layout, manifest, target)
    return Image(rootfs=target, digest=digest, **config)


def read_manifest(layout: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the layout and return the host platform's manifest (descriptor, parsed)."""
    try:
        version = json.loads((layout / "oci-layout").read_text()).get("imageLayoutVersion")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{layout}: oci-layout is not readable JSON ({exc})") from None
    if version != "1.0.0":
        raise ValueError(f"{layout}: unsupported imageLayoutVersion {version!r} (expected '1.0.0')")
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{layout}: index.json is missing or not JSON ({exc})") from None
    for _ in range(3):  # an index may name an index (multi-platform images); follow a little way
        desc = _pick(layout, index)
        if desc.get("mediaType") in INDEX_TYPES:
            index = read_blob_json(layout, desc)
            continue
        return desc, read_blob_json(layout, desc)
    raise ValueError(f"{layout}: image indexes nest too deeply")


def _pick(layout: Path, index: dict[str, Any]) -> dict[str, Any]:
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)
                 and ("mediaType" not in m or m["mediaType"] in MANIFEST_TYPES | INDEX_TYPES)]
    if not manifests:
        raise ValueError(f"{layout}: index.json lists no image manifest")
    arch = ARCHES.get(platform.machine(), platform.machine())
    fitting = [m for m in manifests if _fits(m.get("platform"), arch)]
    if not fitting:
        raise ValueError(f"{layout}: no manifest for linux/{arch}")
    return fitting[0]


def _fits(plat: Any, arch: str) -> bool:
    if not isinstance(plat, dict):
        return True
    return plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch


def blob_path(layout: Path, desc: dict[str, Any]) -> Path:
    digest = desc.get("digest")
    if not isinstance(digest, str) or ":" not in digest:
        raise ValueError(f"{layout}: a descriptor has no digest")
    algorithm, hexpart = digest.split(":", 1)
    if algorithm not in ("sha256", "sha512") or not hexpart.isalnum():
        raise ValueError(f"{layout}: unsupported digest {digest!r}")
    path = layout / "blobs" / algorithm / hexpart
    if not path.is_file():
        raise ValueError(f"{layout}: blob {digest} is missing")
    return path


def verify_blob(layout: Path, desc: dict[str, Any]) -> Path:
    """The blob's path, after checking that its content has the digest it is named by."""
    path = blob_path(layout, desc)
    algorithm, expected = desc["digest"].split(":", 1)
    with path.open("rb") as stream:
        actual = hashlib.file_digest(stream, algorithm).hexdigest()
    if actual != expected:
        raise ValueError(f"{layout}: blob {desc['digest']} does not match its digest ({algorithm}:{actual})")
    return path


def read_blob_json(layout: Path, desc: dict[str, Any]) -> dict[str, Any]:
    path = verify_blob(layout, desc)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{layout}: blob {desc['digest']} is too large for JSON")
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{layout}: blob {desc['digest']} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{layout}: blob {desc['digest']} is not a JSON object")
    return data


def _read_config(layout: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Entrypoint + Cmd, Env and WorkingDir from the image config (all optional)."""
    desc = manifest.get("config")
    if not isinstance(desc, dict):
        return {}
    conf = read_blob_json(layout, desc).get("config") or {}
    argv = [str(a) for a in (conf.get("Entrypoint") or []) + (conf.get("Cmd") or [])]
    env = dict(item.split("=", 1) for item in conf.get("Env") or [] if isinstance(item, str) and "=" in item)
    return {"argv": argv, "env": env, "cwd": conf.get("WorkingDir") or "/"}


def unpack(layout: Path, manifest: dict[str, Any], target: Path) -> None:
    """Apply every layer into a fresh directory, then rename it into place (a concurrent unpack of
    the same image by another process loses the rename and its copy is dropped)."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{layout}: the manifest has no layers list")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.{secrets.token_hex(4)}"
    scratch.mkdir(mode=0o755)
    try:
        for desc in layers:
            apply_layer(verify_blob(layout, desc), str(desc.get("mediaType", "")), scratch)
        for point in MOUNT_POINTS:
            (scratch / point).mkdir(parents=True, exist_ok=True)
        os.rename(scratch, target)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if not target.is_dir():
            raise ValueError(f"{layout}: cannot unpack the image ({exc})") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def apply_layer(blob: Path, media_type: str, rootfs: Path) -> None:
    """One layer: whiteouts first (they delete from the layers below), then the files."""
    if "zstd" in media_type:
        raise ValueError(f"layer {blob.name}: zstd layers are not supported ({media_type})")
    try:
        with tarfile.open(blob, "r:*") as tar:
            members = tar.getmembers()
            for whiteout in (m for m in members if _is_whiteout(m.name)):
                _apply_whiteout(rootfs, _clean(whiteout.name))
            files = [m for m in members if not _is_whiteout(m.name) and not (m.ischr() or m.isblk())]
            tar.extractall(str(rootfs), members=files, numeric_owner=True, filter=_layer_filter)
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"layer {blob.name} is not a usable tar archive: {exc}") from None


def _clean(name: str) -> str:
    parts = [p for p in posixpath.normpath("/" + name).split("/") if p]
    return "/".join(parts)


def _is_whiteout(name: str) -> bool:
    return posixpath.basename(_clean(name)).startswith(".wh.")


def _inside(rootfs: Path, path: str) -> bool:
    root = os.path.realpath(rootfs)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _apply_whiteout(rootfs: Path, name: str) -> None:
    parent, base = posixpath.split(name)
    directory = os.path.join(rootfs, parent)
    if not _inside(rootfs, directory) or not os.path.isdir(directory):
        return  # nothing of ours to delete there
    if base == ".wh..wh..opq":
        for entry in os.listdir(directory):
            _remove(os.path.join(directory, entry))
    else:
        _remove(os.path.join(directory, base[len(".wh."):]))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _layer_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's `tar` filter (no path outside `dest`), hard links kept inside too, modes kept,
    and whatever the layer replaces (a file by a link, a directory by a file) removed first."""
    safe = tarfile.tar_filter(member, dest)
    if member.islnk() and not _inside(Path(dest), os.path.join(dest, member.linkname)):  # as tarfile joins it
        raise tarfile.OutsideDestinationError(member, os.path.join(dest, member.linkname))
    target = os.path.join(dest, _clean(safe.name))
    if os.path.islink(target) or (os.path.isdir(target) and not member.isdir()):
        _remove(target)
    return safe.replace(mode=member.mode, deep=False) if member.mode is not None else safe
