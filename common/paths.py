"""Default socket and config paths per platform and privilege (docs/DESIGN.md §5).

The daemon and the CLI agree on these so that `netmond` and `netmonctl` with
no flags find each other:
  root daemon   /var/run/netmond.sock (macOS), /run/netmond.sock (Linux)
  user daemon   $XDG_RUNTIME_DIR/netmond.sock, else a 0700 per-user directory
                under the temp dir (<tmp>/netmon-<uid>/netmond.sock); if
                another user created that name first (anyone may create
                names in /tmp), ~/.netmon/netmond.sock instead.

Trust (issue 10): netmonctl only talks to a socket that the user it expects
controls. `socket_trust_problem` walks every component of a socket path with
lstat: each directory and symlink on the way must belong to root or to a
trusted user, and no directory may be writable by others unless it is
sticky (then they cannot rename or replace what is not theirs). The daemon
checks its own socket directory with the same walk (netmond.listener).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile

SOCKET_NAME = "netmond.sock"
ENV_SOCKET = "NETMON_SOCKET"


def is_root() -> bool:
    """True when the effective uid is 0."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def system_socket_path(os_name: str | None = None) -> str:
    """Where a root daemon listens on `os_name` (a sys.platform value; default: here)."""
    if (sys.platform if os_name is None else os_name) == "darwin":
        return "/var/run/" + SOCKET_NAME
    return "/run/" + SOCKET_NAME


def user_runtime_dir() -> str:
    """The per-user directory for a user daemon's socket (not created here).

    $XDG_RUNTIME_DIR, else <tmp>/netmon-<uid> unless another user (or a
    symlink) holds that name already, else ~/.netmon: a name in /tmp can be
    claimed by anyone first, one in the home directory only by its owner.
    Daemon and client compute the same answer from the same files.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return xdg
    tmp = os.path.join(tempfile.gettempdir(), f"netmon-{os.getuid()}")
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return tmp
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
        return tmp
    return os.path.join(os.path.expanduser("~"), ".netmon")


def user_socket_path() -> str:
    """Where a user daemon listens."""
    return os.path.join(user_runtime_dir(), SOCKET_NAME)


def default_daemon_socket() -> str:
    """The socket path netmond uses without --socket."""
    return system_socket_path() if is_root() else user_socket_path()


def client_socket_candidates(explicit: str | None = None) -> list[str]:
    """Paths netmonctl tries, in order: --socket, NETMON_SOCKET, user, system."""
    if explicit:
        return [explicit]
    env = os.environ.get(ENV_SOCKET)
    if env:
        return [env]
    out = [user_socket_path(), system_socket_path()]
    return list(dict.fromkeys(out))


def socket_named_explicitly(explicit: str | None = None) -> bool:
    """True when the user named the socket (--socket or NETMON_SOCKET)."""
    return bool(explicit or os.environ.get(ENV_SOCKET))


def resolve_client_socket(explicit: str | None = None) -> str:
    """The first candidate whose socket file exists and can be trusted, else
    the first that exists, else the first candidate.

    A file that exists but has no listener is still returned: the client then
    reports "daemon not running" for that path, which is the useful message.
    A default candidate that another user controls (say /tmp/netmon-0 made
    by someone else) is passed over for the next one; if it is the only one
    that exists, it is returned and the client refuses it with the reason.
    """
    candidates = client_socket_candidates(explicit)
    existing = [p for p in candidates if os.path.lexists(p)]
    if not socket_named_explicitly(explicit):
        for path in existing:
            if socket_trust_problem(path) is None:
                return path
    return existing[0] if existing else candidates[0]


def trusted_uids() -> set[int]:
    """Users a client (or daemon) trusts with its socket: root and itself."""
    return {0, os.geteuid(), os.getuid()}


def _walk_problem(path: str, trusted: set[int], depth: int) -> str | None:
    """Why `path` (a directory, symlinks allowed) is not safe from others, or None."""
    if depth > 20:
        return f"{path}: too many levels of symbolic links"
    parts = [p for p in os.path.abspath(path).split(os.sep) if p]
    current = os.sep
    for name in ["", *parts]:
        current = os.path.join(current, name) if name else current
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None  # not there (yet): nothing to trust or distrust
        except OSError as exc:
            return f"{current}: {exc.strerror or exc}"
        if st.st_uid not in trusted:
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory"
            return f"{current} is {kind} that belongs to uid {st.st_uid}"
        if stat.S_ISLNK(st.st_mode):
            target = os.path.join(os.path.dirname(current), os.readlink(current))
            rest = os.path.relpath(os.path.abspath(path), current)
            full = os.path.normpath(os.path.join(target, rest)) if rest != "." else target
            return _walk_problem(full, trusted, depth + 1)
        if not stat.S_ISDIR(st.st_mode):
            return f"{current} is not a directory"
        mode = stat.S_IMODE(st.st_mode)
        # Group write is trusted on root's directories only (macOS /var/run
        # is root:daemon 0775); the sticky bit (/tmp) keeps others from
        # renaming or replacing entries that are not theirs.
        risky = 0o002 if st.st_uid == 0 else 0o022
        if mode & risky and not mode & stat.S_ISVTX:
            return f"{current} is writable by other users (mode {mode:04o})"
    return None


def directory_trust_problem(directory: str, trusted: set[int] | None = None) -> str | None:
    """Why another user could replace what is in `directory`, or None if none can.

    Every component is checked with lstat; a symlink is allowed only if a
    trusted user owns it, and its target is checked in turn.
    """
    return _walk_problem(directory, trusted if trusted is not None else trusted_uids(), 0)


def socket_trust_problem(path: str, explicit: bool = False) -> str | None:
    """Why netmonctl must not talk to the socket at `path`, or None.

    Its directories (directory_trust_problem) and the socket itself must
    belong to root or to the caller. A socket the user named explicitly
    may also belong to its owner: the user chose that daemon, but its
    directories must still be safe from everybody else.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None  # absent: connecting will say so
    trusted = trusted_uids()
    if explicit:
        trusted.add(st.st_uid)
    problem = directory_trust_problem(os.path.dirname(os.path.abspath(path)), trusted)
    if problem is not None:
        return problem
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in trusted:
            return f"{path} is a symlink that belongs to uid {st.st_uid}"
        target = os.path.realpath(path)
        if os.path.islink(target):
            return f"{path}: too many levels of symbolic links"
        return socket_trust_problem(target, explicit)
    # A file that is not a socket is left to connect() ("not a socket"):
    # only who controls it is a question of trust.
    if st.st_uid not in trusted:
        return f"{path} belongs to uid {st.st_uid}"
    return None


