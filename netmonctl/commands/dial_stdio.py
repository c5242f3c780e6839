"""`netmonctl dial-stdio` (hidden): join stdin/stdout to the local daemon's socket.

This is the remote half of `netmonctl -H ssh://host`: the local netmonctl
runs `ssh host netmonctl dial-stdio [--socket PATH]` and speaks msgpack-RPC
through it, as `docker system dial-stdio` does for DOCKER_HOST=ssh://. It
also works as a forced command in authorized_keys, which limits a key to
netmon and nothing else:

    command="netmonctl dial-stdio",restrict ssh-ed25519 AAAA... fleet@laptop

The daemon is connected BEFORE any byte is relayed, so "no daemon here" and
"access denied" end the command with netmonctl's usual exit status (3, 4)
and message on stderr, which ssh carries back to the other side.
"""

from __future__ import annotations

import os
import socket
import threading

import click

from ..options import output_options
from ..session import Settings, pass_settings

#: Bytes moved per read; the daemon's replies can be megabytes.
CHUNK = 256 * 1024


@click.command("dial-stdio", hidden=True)
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    help="Daemon socket (default: as every netmonctl command finds it, NETMON_SOCKET included).",
)
@output_options(json_help="Accepted like on every command, and ignored: the relayed bytes are not formatted.")
@pass_settings
def dial_stdio(settings: Settings, socket_path: str | None) -> None:
    """Relay stdin/stdout to the local daemon's socket (for netmonctl -H ssh://)."""
    from common.client import open_unix_socket
    from common.paths import resolve_client_socket, socket_named_explicitly

    named = socket_path or settings.socket
    path = resolve_client_socket(named)
    # Raises DaemonUnavailable / AccessDenied (UntrustedSocket too): exit 3 / 4 with the usual lines.
    sock = open_unix_socket(path, timeout=settings.timeout, explicit=socket_named_explicitly(named))
    sock.settimeout(None)  # `watch` streams may idle for a long time
    try:
        relay(sock, 0, 1)
    finally:
        sock.close()


def relay(sock: socket.socket, in_fd: int, out_fd: int) -> None:
    """Copy in_fd -> sock and sock -> out_fd until the daemon's side ends.

    Each direction is closed on its own, like a TCP half-close: the end of
    our input becomes shutdown(SHUT_WR) on the socket (the daemon then
    finishes and closes), and the daemon closing makes out_fd see EOF.
    """

    def upstream() -> None:
        try:
            while True:
                data = os.read(in_fd, CHUNK)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass  # the daemon went away: downstream notices and ends
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    # A daemon thread: once the daemon's side is done there is nothing left
    # to send, and a thread blocked reading stdin must not keep us alive.
    threading.Thread(target=upstream, name="dial-stdio-up", daemon=True).start()
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(out_fd, view):]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the reader (ssh) is gone
    finally:
        _close_output(out_fd)


def _close_output(fd: int) -> None:
    # Point fd at /dev/null rather than closing it: the pipe's write end is
    # released (so the reader sees EOF now), and Python's own sys.stdout can
    # still flush at exit without an EBADF complaint.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
