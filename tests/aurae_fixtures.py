"""Fixtures and helpers for the Aurae tests: a static `cellinfo` binary and a tiny root filesystem
around it, for cells (the containers' command reports what it sees from inside)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CELLINFO_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void show_file(const char *label, const char *path) {
    char buf[256] = "";
    FILE *f = fopen(path, "r");
    if (f) { if (!fgets(buf, sizeof buf, f)) buf[0] = 0; fclose(f); }
    buf[strcspn(buf, "\n")] = 0;
    printf("%s=%s\n", label, f ? buf : "-");
}

static void show_link(const char *label, const char *path) {
    char buf[256];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    buf[n < 0 ? 0 : n] = 0;
    printf("%s=%s\n", label, n < 0 ? "-" : buf);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "info";
    if (!strcmp(mode, "info")) {
        char host[256] = "";
        gethostname(host, sizeof host);
        printf("pid=%d\nppid=%d\nhostname=%s\n", (int)getpid(), (int)getppid(), host);
        show_link("pidns", "/proc/self/ns/pid");
        show_link("utsns", "/proc/self/ns/uts");
        show_link("ipcns", "/proc/self/ns/ipc");
        show_link("mntns", "/proc/self/ns/mnt");
        show_file("init", "/proc/1/comm");
        show_file("memlimit", "/sys/fs/cgroup/memory/memory.limit_in_bytes");
        show_file("memmax", "/sys/fs/cgroup/memory.max");
        show_file("pidsmax", "/sys/fs/cgroup/pids/pids.max");
        show_file("hostfile", "/etc/passwd");
        show_file("marker", "/etc/marker");
        return 0;
    }
    if (!strcmp(mode, "alloc")) {
        long mib = argc > 2 ? atol(argv[2]) : 64;
        for (long i = 0; i < mib; i++) {
            char *p = malloc(1 << 20);
            if (!p) { printf("malloc failed at %ld MiB\n", i); return 3; }
            memset(p, 1, 1 << 20);
        }
        printf("allocated %ld MiB\n", mib);
        return 0;
    }
    if (!strcmp(mode, "sleep")) { usleep(atoi(argc > 2 ? argv[2] : "100") * 1000); return 0; }
    if (!strcmp(mode, "exit")) return atoi(argc > 2 ? argv[2] : "0");
    if (!strcmp(mode, "echo")) { for (int i = 2; i < argc; i++) printf("%s\n", argv[i]); return 0; }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
"""


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cellinfo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static `cellinfo` binary: runs in an empty root filesystem, needs no libraries."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the containers' static test binary")
    build = tmp_path_factory.mktemp("cellinfo")
    (build / "cellinfo.c").write_text(CELLINFO_C)
    result = subprocess.run(["gcc", "-static", "-O1", "-o", str(build / "cellinfo"), str(build / "cellinfo.c")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot build a static binary here (no static libc?): {result.stderr[-300:]}")
    return build / "cellinfo"


def make_rootfs(where: Path, cellinfo: Path) -> Path:
    root = where / "rootfs"
    for directory in ("bin", "proc", "dev", "sys/fs/cgroup", "etc", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(cellinfo, root / "bin" / "cellinfo")
    (root / "etc" / "marker").write_text("from the rootfs\n")
    return root


@pytest.fixture
def rootfs(tmp_path: Path, cellinfo: Path) -> Path:
    return make_rootfs(tmp_path, cellinfo)


def info(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
