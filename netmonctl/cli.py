"""netmonctl's root command: global options, lazy commands, exit codes.

This is the ONE place where failures become exit codes and fix-it lines
(`exit_code_for`, by the FailureKind of common.errors each failure
carries); commands just let exceptions rise.

    0  ok
    1  the daemon answered with an error
    2  usage (click's own errors, and invalid_params from the daemon)
    3  the daemon is not reachable: how to start it
    4  access denied: how to get access

Commands are imported only when run (COMMANDS maps names to modules), and
nothing heavy (msgpack, tabulate, psutil) is imported here, so that
`netmonctl --version` and `--help` start fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from common import __version__
from common.errors import FailureKind, NetmonError, failure_kind

from .options import output_options
from .session import Settings

if TYPE_CHECKING:  # pragma: no cover
    from common.client import DaemonUnavailable

EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_ACCESS_DENIED = 4

#: The exit code of each kind of failure (the README's list).
EXIT_CODES: dict[FailureKind, int] = {
    FailureKind.DAEMON_ERROR: EXIT_DAEMON_ERROR,
    FailureKind.PROTOCOL: EXIT_DAEMON_ERROR,
    FailureKind.USAGE: EXIT_USAGE,
    FailureKind.NO_DAEMON: EXIT_UNREACHABLE,
    FailureKind.CONNECTION_LOST: EXIT_UNREACHABLE,
    FailureKind.TIMEOUT: EXIT_UNREACHABLE,
    FailureKind.OFFLINE: EXIT_UNREACHABLE,
    FailureKind.HOST_KEY: EXIT_UNREACHABLE,
    FailureKind.NO_REMOTE_COMMAND: EXIT_UNREACHABLE,
    FailureKind.SSH_MISSING: EXIT_UNREACHABLE,
    FailureKind.REMOTE_FAILED: EXIT_UNREACHABLE,
    FailureKind.ACCESS_DENIED: EXIT_ACCESS_DENIED,
    FailureKind.UNTRUSTED: EXIT_ACCESS_DENIED,
    FailureKind.AUTH: EXIT_ACCESS_DENIED,
}

#: Command name -> "module:attribute", in the order `--help` lists them.
COMMANDS: dict[str, str] = {
    "status": "netmonctl.commands.status:status",
    "conns": "netmonctl.commands.conns:conns",
    "apps": "netmonctl.commands.apps:apps",
    "remotes": "netmonctl.commands.remotes:remotes",
    "stats": "netmonctl.commands.stats:stats",
    "history": "netmonctl.commands.history:history",
    "usage": "netmonctl.commands.usage:usage",
    "top": "netmonctl.commands.top:top",
    "watch": "netmonctl.commands.watch:watch",
    "start": "netmonctl.commands.control:start",
    "stop": "netmonctl.commands.control:stop",
    "clear": "netmonctl.commands.control:clear",
    "interval": "netmonctl.commands.interval:interval",
    "fleet": "netmonctl.commands.fleet:fleet",
    "dial-stdio": "netmonctl.commands.dial_stdio:dial_stdio",
    "completion": "netmonctl.commands.completion:completion",
}

PREFIX = "netmonctl: "


class NetmonGroup(click.Group):
    """A group that imports its commands on demand and maps failures to exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from . import render

        # Rates in bytes unless this invocation says --bits (the switch is
        # process-wide, and tests run many invocations in one process).
        render.use_bits(False)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors (2), --help, Ctrl-C
        except Exception as exc:
            from . import render

            if isinstance(exc, BrokenPipeError) and render.stdout_reader_gone():
                # `netmonctl conns | head`: the reader had what it wanted. Not
                # a daemon error (click's own handling exits 1), as in watch.
                render.silence_stdout()
                ctx.exit(0)
            settings = ctx.ensure_object(Settings)
            mapped = exit_code_for(exc, settings.host or settings.socket_path,
                                   explicit=bool(settings.host or settings.socket))
            if mapped is None:
                raise  # a bug: let the traceback show
            code, lines = mapped
            for line in lines:
                click.echo(PREFIX + line, err=True)
            ctx.exit(code)


def exit_code_for(
    exc: BaseException, socket_path: str | None = None, explicit: bool = True
) -> tuple[int, list[str]] | None:
    """(exit code, stderr lines) for a failure talking to the daemon; None if not one.

    `socket_path` is the socket that was tried, for the fix-it lines;
    `explicit` says whether the user chose it (--socket, NETMON_SOCKET) or
    netmonctl did (then starting the default daemon is the fix).
    """
    kind = failure_kind(exc)
    if kind is None:
        return None  # a bug: its traceback should show
    return EXIT_CODES[kind], _failure_lines(exc, kind, socket_path, explicit)