# -- per-user files (XDG base directories) ------------------------------------------


def xdg_home(var: str, fallback: str) -> str:
    """$var (XDG_CONFIG_HOME, ...) if set to an absolute path, else `fallback` (~ expanded).

    The XDG spec: relative values are invalid and must be ignored.
    """
    base = os.environ.get(var)
    return base if base and os.path.isabs(base) else os.path.expanduser(fallback)


def config_dir() -> str:
    """~/.config/netmon, or under $XDG_CONFIG_HOME (netmond.toml, hosts.toml)."""
    return os.path.join(xdg_home("XDG_CONFIG_HOME", "~/.config"), "netmon")


def state_dir() -> str:
    """~/.local/state/netmon, or under $XDG_STATE_HOME (fleet.json)."""
    return os.path.join(xdg_home("XDG_STATE_HOME", "~/.local/state"), "netmon")


def cache_dir() -> str:
    """~/.cache/netmon, or under $XDG_CACHE_HOME (ssh ControlMaster sockets)."""
    return os.path.join(xdg_home("XDG_CACHE_HOME", "~/.cache"), "netmon")


def default_config_path() -> str:
    """/etc/netmon/netmond.toml for root, ~/.config/netmon/netmond.toml otherwise."""
    if is_root():
        return "/etc/netmon/netmond.toml"
    return os.path.join(config_dir(), "netmond.toml")


ENV_DATA_DIR = "NETMON_DATA_DIR"


def default_data_dir() -> str:
    """Where netmond keeps usage over days without --data-dir: $NETMON_DATA_DIR
    if set, else /var/lib/netmon for root (macOS /var/db/netmon),
    $XDG_DATA_HOME/netmon (~/.local/share/netmon) otherwise."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return os.path.abspath(env)
    if is_root():
        return "/var/db/netmon" if sys.platform == "darwin" else "/var/lib/netmon"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "netmon")
