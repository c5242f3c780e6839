"""How netmonctl connects to a Target (netmonctl.targets): a local socket, or
the ssh bridge to a remote one.

The ssh case follows DOCKER_HOST=ssh://: netmonctl runs the system `ssh` as a
subprocess with the remote command `netmonctl dial-stdio [--socket PATH]`,
which joins its stdin/stdout to the remote daemon's socket. ssh is the
transport AND the authentication, so keys, the agent, ~/.ssh/config, jump
hosts and known_hosts all keep working, and netmon needs no network listener
or token scheme of its own.

The ssh child's stdin and stdout are one end of a socketpair; the other end
is an ordinary stream socket, so common.client.Client works unchanged and
every command (conns, apps, watch, top, ...) works remotely. When the stream
ends early, ssh's exit status and the tail of its stderr say why:
`explain_failure` turns them into DaemonUnavailable / AccessDenied subclasses
carrying a FailureKind (common.errors) and fix-it `hints`, which
netmonctl.cli.exit_code_for turns into exit codes like local failures
(3: not reachable, 4: access denied).

`NETMON_SSH_COMMAND` (like GIT_SSH_COMMAND) replaces `ssh`, e.g.
`NETMON_SSH_COMMAND="ssh -F ~/.ssh/fleet_config"`: OpenSSH reads ~/.ssh from
the passwd home directory, not $HOME, so this is also how tests isolate it.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from common.client import AccessDenied, DaemonUnavailable
from common.errors import FailureKind

from .targets import Target, TargetError

if TYPE_CHECKING:  # pragma: no cover
    import contextlib

    from common.client import Client

ENV_SSH_COMMAND = "NETMON_SSH_COMMAND"
#: What the remote side runs unless a hosts.toml entry says otherwise.
DEFAULT_REMOTE_COMMAND = "netmonctl"
#: Options every ssh connection gets (the issue's contract): fail a dead
#: network in seconds, and notice a peer that vanished mid-`watch`.
SSH_DEFAULT_OPTIONS = (
    "-o", "ConnectTimeout=10",
    "-o", "ServerAliveInterval=15",
    "-o", "ServerAliveCountMax=2",
)
#: Extra seconds the first answer may take over ssh: connecting and
#: authenticating (a passphrase typed at the prompt) come before it.
SSH_SETUP_SECONDS = 30.0
#: stderr lines of ssh shown with a failure.
STDERR_TAIL_LINES = 5

# -- the ssh command line ------------------------------------------------------


def ssh_command() -> list[str]:
    """The ssh program and its own leading arguments ($NETMON_SSH_COMMAND or `ssh`)."""
    value = os.environ.get(ENV_SSH_COMMAND) or "ssh"
    try:
        words = shlex.split(value)
    except ValueError as exc:  # unbalanced quotes: a usage error (exit 2), not a traceback
        raise TargetError(f"{ENV_SSH_COMMAND}={value!r} cannot be split into words "
                          f"({str(exc).lower()}): fix its quoting") from None
    return words or ["ssh"]


def _shell_word(word: str) -> str:
    # A leading ~/ must stay unquoted for the remote shell to expand it, as
    # people write remote_command = "~/.local/bin/netmonctl".
    if word.startswith("~/"):
        return "~/" + shlex.quote(word[2:])
    return shlex.quote(word)


def remote_command_line(target: Target) -> str:
    """The remote shell command: `netmonctl dial-stdio [--socket PATH]`, every word quoted."""
    words = shlex.split(target.remote_command or DEFAULT_REMOTE_COMMAND)
    args = ["dial-stdio"] + (["--socket", target.socket] if target.socket else [])
    return " ".join([_shell_word(w) for w in words] + [shlex.quote(a) for a in args])


def ssh_destination_args(target: Target) -> list[str]:
    """The entry's own options and [-l USER] [-p PORT] (without the host)."""
    argv = list(target.ssh_options)
    if target.user:
        argv += ["-l", target.user]
    if target.port:
        argv += ["-p", str(target.port)]
    return argv


def ssh_argv(target: Target, extra_options: tuple[str, ...] | list[str] = ()) -> list[str]:
    """`ssh -T <options> [-l USER] [-p PORT] -- HOST <remote command>`.

    ssh keeps the FIRST value it sees for an option, so the caller's
    `extra_options` (fleet's BatchMode=yes) come first, then the hosts.toml
    entry's own, then our defaults, then ~/.ssh/config.
    """
    return [
        *ssh_command(),
        "-T",
        *extra_options,
        *ssh_destination_args(target),
        *SSH_DEFAULT_OPTIONS,
        "--",
        target.host,
        remote_command_line(target),
    ]


# -- failures --------------------------------------------------------------------