def _failure_lines(exc: BaseException, kind: FailureKind, socket_path: str | None, explicit: bool) -> list[str]:
    """What went wrong and how to fix it, one line each."""
    # Imported here: only needed on failure, and they pull in msgpack.
    from common.client import AccessDenied, DaemonUnavailable
    from common.protocol import RPCError

    if isinstance(exc, NetmonError) and exc.hints is not None:
        return [str(exc), *exc.hints]  # found where it failed (over ssh: netmonctl.transport)
    if kind is FailureKind.UNTRUSTED:  # another user's socket or daemon: never used
        return [str(exc), "another user may have put it there: check who owns it, "
                          "or name the daemon you mean with --socket PATH"]
    if isinstance(exc, RPCError):  # the daemon's answer
        if kind is FailureKind.ACCESS_DENIED:
            return [str(exc), _access_hint(socket_path, explicit)]
        return [str(exc)]
    if isinstance(exc, AccessDenied):
        return [str(exc), _access_hint(exc.path, explicit)]
    if isinstance(exc, DaemonUnavailable):
        return _unreachable_lines(exc, explicit)
    if kind is FailureKind.PROTOCOL:
        return [f"unexpected reply from {socket_path}: {exc} (is a netmond of this version listening there?)"]
    if kind is FailureKind.TIMEOUT:
        return [f"netmond at {socket_path} did not answer in time "
                "(busy or hung? raise --timeout, or restart the daemon)"]
    return [str(exc)]


# -- fix-it lines -------------------------------------------------------------------
# Every command in them must work as written, pasted into a shell on this
# machine: the commands are named by absolute path when PATH (or sudo's PATH)
# would not find this installation's, and paths are shell-quoted.

#: Where sudo's secure_path usually looks; a command elsewhere is named by its path under sudo.
_SUDO_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def command_for(name: str, sudo: bool = False) -> str:
    """How to type `name` (netmond, netmonctl) of this installation in a shell here."""
    import shlex
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), name)  # the venv's or the system's bin
    own = beside if os.access(beside, os.X_OK) else None
    found = shutil.which(name)
    if own is None:
        if found is None:  # installed without scripts: run the module
            module = {"netmond": "netmond.main", "netmonctl": "netmonctl.cli"}[name]
            return f"{'sudo ' if sudo else ''}{shlex.quote(sys.executable)} -m {module}"
        own = found
    on_path = found is not None and os.path.realpath(found) == os.path.realpath(own)
    if sudo:
        sudo_finds = found is not None and os.path.dirname(found) in _SUDO_PATH
        typed = name if on_path and sudo_finds else shlex.quote(own)
        return f"sudo {typed}"
    return name if on_path else shlex.quote(own)


def _unreachable_lines(exc: DaemonUnavailable, explicit: bool) -> list[str]:
    """Why no daemon answers at exc.path, and the commands that start one there."""
    import shlex
    import stat

    from common.paths import (
        client_socket_candidates,
        default_daemon_socket,
        directory_trust_problem,
        is_root,
        system_socket_path,
    )

    path = exc.path
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISSOCK(mode):
        kind = "directory" if stat.S_ISDIR(mode) else "regular file" if stat.S_ISREG(mode) else "file"
        return [
            f"cannot reach netmond at {path}: that is a {kind}, not a socket",
            "point netmonctl at the daemon's socket with --socket PATH or NETMON_SOCKET=PATH "
            f"(without them it looks for {' and '.join(client_socket_candidates())})",
        ]
    first = str(exc)
    candidates = client_socket_candidates()
    if not explicit and mode is None and len(candidates) > 1:
        first = f"cannot reach netmond: no socket at {' or '.join(candidates)} (daemon not running)"
    netmond = command_for("netmond")
    directory = os.path.dirname(os.path.abspath(path))
    # netmond refuses a socket in a directory others could write (common.paths).
    untrusted = directory_trust_problem(directory) if explicit else None
    if path == system_socket_path() and not is_root():
        # -b: sudo asks for the password first, then puts the daemon in the background.
        lines = [f"start the system daemon with: {command_for('netmond', sudo=True).replace('sudo ', 'sudo -b ', 1)}"]
    elif not explicit or path == default_daemon_socket():
        # netmonctl without --socket finds the default daemon of whoever starts it.
        lines = [f"start the daemon with: {netmond} &   (it listens on {default_daemon_socket()})"]
    elif (os.path.isdir(directory) and not os.access(directory, os.W_OK | os.X_OK)) or untrusted:
        why = (f"netmond refuses it: {untrusted}" if untrusted
               else f"{directory} is not writable for you")
        lines = [f"no daemon of yours can listen there ({why}): "
                 f"start yours with: {netmond} &   (it listens on {default_daemon_socket()}; "
                 "then leave out --socket / NETMON_SOCKET)"]
    else:
        start = f"{netmond} --socket {shlex.quote(path)} &"
        if not os.path.isdir(directory):
            start = f"mkdir -p {shlex.quote(directory)} && {start}"
        lines = [f"start the daemon with: {start}"]
    if ((is_root() and not explicit) or path == system_socket_path()) and _service_manager_runs():
        lines.append(f"  or as a service: {_service_start()}")
    lines.append("or point netmonctl at a running daemon with --socket PATH or NETMON_SOCKET=PATH")
    return [first, *lines]


