"""The small helper a cell runs as: `python -I -S nsexec.py {probe|init|enter} '<json>'`.

Why a separate process and not `preexec_fn`: joining a pid namespace only affects the children
of the caller (setns/unshare with CLONE_NEWPID), so something has to fork after entering it; doing
that inside `subprocess`'s preexec hook would keep the spawn's error pipe open and block the event
loop for the container's whole life. Python 3.11 has no `os.unshare`/`os.setns`, hence ctypes.
This file imports nothing from teebus (it runs with `-I -S`, in a fresh interpreter).

Modes:
* `probe` -- can this host make the namespaces a cell needs? New pid/mount/uts/ipc namespaces
  (and a user namespace when not root), then in the child: pid 1, sethostname, a private mount
  tree, a fresh /proc, chroot. Exit 0, or print `error <what failed>` and exit 1.
* `init` -- the cell's namespace holder. Joins the cell's init cgroup, unshares the namespaces and
  forks pid 1 of the new pid namespace, which names itself `teebus-cell`, sets the cell's hostname,
  makes the mount tree private, binds each container's root filesystem onto its own view directory
  (so two containers of one image still get their own /proc, /dev and cgroup mounts) and mounts
  there /proc, a small /dev and the container's cgroup directory read-only (where the root
  filesystem has those directories). It prints `pid <host pid of pid 1>` and `ready` (or
  `error ...`), then reaps orphans until it is killed; its death ends the namespaces and, with
  them, every mount (nothing to unmount by hand).
* `enter` -- one container. Opens the container's cgroup.procs files, enters the holder's
  namespaces through /proc/<pid>/ns/*, chroots into its view and forks; the child joins the
  cgroup (through the descriptors opened before the chroot) and execs the command. The parent
  stays outside the pid namespace (so the pid it reports is the host's), ignores SIGTERM/SIGINT/
  SIGHUP (signals go to the whole process group, container included) and exits the way its child
  did: the same code, or killed by the same signal. On the status descriptor it writes
  `started <host pid>`, or `error ...` / `execfail ...` when the container never ran.
"""

import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CELL_NAMESPACES = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

INIT_NAME = b"teebus-cell"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def unshare(flags):
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd, what):
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(0)), "setns " + what)


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           "mount %s on %s" % (fstype or source, target))


def prctl(option, value):
    _check(_libc.prctl(ctypes.c_int(option), value, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl")


def sethostname(name):
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def join_cgroups(procs_files):
    """Move this process into each cgroup (before any fork, so every child starts inside)."""
    for path in procs_files:
        write_file(path, str(os.getpid()))


def map_user():
    """In a fresh user namespace, map our uid and gid to root inside (the only map allowed to
    an unprivileged process, and enough to mount and chroot within the cell)."""
    uid, gid = os.geteuid(), os.getegid()
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", "0 %d 1" % uid)
    write_file("/proc/self/gid_map", "0 %d 1" % gid)


def new_namespaces(user_ns):
    unshare(CELL_NAMESPACES | (CLONE_NEWUSER if user_ns else 0))
    if user_ns:
        map_user()


def say(fd, line):
    os.write(fd, (line + "\n").encode())


def relay_exit(status):
    """Exit the way the child did, so the caller reads the container's own code or signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


# -- probe -------------------------------------------------------------------------------------

def probe(spec):
    try:
        new_namespaces(spec.get("user_ns", False))
    except OSError as exc:
        say(1, "error cannot create namespaces: %s" % exc.strerror)
        return 1
    child = os.fork()
    if child == 0:
        os._exit(probe_child())
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def probe_child():
    try:
        if os.getpid() != 1:
            raise OSError(0, "the new pid namespace did not make its first process pid 1")
        sethostname("teebus-probe")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chroot("/")
    except OSError as exc:
        say(1, "error %s" % (exc.strerror or exc))
        return 1
    say(1, "ok")
    return 0


# -- init: the cell's namespace holder ---------------------------------------------------------

def init(spec):
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        join_cgroups(spec.get("cgroup_procs", []))
        new_namespaces(spec.get("user_ns", False))
    except OSError as exc:
        say(1, "error %s" % (exc.strerror or exc))
        return 1
    child = os.fork()
    if child == 0:
        os._exit(init_child(spec))
    say(1, "pid %d" % child)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def init_child(spec):
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_NAME, ctypes.c_char_p(INIT_NAME))
        sethostname(spec["hostname"])
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for view in spec.get("views", []):
            prepare_view(view)
    except OSError as exc:
        say(1, "error %s" % (exc.strerror or exc))
        return 1
    say(1, "ready")
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    reap_forever()
    return 0


def prepare_view(view):
    """Bind one container's root filesystem on its view and mount its /proc, /dev and cgroups."""
    root = view["view"]
    mount(view["rootfs"], root, None, MS_BIND | MS_REC)
    if os.path.isdir(os.path.join(root, "proc")):
        mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.isdir(os.path.join(root, "dev")):
        mount_devices(os.path.join(root, "dev"))
    cgroup_root = os.path.join(root, "sys", "fs", "cgroup")
    if os.path.isdir(cgroup_root) and view.get("cgroups"):
        mount_cgroups(cgroup_root, view["cgroups"], view.get("cgroup_version", 1))


def mount_devices(dev):
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        host = os.path.join("/dev", name)
        if not os.path.exists(host):
            continue
        target = os.path.join(dev, name)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o666))
        mount(host, target, None, MS_BIND)


