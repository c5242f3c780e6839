"""The daemon's listening socket: safe creation, stale files, socket activation.

- The socket file gets its final mode before listen() (bound under a umask,
  then chmod), so there is no window in which other users can connect:
  0600 for a user daemon; 0660 with a configured group for a root daemon.
- Its directory is created if missing (0700 for a user daemon, 0755 for root,
  whose group members must reach the socket) and refused if someone else
  could swap the socket under us: owned by another user, or writable by
  others without the sticky bit. The per-user temp dir is kept at 0700.
- A socket file that exists is only replaced after a connect() to it fails
  (stale, from a daemon killed with SIGKILL); if another daemon answers, we
  refuse to start and leave it alone.
- Service managers may hand us the listening socket: systemd through
  LISTEN_FDS/LISTEN_PID (fd 3), launchd through launch_activate_socket().
  Only a listening AF_UNIX stream socket is accepted: netmond never serves
  on the network, whatever a unit file says.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

from common import paths

from . import platform
from .peercred import resolve_group

log = logging.getLogger("netmond.listener")

SD_LISTEN_FDS_START = 3
LAUNCHD_SOCKET_NAME = "Listeners"


class SocketInUse(RuntimeError):
    """Another daemon answers on the socket path."""


class UnsafeDirectory(OSError):
    """The socket's directory could let another user replace our socket."""


def ensure_directory(directory: str) -> None:
    """Create the socket's directory if needed; refuse one others control.

    Every component of the path is checked with lstat (common.paths.
    directory_trust_problem), not stat: `--socket /tmp/link/n.sock` where
    /tmp/link is another user's symlink to a root directory was accepted
    before, and its owner could re-point the link later and answer root's
    clients. Symlinks and directories on the way must belong to root or to
    us, and none may be writable by others unless sticky.
    """
    trusted = {0, os.geteuid()}
    private = directory == paths.user_runtime_dir() and not os.environ.get("XDG_RUNTIME_DIR")
    parent = os.path.dirname(os.path.abspath(directory))
    problem = paths.directory_trust_problem(parent, trusted)
    if problem is None and not os.path.lexists(directory):
        try:
            os.makedirs(directory, mode=0o755 if paths.is_root() else 0o700, exist_ok=True)
        except OSError as exc:
            raise UnsafeDirectory(
                f"cannot create the socket directory {directory}: {exc.strerror or exc}; "
                "create it, or choose another place with --socket PATH"
            ) from None
    if problem is None:
        problem = paths.directory_trust_problem(directory, trusted)
    if problem is None and private:
        st = os.lstat(directory)
        # Our private dir must be ours alone; elsewhere root's directories are fine.
        if stat.S_ISLNK(st.st_mode):
            problem = f"{directory} is a symlink"
        elif st.st_uid != os.geteuid():
            problem = f"{directory} belongs to uid {st.st_uid}"
        elif stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(directory, 0o700)
    if problem is not None:
        raise UnsafeDirectory(
            f"{problem}: another user could replace the socket there; refusing to put it in "
            f"{directory}. Use a directory only you (or root) control, with --socket PATH"
        )
    if not os.path.isdir(directory):
        raise UnsafeDirectory(f"{directory} is not a directory; choose another place with --socket PATH")


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
    """0600, or 0660 owned by `group` when one is configured (or by default_group())."""
    if group is None:
        group = default_group()
    if group is None:
        os.chmod(path, 0o600)
        return
    os.chown(path, -1, resolve_group(group))
    os.chmod(path, 0o660)


def default_group() -> str | None:
    """The group of a root daemon's socket when none is configured (macOS: admin)."""
    return platform.system_socket_group() if paths.is_root() else None


def bind_unix_socket(path: str, group: str | int | None = None, backlog: int = 128) -> socket.socket:
    """Create, secure and listen on the daemon socket at path."""
    ensure_directory(os.path.dirname(os.path.abspath(path)))
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
    except OSError as exc:
        sock.close()
        raise OSError(_bind_failure(path, exc)) from None
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


def _bind_failure(path: str, exc: OSError) -> str:
    """A bind() error as one line: the path, why, and what to do."""
    directory = os.path.dirname(os.path.abspath(path))
    where = os.path.dirname(paths.system_socket_path()) if paths.is_root() \
        else "$XDG_RUNTIME_DIR or your home directory"
    if isinstance(exc, PermissionError) or not os.access(directory, os.W_OK):
        why = f"directory {directory} is not writable by uid {os.geteuid()}"
    else:
        why = exc.strerror or str(exc)
    return (f"cannot create the socket {path}: {why}; choose a path in a directory netmond may write "
            f"(e.g. {where}) with --socket PATH")


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


def _checked_listener(sock: socket.socket, origin: str) -> socket.socket | None:
    """The inherited socket if it is a listening Unix stream socket, else None."""
    try:
        ok = (
            sock.family == socket.AF_UNIX
            and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        ok = False
    if not ok:
        log.error("%s passed a socket that is not a listening Unix stream socket; "
                  "ignoring it and binding the path", origin)
        sock.detach()  # not ours to close: it belongs to the service manager
        return None
    sock.setblocking(False)
    return sock


def systemd_socket() -> socket.socket | None:
    """The socket systemd passed us (LISTEN_FDS, first fd 3), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    fds = os.environ.get("LISTEN_FDS", "0")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # children must not think they were activated
    count = int(fds) if fds.isdigit() else 0
    if count < 1:
        return None
    if count > 1:
        log.warning("systemd passed %d sockets; using the first", count)
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        log.error("LISTEN_FDS is set but fd %d is unusable (%s); binding the path",
                  SD_LISTEN_FDS_START, exc)
        return None
    return _checked_listener(sock, "systemd")


def launchd_socket(libc: object | None = None) -> socket.socket | None:
    """The socket launchd passed us (plist Sockets key "Listeners"), or None.
    `libc` is for tests (platform.launch_activate_socket)."""
    fds = platform.launch_activate_socket(LAUNCHD_SOCKET_NAME, libc)
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)  # one listener is all we serve; do not leak the rest
    return _checked_listener(socket.socket(fileno=fds[0]), "launchd")


def inherited_socket() -> socket.socket | None:
    """A listening socket handed over by systemd or launchd, if any."""
    return systemd_socket() or launchd_socket()