def _service_manager_runs() -> bool:
    """Whether launchd or systemd runs services here (netmond.service.manager_running's test)."""
    import shutil

    if sys.platform == "darwin":
        return shutil.which("launchctl") is not None
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def _service_start() -> str:
    """The command that starts the system service: its manager's if installed, else the installer."""
    from common.paths import is_root

    sudo = "" if is_root() else "sudo "
    if sys.platform.startswith("linux") and os.path.exists("/etc/systemd/system/netmond.service"):
        return f"{sudo}systemctl start netmond.socket netmond.service"
    if sys.platform == "darwin" and os.path.exists("/Library/LaunchDaemons/com.netmon.netmond.plist"):
        return f"{sudo}launchctl kickstart -k system/com.netmon.netmond"
    return f"{command_for('netmond', sudo=not is_root())} service install"


def _access_hint(path: str | None, explicit: bool = True) -> str:
    # Who owns the socket tells who can grant access.
    import grp

    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None  # its directory refuses us too: treat as a root daemon's
    owner = st.st_uid if st else None
    own_daemon = f"{command_for('netmond')} &" + (
        "  (then leave out --socket / NETMON_SOCKET)" if explicit else ""
    )
    if owner == os.geteuid() and owner != 0:
        return (
            f"the socket {path} is yours but its mode refuses you: restart netmond "
            "(it recreates the socket 0600 for its user)"
        )
    if owner not in (None, 0):
        return (
            f"the daemon at {path} belongs to uid {owner}: run netmonctl as that user, "
            f"or start your own with: {own_daemon}"
        )
    sudo_ctl = command_for("netmonctl", sudo=True)
    if st is not None and st.st_gid != 0:
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return (
            f"the daemon runs as root and lets group {group} in: ask an admin to add you "
            f"(sudo usermod -aG {group} $USER, then log in again), or use {sudo_ctl} ..."
        )
    return (
        "the daemon runs as root: ask an admin to restart it with a socket group "
        f"(netmond --socket-group GROUP) and add you to it, or use {sudo_ctl} ..., "
        f"or start your own with: {own_daemon}"
    )


@click.group(
    cls=NetmonGroup,
    # 80: help must read in a standard terminal (and in a 100-column one, too).
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
)
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    envvar="NETMON_SOCKET",
    show_envvar=True,
    help="Daemon socket. Default: the user daemon's socket if it exists, else the system one.",
)
@click.option(
    "-H",
    "--host",
    metavar="URL|NAME",
    envvar="NETMON_HOST",
    show_envvar=True,
    help="Talk to the daemon at ssh://[user@]host[:port][/socket], unix:///path, "
    "or a host NAME from hosts.toml (see `netmonctl fleet`).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the daemon.",
)
@output_options(json_help="Print JSON (same as --format json).")
@click.version_option(__version__, "-V", "--version", prog_name="netmonctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, host: str | None, timeout: float) -> None:
    """Query and control netmond, the local network monitor.

    \b
    Examples:
      netmonctl status
      netmonctl conns --proc firefox --state ESTABLISHED
      netmonctl apps --sort bytes --limit 10
      netmonctl conns --json | jq '.connections[] | .remote_addr'

    Exit codes: 0 ok, 1 daemon error, 2 usage, 3 daemon not reachable,
    4 access denied.
    """
    settings = ctx.ensure_object(Settings)
    settings.socket = socket_path
    settings.host = host
    settings.timeout = timeout


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="netmonctl")


if __name__ == "__main__":  # python -m netmonctl.cli
    main()