def mount_cgroups(cgroup_root, cgroups, version):
    """v2: the container's cgroup directory is /sys/fs/cgroup; v1: one directory per controller
    under a small tmpfs. Read-only, so the container sees its limits but cannot raise them."""
    if version == 2:
        bind_readonly(cgroups["unified"], cgroup_root)
        return
    mount("tmpfs", cgroup_root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=64k")
    for controller, directory in sorted(cgroups.items()):
        target = os.path.join(cgroup_root, controller)
        os.mkdir(target, 0o755)
        bind_readonly(directory, target)


def bind_readonly(source, target):
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def reap_forever():
    """pid 1's duty: orphans of the cell are re-parented here and must be waited for."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        signal.sigtimedwait([signal.SIGCHLD], 5.0)


# -- enter: one container ----------------------------------------------------------------------

def enter(spec):
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    try:
        cgroups = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec.get("cgroup_procs", [])]
        enter_namespaces(spec["target"], spec.get("user_ns", False))
        os.chroot(spec["root"])
        os.chdir(spec.get("cwd") or "/")
    except OSError as exc:
        say(status_fd, "error %s" % (exc.strerror or exc))
        return 125
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        exec_container(spec["argv"], status_fd, cgroups)
        os._exit(127)
    for fd in cgroups:
        os.close(fd)
    say(status_fd, "started %d" % child)
    _, status = os.waitpid(child, 0)
    relay_exit(status)


def enter_namespaces(target, user_ns):
    """Open every namespace first (after the mount namespace changes, /proc may not be the same),
    then join them: user first, mount last, as nsenter does."""
    kinds = (["user"] if user_ns else []) + ["ipc", "uts", "pid", "mnt"]
    fds = [(kind, os.open("/proc/%d/ns/%s" % (target, kind), os.O_RDONLY | os.O_CLOEXEC)) for kind in kinds]
    for kind, fd in fds:
        setns(fd, kind)
        os.close(fd)


def exec_container(argv, status_fd, cgroups):
    """The container's process: joins its cgroup (only it: the helper's own memory is not the
    container's), restores default signal handling and execs the command."""
    try:
        for fd in cgroups:
            try:
                os.write(fd, b"0")  # "0": the writing process, whatever pid namespace it is in
            except OSError as exc:
                raise OSError(exc.errno, "cannot join the container's cgroup: %s" % exc.strerror)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        exec_search(argv)
    except OSError as exc:
        say(status_fd, "execfail cannot start %r: %s" % (argv[0], exc.strerror or exc))
    except BaseException as exc:
        say(status_fd, "execfail cannot start %r: %r" % (argv[0], exc))
    os._exit(127)


def exec_search(argv):
    """execvp without os.execvp, which imports `warnings` lazily -- from inside the chroot, where
    there is no Python library. Searches $PATH like a shell: the first executable found runs."""
    name = argv[0]
    if "/" in name:
        os.execv(name, argv)
    first_error = None
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            os.execv(os.path.join(directory or ".", name), argv)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            first_error = first_error or exc
    raise first_error or FileNotFoundError(2, "No such file or directory in $PATH")


def main(argv):
    if len(argv) != 3 or argv[1] not in ("probe", "init", "enter"):
        sys.stderr.write("usage: nsexec.py {probe|init|enter} JSON\n")
        return 2
    spec = json.loads(argv[2])
    return {"probe": probe, "init": init, "enter": enter}[argv[1]](spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
