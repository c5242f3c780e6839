"""What the global options decided, and the one daemon connection per command.

`Settings` lives in the click context object: the root group fills it from
the global options and the per-command output options refine it. Commands
reach the daemon through `connect()`, which says `hello` first, and call the
client's typed methods (`daemon.connections(flt)`; common.api describes them).
The client (and so msgpack) is imported only here, only when a command runs.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import click

from . import render

if TYPE_CHECKING:  # pragma: no cover
    from common.client import Client

#: Output formats of --format (`--json` is short for `--format json`).
FORMATS = ("table", "json", "ndjson", "csv")

# Version warnings already shown by this process: a command that reconnects
# (watch, top) must not repeat them.
_shown_warnings: set[str] = set()


@dataclass
class Settings:
    """Global and output options of one netmonctl invocation."""

    socket: str | None = None
    host: str | None = None  # -H / NETMON_HOST: a URL or a hosts.toml name
    timeout: float = 5.0
    format: str = "table"
    no_color: bool = False
    _resolved_socket: str | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> str:
        """--socket / NETMON_SOCKET, else the user daemon's socket if present, else the system one."""
        if self._resolved_socket is None:
            from common.paths import resolve_client_socket

            self._resolved_socket = resolve_client_socket(self.socket)
        return self._resolved_socket

    @property
    def color(self) -> bool:
        """Whether to colour table output on stdout."""
        return render.color_enabled(self.no_color, sys.stdout)

    @property
    def width(self) -> int | None:
        """Columns available for tables (None when stdout is not a terminal)."""
        return render.terminal_width(sys.stdout)


pass_settings = click.make_pass_decorator(Settings, ensure=True)


@contextmanager
def connect(settings: Settings) -> Iterator["Client"]:
    """A connected client that has already said hello.

    Failures surface as common.client exceptions (DaemonUnavailable,
    AccessDenied), RPCError or, for a bad -H value, TargetError; the root
    group maps them to exit codes by their kind (common.errors).
    """
    from common.client import Client

    if settings.host:
        from .fleetfile import resolve
        from .targets import TargetError
        from .transport import open_host  # -H: maybe ssh; see transport.py

        try:
            target = resolve(settings.host)
        except TargetError as exc:
            raise TargetError(f"-H: {exc}") from None
        opened = open_host(target, settings.timeout)
    else:
        from common.paths import socket_named_explicitly

        opened = Client.connect(settings.socket_path, timeout=settings.timeout,
                                explicit=socket_named_explicitly(settings.socket))
    with opened as client:
        # Every string the daemon sends is made printable before any command
        # sees it (issue 10: escapes in a fake daemon's warnings reached the
        # terminal through `status`).
        client.clean = render.printable_data
        _hello(client)
        yield client


def _hello(client: "Client") -> None:
    # Client.hello() reports a version mismatch through `warnings`; show it as
    # one plain line instead of Python's "file:line: Warning" format.
    from common.client import VersionMismatchWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VersionMismatchWarning)
        client.hello()
    for w in caught:
        if not issubclass(w.category, VersionMismatchWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        text = str(w.message)
        if text not in _shown_warnings:
            _shown_warnings.add(text)
            click.echo(f"netmonctl: warning: {text}", err=True)