class RemoteUnavailable(DaemonUnavailable):
    """The remote daemon cannot be reached; `kind` says at which step, `hints` what to do.

    kind: OFFLINE (network, refused, unknown host), HOST_KEY, NO_DAEMON,
    NO_REMOTE_COMMAND, SSH_MISSING, REMOTE_FAILED.
    """

    def __init__(self, target: Target, reason: str, kind: FailureKind, hints: list[str]) -> None:
        super().__init__(target.label, reason, kind)
        self.hints = hints


class RemoteAccessDenied(AccessDenied):
    """ssh refused our login (kind AUTH), or the remote daemon refused us (ACCESS_DENIED)."""

    def __init__(self, target: Target, reason: str, kind: FailureKind, hints: list[str]) -> None:
        super().__init__(target.label, reason)
        self.kind = kind
        self.hints = hints


_OFFLINE_PATTERNS = (
    "connection refused",
    "timed out",
    "could not resolve hostname",
    "no route to host",
    "network is unreachable",
    "connection closed by",
    "connection reset",
    "name or service not known",
)


def stderr_tail(text: str, lines: int = STDERR_TAIL_LINES) -> list[str]:
    """The last non-empty lines of ssh's stderr, without ssh's own chatter."""
    from .render import printable  # what the remote side wrote must not drive our terminal

    out = [
        printable(line.strip())
        for line in text.replace("\r", "").splitlines()
        if line.strip() and not line.startswith("Warning: Permanently added")
    ]
    return out[-lines:]


def explain_failure(target: Target, returncode: int | None, stderr: str) -> Exception | None:
    """The error an ssh exit status and stderr mean, or None if ssh did not fail.

    255 is ssh's own failure (network, host key, login); any other status is
    the remote command's: 127/126 its shell could not run netmonctl, 3 and 4
    are netmonctl's own "daemon not reachable" and "access denied".
    """
    if returncode is None or returncode == 0:
        return None
    tail = stderr_tail(stderr)
    low = stderr.lower()
    login = shlex.join(target.ssh_login())
    if returncode == 255:
        if "host key verification failed" in low or "host identification has changed" in low:
            if "has changed" in low:
                hint = (f"the host key of {target.host} changed: if that is expected, "
                        f"remove the old one with `ssh-keygen -R {target.host}`, then run `{login}` once")
            else:
                hint = f"run `{login}` once to check and accept its host key"
            return RemoteUnavailable(target, "ssh could not verify the host key", FailureKind.HOST_KEY, [*tail, hint])
        if "permission denied" in low or "too many authentication failures" in low:
            return RemoteAccessDenied(
                target,
                "ssh login refused",
                FailureKind.AUTH,
                [*tail, f"check that `{login}` logs in without a prompt "
                        "(key in ssh-agent, or IdentityFile in ~/.ssh/config)"],
            )
        kind = FailureKind.OFFLINE if any(p in low for p in _OFFLINE_PATTERNS) else FailureKind.REMOTE_FAILED
        reason = f"ssh failed: {tail[-1]}" if tail else "ssh failed (exit status 255)"
        return RemoteUnavailable(target, reason, kind, [*tail[:-1], f"check that `{login}` works"])
    if returncode in (126, 127):
        return RemoteUnavailable(
            target,
            "netmonctl not found on the remote host" if returncode == 127 else "netmonctl not executable there",
            FailureKind.NO_REMOTE_COMMAND,
            [
                *tail,
                "netmonctl is not on the remote's non-login PATH: install netmon there, or set "
                "remote_command to its absolute path "
                "(netmonctl fleet add NAME URL --remote-command /path/to/netmonctl, then -H NAME)",
            ],
        )
    remote = [line.removeprefix("netmonctl: ") for line in tail]
    if returncode == 3:
        return RemoteUnavailable(
            target,
            "netmond is not running there",
            FailureKind.NO_DAEMON,
            [*(f"remote: {line}" for line in remote),
             f"start netmond on {target.host}, or name its socket in the URL: "
             f"ssh://{target.host}/path/to/netmond.sock"],
        )
    if returncode == 4:
        return RemoteAccessDenied(target, "the remote daemon refused access", FailureKind.ACCESS_DENIED,
                                  [f"remote: {line}" for line in remote])
    hints = [f"remote: {line}" for line in remote]
    if "no such command" in low and "dial-stdio" in low:
        hints.append("the remote netmonctl is too old for -H: upgrade netmon there")
    return RemoteUnavailable(target, f"the remote command failed (exit status {returncode})",
                             FailureKind.REMOTE_FAILED, hints)


# -- the bridge ------------------------------------------------------------------


