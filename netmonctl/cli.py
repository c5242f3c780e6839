"""netmonctl's root command: global options, lazy commands, exit codes.

This is the ONE place where failures become exit codes and fix-it lines
(`exit_code_for`); commands just let exceptions rise.

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
from typing import Any

import click

from common import __version__

from .options import output_options
from .session import Settings

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_ACCESS_DENIED = 4

#: Command name -> "module:attribute", in the order `--help` lists them.
COMMANDS: dict[str, str] = {
    "status": "netmonctl.commands.status:status",
    "conns": "netmonctl.commands.conns:conns",
    "apps": "netmonctl.commands.apps:apps",
    "stats": "netmonctl.commands.stats:stats",
    "history": "netmonctl.commands.history:history",
    "top": "netmonctl.commands.top:top",
    "watch": "netmonctl.commands.watch:watch",
    "start": "netmonctl.commands.control:start",
    "stop": "netmonctl.commands.control:stop",
    "clear": "netmonctl.commands.control:clear",
    "interval": "netmonctl.commands.interval:interval",
    "fleet": "netmonctl.commands.fleet:fleet",
    "dial-stdio": "netmonctl.commands.dial_stdio:dial_stdio",
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

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors (2), --help, Ctrl-C
        except Exception as exc:
            settings = ctx.ensure_object(Settings)
            mapped = exit_code_for(exc, settings.host or settings.socket_path)
            if mapped is None:
                raise  # a bug: let the traceback show
            code, lines = mapped
            for line in lines:
                click.echo(PREFIX + line, err=True)
            ctx.exit(code)


def exit_code_for(exc: BaseException, socket_path: str | None = None) -> tuple[int, list[str]] | None:
    """(exit code, stderr lines) for a failure talking to the daemon; None if not one.

    `socket_path` is the socket that was tried, for the fix-it lines.
    """
    # Imported here: only needed on failure, and they pull in msgpack.
    from common.client import AccessDenied, DaemonUnavailable
    from common.protocol import ACCESS_DENIED, INVALID_PARAMS, ProtocolError, RPCError

    # Failures over ssh (netmonctl.transport) bring their own fix-it lines.
    hints = getattr(exc, "hints", None)
    if isinstance(exc, DaemonUnavailable):
        return EXIT_UNREACHABLE, [str(exc), *(_start_hint(exc.path) if hints is None else hints)]
    if isinstance(exc, AccessDenied):
        return EXIT_ACCESS_DENIED, [str(exc), *([_access_hint(exc.path)] if hints is None else hints)]
    if isinstance(exc, RPCError):
        line = f"{exc.code}: {exc.message}"
        if exc.code == ACCESS_DENIED:
            return EXIT_ACCESS_DENIED, [line, _access_hint(socket_path)]
        if exc.code == INVALID_PARAMS:
            return EXIT_USAGE, [line]
        return EXIT_DAEMON_ERROR, [line]
    if isinstance(exc, ProtocolError):
        return EXIT_DAEMON_ERROR, [
            f"unexpected reply from {socket_path}: {exc} (is a netmond of this version listening there?)"
        ]
    if isinstance(exc, TimeoutError):  # socket.timeout: connected, but no answer
        return EXIT_UNREACHABLE, [
            f"netmond at {socket_path} did not answer in time "
            "(busy or hung? raise --timeout, or restart the daemon)"
        ]
    return None


def _start_hint(path: str) -> list[str]:
    from common.paths import default_daemon_socket, system_socket_path

    system = path == system_socket_path()
    lines = [f"start the daemon with: {'sudo netmond' if system else f'netmond --socket {path}'} &"]
    if system:
        service = (
            "sudo systemctl start netmond" if sys.platform.startswith("linux")
            else "sudo launchctl kickstart -k system/com.netmon.netmond"
        )
        lines.append(f"  or as a service: {service}")
    if path == default_daemon_socket():
        lines.append("  or, in a netmon checkout: make daemon")
    lines.append("or point netmonctl at a running daemon with --socket PATH or NETMON_SOCKET=PATH")
    return lines


def _access_hint(path: str | None) -> str:
    # Who owns the socket tells who can grant access.
    try:
        owner = os.stat(path).st_uid if path else None
    except OSError:
        owner = None  # its directory refuses us too: treat as a root daemon's
    if owner == os.geteuid() and owner != 0:
        return (
            f"the socket {path} is yours but its mode refuses you: restart netmond "
            "(it recreates the socket 0600 for its user)"
        )
    if owner not in (None, 0):
        return (
            f"the daemon at {path} belongs to uid {owner}: run netmonctl as that user, "
            "or start your own with: netmond --socket PATH &"
        )
    return (
        "the daemon runs as root: ask an admin to add you to the socket group "
        "(netmond --socket-group GROUP) or use sudo"
    )


@click.group(
    cls=NetmonGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
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
@output_options
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
