"""Default socket and config paths per platform and privilege (DESIGN §5).

The daemon and the CLI agree on these so that `netmond` and `netmonctl` with
no flags find each other:
  root daemon   /var/run/netmond.sock (macOS), /run/netmond.sock (Linux)
  user daemon   $XDG_RUNTIME_DIR/netmond.sock, else a 0700 per-user directory
                under the temp dir (<tmp>/netmon-<uid>/netmond.sock)
"""

from __future__ import annotations

import os
import sys
import tempfile

SOCKET_NAME = "netmond.sock"
ENV_SOCKET = "NETMON_SOCKET"


def is_root() -> bool:
    """True when the effective uid is 0."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def system_socket_path() -> str:
    """Where a root daemon listens."""
    if sys.platform == "darwin":
        return "/var/run/" + SOCKET_NAME
    return "/run/" + SOCKET_NAME


def user_runtime_dir() -> str:
    """The per-user directory for a user daemon's socket (not created here)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return xdg
    return os.path.join(tempfile.gettempdir(), f"netmon-{os.getuid()}")


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


def resolve_client_socket(explicit: str | None = None) -> str:
    """The first candidate whose socket file exists, else the first candidate.

    A file that exists but has no listener is still returned: the client then
    reports "daemon not running" for that path, which is the useful message.
    """
    candidates = client_socket_candidates(explicit)
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]


def default_config_path() -> str:
    """/etc/netmon/netmond.toml for root, ~/.config/netmon/netmond.toml otherwise."""
    if is_root():
        return "/etc/netmon/netmond.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "netmon", "netmond.toml")