def _reap(proc: subprocess.Popen, grace: float) -> None:
    """Wait up to `grace` s for `proc` to end (after it was asked to), then kill it."""
    try:
        proc.wait(max(0.0, grace))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SSHChildren:
    """The ssh processes of the bridges one owner opened (fleet's Poller), so that
    it can end them all at once when it stops.

    Ctrl-C must not leave an ssh behind: a poll in flight belongs to a worker
    thread that the interpreter abandons at exit, and its ssh, waiting for a
    slow or stalled host, would see the socketpair close only once it got
    that far (a stalled handshake: ConnectTimeout later; a remote command
    that hangs: never). A worker starts its ssh under the lock, and end_all
    takes it, so no ssh can start after end_all has looked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._ended = False

    class Ended(Exception):
        """No more ssh: the owner is stopping."""

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Popen(argv) and note it; OSError as Popen, Ended once end_all ran."""
        with self._lock:
            if self._ended:
                raise SSHChildren.Ended
            proc = subprocess.Popen(argv, **kwargs)
            self._procs.add(proc)
            return proc

    def forget(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def end_all(self, grace: float = 1.0) -> None:
        """SIGTERM every ssh still running (a mux client's shared master stays
        up, as ControlPersist means); SIGKILL what is left after `grace` s.
        Starts none afterwards."""
        with self._lock:
            self._ended = True
            procs = list(self._procs)
            self._procs.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            _reap(proc, deadline - time.monotonic())


class SSHBridge:
    """An ssh subprocess whose stdin/stdout are one end of a socketpair.

    `sock` is the other end: a plain stream socket to hand to Client.
    stderr goes to a temporary file (never a pipe nobody reads, which could
    block ssh), read only when something failed. With `children`, the ssh
    is started and noted there (SSHChildren).
    """

    def __init__(self, target: Target, extra_options: tuple[str, ...] | list[str] = (),
                 children: SSHChildren | None = None) -> None:
        self.target = target
        self.argv = ssh_argv(target, extra_options)
        self._children = children
        self._stderr = tempfile.TemporaryFile()
        parent, child = socket.socketpair()
        try:
            popen = children.start if children is not None else subprocess.Popen
            self.proc = popen(
                self.argv, stdin=child.fileno(), stdout=child.fileno(), stderr=self._stderr, close_fds=True
            )
        except SSHChildren.Ended:  # its owner is stopping: no new ssh
            parent.close()
            self._stderr.close()
            raise RemoteUnavailable(target, "netmonctl is ending", FailureKind.REMOTE_FAILED, []) from None
        except OSError as exc:  # not found, not executable, ...
            parent.close()
            self._stderr.close()
            what = " not found" if isinstance(exc, FileNotFoundError) else f": {exc.strerror or exc}"
            raise RemoteUnavailable(
                target, f"{self.argv[0]}{what}", FailureKind.SSH_MISSING,
                [f"install the OpenSSH client, or point {ENV_SSH_COMMAND} at one"],
            ) from None
        finally:
            child.close()  # ssh holds it now; our copy would hide its EOF
        self.sock = parent

    def stderr_text(self) -> str:
        """What ssh (and the remote command) wrote to stderr so far."""
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def failure(self, wait: float = 2.0) -> Exception | None:
        """After the stream broke: why, from ssh's exit; None if ssh is fine or still running."""
        try:
            code = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        return explain_failure(self.target, code, self.stderr_text())

    def close(self, grace: float = 2.0) -> None:
        """Close our end (ssh then ends the remote side) and reap ssh."""
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                _reap(self.proc, 2)
        if self._children is not None:
            self._children.forget(self.proc)
        self._stderr.close()


def open_host(target: Target, timeout: float | None) -> "contextlib.AbstractContextManager[Client]":
    """What `netmonctl -H VALUE` connects through (session.connect uses it).

    Over ssh the first answer may also wait for ssh to connect and
    authenticate, hence SSH_SETUP_SECONDS more.
    """
    if target.scheme == "ssh" and timeout is not None:
        timeout += SSH_SETUP_SECONDS
    return open_client(target, timeout)


@contextmanager
def open_client(
    target: Target,
    timeout: float | None,
    extra_ssh_options: tuple[str, ...] | list[str] = (),
    children: SSHChildren | None = None,
) -> Iterator["Client"]:
    """A Client connected to `target` (not yet said hello).

    `children`: where to note the ssh process, for an owner that must be
    able to end it from another thread (SSHChildren).

    For ssh, a failure of the stream inside the block (EOF, reset, no answer,
    garbage) is replaced by what ssh's exit status says, when it says more.
    `timeout` is the client's read timeout; over ssh the caller adds the
    time ssh needs to connect (SSH_SETUP_SECONDS) if it wants to allow it.
    """
    from common.client import Client
    from common.protocol import ProtocolError

    if target.scheme == "unix":
        assert target.socket is not None
        with Client.connect(target.socket, timeout=timeout) as client:
            yield client
        return
    bridge = SSHBridge(target, extra_ssh_options, children)
    client = Client(bridge.sock, target.label, timeout)
    try:
        yield client
    except (DaemonUnavailable, ProtocolError, TimeoutError, ConnectionError) as exc:
        # A timeout leaves ssh running (failure() then says nothing): the
        # daemon, or the network, is slow, and the original error says so.
        explained = bridge.failure(wait=0.1 if isinstance(exc, TimeoutError) else 2.0)
        if explained is None:
            raise
        raise explained from None
    finally:
        client.close()
        bridge.close()
