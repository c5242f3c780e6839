"""The daemon's listening socket: safe creation, stale files, socket activation.

- The socket file gets its final mode before listen() (bound under a umask,
  then chmod), so there is no window in which other users can connect:
  0600 for a user daemon; 0660 with a configured group for a root daemon.
- Its directory is created 0700 when it is our private one (the per-user temp
  dir), and refused if it exists but belongs to someone else.
- A socket file that exists is only replaced after a connect() to it fails
  (stale, from a daemon killed with SIGKILL); if another daemon answers, we
  refuse to start and leave it alone.
- Service managers may hand us the listening socket: systemd through
  LISTEN_FDS/LISTEN_PID (fd 3), launchd through launch_activate_socket().
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import logging
import os
import socket
import stat
import sys

from common import paths

log = logging.getLogger("netmond.listener")

SD_LISTEN_FDS_START = 3
LAUNCHD_SOCKET_NAME = "Listeners"


class SocketInUse(RuntimeError):
    """Another daemon answers on the socket path."""


def _ensure_directory(directory: str) -> None:
    private = directory == paths.user_runtime_dir() and not os.environ.get("XDG_RUNTIME_DIR")
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700 if private else 0o755, exist_ok=True)
    if private:
        st = os.lstat(directory)
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{directory} is not a directory owned by us; refusing to use it")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(directory, 0o700)


def _another_daemon_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        # Timeout or permission: something is there; do not take it over.
        return True
    finally:
        probe.close()


def apply_socket_mode(path: str, group: str | int | None) -> None:
    """0600, or 0660 owned by `group` when one is configured."""
    if group is None:
        os.chmod(path, 0o600)
        return
    gid = int(group) if isinstance(group, int) or str(group).isdigit() else grp.getgrnam(group).gr_gid
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)


def default_group() -> str | None:
    """The group of a root daemon's socket when none is configured (macOS: admin)."""
    if paths.is_root() and sys.platform == "darwin":
        return "admin"
    return None


def bind_unix_socket(path: str, group: str | int | None = None, backlog: int = 128) -> socket.socket:
    """Create, secure and listen on the daemon socket at path."""
    if group is None:
        group = default_group()
    _ensure_directory(os.path.dirname(path) or ".")
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        if _another_daemon_answers(path):
            raise SocketInUse(f"another netmond is already listening on {path}; not starting")
        log.warning("removing stale socket %s (its daemon is gone)", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the file is born 0600: no window before chmod
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        apply_socket_mode(path, group)
        sock.listen(backlog)
    except (OSError, KeyError) as exc:
        sock.close()
        os.unlink(path)
        raise OSError(f"cannot secure {path}: {exc}") from None
    sock.setblocking(False)
    return sock


def socket_file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the socket file, to recognise it as ours at exit."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove_socket(path: str, file_id: tuple[int, int] | None) -> None:
    """Remove our socket file at shutdown, unless another daemon replaced it."""
    if file_id is not None and socket_file_id(path) == file_id:
        try:
            os.unlink(path)
        except OSError:
            pass


def systemd_socket() -> socket.socket | None:
    """The socket systemd passed us (LISTEN_FDS), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # children must not think they were activated
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.setblocking(False)
    if count > 1:
        log.warning("systemd passed %d sockets; using the first", count)
    return sock


def launchd_socket() -> socket.socket | None:
    """The socket launchd passed us (plist Sockets key 'Listeners'), or None."""
    if sys.platform != "darwin":
        return None
    libc_path = ctypes.util.find_library("c")
    if not libc_path:
        return None
    libc = ctypes.CDLL(libc_path)
    func = getattr(libc, "launch_activate_socket", None)
    if func is None:
        return None
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    func.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int)), ctypes.POINTER(ctypes.c_size_t)]
    err = func(LAUNCHD_SOCKET_NAME.encode(), ctypes.byref(fds), ctypes.byref(count))
    if err != 0 or count.value < 1:
        return None  # not launched by launchd with a Sockets key (ESRCH/ENOENT)
    fd = fds[0]
    libc.free(fds)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def inherited_socket() -> socket.socket | None:
    """A listening socket handed over by systemd or launchd, if any."""
    return systemd_socket() or launchd_socket()
