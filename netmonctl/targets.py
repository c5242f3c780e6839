"""Where a daemon is: a local socket or a socket on an ssh host (`-H`, hosts.toml).

    unix:///run/netmond.sock              a local socket
    ssh://[user@]host[:port][/socket]     netmond on another machine, over ssh

`parse_url` validates a URL into a Target; netmonctl.fleetfile adds the
host names of hosts.toml (`resolve`), netmonctl.transport connects to a
Target. Nothing here touches the network or a file.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from common.errors import UsageProblem

#: Host names in hosts.toml (also what `-H` accepts without a scheme).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_CONTROL_CHARS = re.compile(r"[\x00-\x20\x7f]")

class TargetError(UsageProblem):
    """A `-H` value or hosts.toml entry that cannot be used; the message says why."""


@dataclass(frozen=True)
class Target:
    """One daemon to talk to: a local socket, or a socket on an ssh host.

    `socket`: the Unix socket path (for ssh: on the remote machine; None lets
    the remote netmonctl pick as it would locally, NETMON_SOCKET included).
    `remote_command`: shell words that run netmonctl remotely.
    `ssh_options`: extra ssh arguments from a hosts.toml entry.
    """

    scheme: str  # "ssh" | "unix"
    host: str = ""
    user: str | None = None
    port: int | None = None
    socket: str | None = None
    remote_command: str | None = None
    ssh_options: tuple[str, ...] = field(default_factory=tuple)
    name: str | None = None

    @property
    def url(self) -> str:
        """The target as a URL (never with secrets: we refuse them)."""
        if self.scheme == "unix":
            return f"unix://{self.socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{host}{port}{self.socket or ''}"

    @property
    def label(self) -> str:
        """How messages name it: the hosts.toml name, else the URL."""
        return self.name or self.url

    def ssh_login(self) -> list[str]:
        """`ssh` arguments that reach the host as the user would type them (for hints)."""
        argv = ["ssh"]
        if self.port:
            argv += ["-p", str(self.port)]
        argv.append(f"{self.user}@{self.host}" if self.user else self.host)
        return argv



def parse_url(
    url: str,
    *,
    name: str | None = None,
    socket_path: str | None = None,
    remote_command: str | None = None,
    ssh_options: tuple[str, ...] = (),
) -> Target:
    """A Target from `ssh://[user@]host[:port][/socket]` or `unix:///path`.

    Refused: passwords (use keys or the agent), queries and fragments (we
    would silently ignore them), and hosts or users starting with `-`
    (ssh would read them as options). `socket_path` overrides the URL's path.
    """
    if "?" in url or "#" in url:
        raise TargetError(f"{url}: queries and fragments are not supported in a host URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"{url}: {exc}") from None
    scheme = parts.scheme.lower()
    path = unquote(parts.path) if parts.path not in ("", "/") else None
    if socket_path is not None:
        path = socket_path
    if path is not None and (not path.startswith("/") or _CONTROL_CHARS.search(path.replace(" ", "x"))):
        raise TargetError(f"{url}: the socket path must be absolute, without control characters")
    if remote_command is not None:
        try:
            if not shlex.split(remote_command):
                raise ValueError("empty")
        except ValueError as exc:
            raise TargetError(f"remote_command {remote_command!r}: not valid shell words ({exc})") from None
    if scheme == "unix":
        if parts.netloc or path is None:
            raise TargetError(f"{url}: write a local socket as unix:///absolute/path")
        return Target("unix", socket=path, name=name)
    if scheme != "ssh":
        raise TargetError(
            f"{url}: unsupported scheme {parts.scheme!r} (use ssh://[user@]host[:port][/socket] "
            "or unix:///path)"
        )
    if parts.password is not None:
        raise TargetError(f"{url}: passwords in URLs are refused; use an ssh key or the ssh agent")
    host = unquote(parts.hostname or "")
    user = unquote(parts.username) if parts.username else None
    if not host:
        raise TargetError(f"{url}: no host name")
    if host.startswith("-") or (user or "").startswith("-"):
        raise TargetError(f"{url}: a host or user starting with '-' is refused (ssh would read an option)")
    if _CONTROL_CHARS.search(host) or (user is not None and _CONTROL_CHARS.search(user)):
        raise TargetError(f"{url}: spaces or control characters in the host or user")
    return Target(
        "ssh",
        host=host,
        user=user,
        port=port,
        socket=path,
        remote_command=remote_command,
        ssh_options=tuple(ssh_options),
        name=name,
    )
