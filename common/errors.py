"""What can go wrong talking to a daemon: one list of failure kinds.

Every failure netmonctl reports (and fleet turns into a host's status)
is a NetmonError carrying a FailureKind, set where the failure is found:
common.client (socket, trust), common.protocol (wire errors and the
daemon's error answers), netmonctl.transport (ssh) and netmonctl's own
usage checks. Readers decide by kind, never by exception class or by
string:

    netmonctl.cli.EXIT_CODES          kind -> exit code (the README's 0-4)
    netmonctl.commands.fleet.STATUS   kind -> a fleet host's status

`failure_kind(exc)` is the kind of any exception (TimeoutError, which the
socket layer raises, included); None means it is not a failure we know,
that is a bug, and its traceback should show.
"""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    """Why a request did not get an answer (or got an error instead)."""

    #: Nothing listens at the socket (absent, refused), or netmond is not
    #: running on the remote host.
    NO_DAEMON = "no_daemon"
    #: The connection was made, then lost (the daemon closed or reset it).
    CONNECTION_LOST = "connection_lost"
    #: Connected, but no answer in time (busy or hung daemon, slow network).
    TIMEOUT = "timeout"
    #: The socket (its mode or group) or the daemon refused us.
    ACCESS_DENIED = "access_denied"
    #: The socket, or the daemon behind it, is another user's: never used.
    UNTRUSTED = "untrusted"
    #: The bytes that came back are not netmond's msgpack-RPC.
    PROTOCOL = "protocol"
    #: The daemon answered with an error (other than access or params).
    DAEMON_ERROR = "daemon_error"
    #: The request cannot be made as given: bad params (the daemon's
    #: invalid_params), a bad -H value, hosts.toml, NETMON_SSH_COMMAND, ...
    USAGE = "usage"
    # -- over ssh (netmonctl.transport) -----------------------------------------
    #: The host cannot be reached: network, refused, unknown host name.
    OFFLINE = "offline"
    #: ssh refused our login.
    AUTH = "auth"
    #: ssh could not verify the host's key (unknown or changed).
    HOST_KEY = "host_key"
    #: The remote shell could not run netmonctl (not on its PATH).
    NO_REMOTE_COMMAND = "no_remote_command"
    #: There is no ssh client to run here.
    SSH_MISSING = "ssh_missing"
    #: ssh or the remote command failed otherwise.
    REMOTE_FAILED = "remote_failed"


class NetmonError(Exception):
    """A failure of a kind netmonctl knows how to report.

    `hints`: fix-it lines found where the failure was (ssh's stderr and
    what to do about it); None leaves them to the reporter, which knows
    the local socket and who is asking.
    """

    kind: FailureKind = FailureKind.DAEMON_ERROR
    hints: list[str] | None = None

    def __init__(self, message: str = "", reason: str | None = None) -> None:
        super().__init__(message)
        self._reason = reason

    @property
    def reason(self) -> str:
        """The failure in a few words, without where (for a status line)."""
        return str(self) if self._reason is None else self._reason


class UsageProblem(NetmonError, ValueError):
    """What the user asked for cannot be done as asked; the message says why."""

    kind = FailureKind.USAGE


def failure_kind(exc: BaseException) -> FailureKind | None:
    """The kind of any exception; None for one that is no known failure (a bug)."""
    if isinstance(exc, NetmonError):
        return exc.kind
    if isinstance(exc, TimeoutError):  # socket.timeout: connected, but no answer
        return FailureKind.TIMEOUT
    return None


def short_reason(exc: BaseException) -> str:
    """Why a connection was lost, in a few words (watch's and top's outage line)."""
    if isinstance(exc, NetmonError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
