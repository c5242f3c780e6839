"""launchd and systemd service files, and `netmond service print|install|uninstall|status`.

The files are rendered here, with the absolute path of the netmond that runs
the command, so what gets installed always starts this installation. The
copies in the repository's launchd/ and systemd/ directories are this
module's output for /usr/local/bin/netmond (a test keeps them in sync).

    netmond service install [--user]      write the files, enable and start
    netmond service uninstall [--user]    stop, disable, remove
    netmond service status [--user]       files present? daemon answering?
    netmond service print KIND            one file on stdout

`install` and `uninstall` run launchctl / systemctl when that service
manager is running here; with --dry-run or --destdir (staging for a
package) they only print what they would do.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

from common import paths

from . import platform
from .peercred import resolve_group

LABEL = "com.netmon.netmond"
PLIST_NAME = LABEL + ".plist"
UNIT = "netmond"
KINDS = (
    "launchd-daemon",
    "launchd-agent",
    "systemd-service",
    "systemd-socket",
    "systemd-user-service",
    "systemd-user-socket",
)
# What the repository copies are rendered for.
REFERENCE_PROGRAM = ("/usr/local/bin/netmond",)
MACOS_ADMIN_GID = 80
# Exit status of `status` when no daemon answers: the same as netmonctl's.
EXIT_NOT_RUNNING = 3


@dataclass(frozen=True)
class ServiceSettings:
    """Everything a rendered file depends on."""

    program: tuple[str, ...]  # absolute argv that starts netmond
    user: bool  # a per-user agent/unit rather than the system daemon
    socket_path: str
    group: str | None = None  # socket group of a system daemon (0660)
    group_id: int | None = None  # the same as a number (launchd wants one)
    log_path: str = ""  # launchd only: systemd logs to the journal

    def daemon_args(self) -> list[str]:
        args = [*self.program, "--socket", self.socket_path]
        if self.group is not None and not self.user:
            args += ["--socket-group", self.group]
        return args


def netmond_program() -> tuple[str, ...]:
    """Absolute argv that runs this netmond: its script, else `python -m`.

    The script next to sys.executable is the one of this virtualenv or
    prefix; sys.executable is not resolved, as that would leave the venv.
    """
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "netmond")
    if os.access(here, os.X_OK):
        return (here,)
    found = shutil.which("netmond")
    if found:
        return (os.path.abspath(found),)
    return (os.path.abspath(sys.executable), "-m", "netmond.main")


def manager_os(manager: str) -> str:
    """The system a service manager runs on, as sys.platform says it."""
    return "darwin" if manager == "launchd" else "linux"



def default_settings(manager: str, user: bool, group: str | None = None,
                     program: tuple[str, ...] | None = None) -> ServiceSettings:
    """Settings for this machine and the invoking user."""
    program = program or netmond_program()
    if user:
        if manager == "systemd":
            # %t is the unit's runtime dir ($XDG_RUNTIME_DIR): netmonctl's
            # default path for a user daemon when that variable is set.
            return ServiceSettings(program, True, "%t/" + paths.SOCKET_NAME)
        log = os.path.expanduser("~/Library/Logs/netmond.log")
        return ServiceSettings(program, True, paths.user_socket_path(), log_path=log)
    group = group if group is not None else platform.system_socket_group(manager_os(manager))
    gid = None
    if group is not None:
        try:
            gid = resolve_group(group)
        except KeyError:
            gid = MACOS_ADMIN_GID if group == "admin" and manager == "launchd" else None
    socket_path = paths.system_socket_path(manager_os(manager))
    return ServiceSettings(program, False, socket_path, group, gid,
                           log_path="/var/log/netmond.log" if manager == "launchd" else "")


def reference_settings(kind: str) -> ServiceSettings:
    """The settings of the copies kept in the repository."""
    manager = kind.split("-")[0]
    user = kind in ("launchd-agent", "systemd-user-service", "systemd-user-socket")
    if manager == "launchd" and user:
        return ServiceSettings(REFERENCE_PROGRAM, True, "/private/tmp/netmon-501/netmond.sock",
                               log_path="/Users/you/Library/Logs/netmond.log")
    if manager == "launchd":
        return ServiceSettings(REFERENCE_PROGRAM, False, paths.system_socket_path("darwin"),
                               platform.system_socket_group("darwin"), MACOS_ADMIN_GID, "/var/log/netmond.log")
    return default_settings("systemd", user, program=REFERENCE_PROGRAM)


# -- rendering ----------------------------------------------------------------------


def launchd_plist(s: ServiceSettings) -> bytes:
    """A LaunchDaemon (root: sees every process) or a user LaunchAgent."""
    listener = {
        "SockPathName": s.socket_path,
        "SockFamily": "Unix",
        "SockType": "stream",
        # plists have no octal: 0o600 = 384, 0o660 = 432
        "SockPathMode": 0o660 if s.group_id is not None else 0o600,
    }
    if s.group_id is not None:
        listener["SockPathGroup"] = s.group_id
    job = {
        "Label": LABEL,
        "ProgramArguments": s.daemon_args(),
        "RunAtLoad": True,
        # Restart after a crash, not after a clean stop (exit 0 on SIGTERM).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "ExitTimeOut": 20,
        "StandardOutPath": s.log_path,
        "StandardErrorPath": s.log_path,
        # launchd creates the socket and passes it (launch_activate_socket):
        # it keeps accepting while netmond restarts.
        "Sockets": {"Listeners": listener},
    }
    return plistlib.dumps(job, sort_keys=False)


def _exec_line(args: list[str]) -> str:
    """ExecStart= from argv: quoted like a shell, with systemd's own escapes.

    systemd expands %-specifiers and $VARIABLES in ExecStart, so both are
    doubled in paths; an argument starting with our %t/ is meant as one.
    """
    out = []
    for arg in args:
        if arg.startswith("%t/"):
            out.append(arg)
        else:
            out.append(shlex.quote(arg.replace("%", "%%").replace("$", "$$")))
    return " ".join(out)


_SYSTEM_HARDENING = """\
# Hardening that still lets netmond read every process's /proc/PID/fd (to
# name the process of each socket) and ask the kernel over netlink
# (sock_diag) for every socket: no PrivateNetwork, no ProtectProc=invisible,
# and the capabilities for /proc kept in the bounding set.
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER
ProtectSystem=strict
ProtectHome=read-only
{private_tmp}PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
UMask=0077
# /var/lib/netmon, where usage over days is kept: made by systemd, and the
# one place it may write despite ProtectSystem=strict.
StateDirectory=netmon
StateDirectoryMode={state_mode}
"""

_USER_HARDENING = """\
# What an unprivileged user manager can apply.
NoNewPrivileges=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0077
"""


#: Directories that PrivateTmp=yes replaces with empty ones for the service.
_TMP_DIRS = ("/tmp/", "/var/tmp/")


def runs_from_tmp(s: ServiceSettings) -> bool:
    """Whether netmond's argv names a file under /tmp or /var/tmp."""
    return any(arg.startswith(_TMP_DIRS) for arg in s.program)


def _system_hardening(s: ServiceSettings) -> str:
    if runs_from_tmp(s):
        # PrivateTmp would give the service an empty /tmp: its own program gone.
        private_tmp = "# No PrivateTmp: netmond runs from a temporary directory.\n"
    else:
        private_tmp = "PrivateTmp=yes\n"
    # With a socket group, its members may read the usage store too (0640 files).
    state_mode = "0750" if s.group is not None else "0700"
    return _SYSTEM_HARDENING.format(private_tmp=private_tmp, state_mode=state_mode)


def systemd_service(s: ServiceSettings) -> str:
    """netmond.service: started at boot (or login) and by its socket."""
    wanted_by = "default.target" if s.user else "multi-user.target"
    return f"""\
[Unit]
Description=netmon network monitor daemon{" (user)" if s.user else ""}
# systemd owns the socket (netmond.socket): clients can connect while
# netmond restarts, and it can be started by the first connection.
Requires={UNIT}.socket
After={UNIT}.socket

[Service]
Type=simple
ExecStart={_exec_line(s.daemon_args())}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
TimeoutStopSec=20
{_USER_HARDENING if s.user else _system_hardening(s)}
[Install]
WantedBy={wanted_by}
Also={UNIT}.socket
"""


def systemd_socket(s: ServiceSettings) -> str:
    """netmond.socket: the Unix socket, created by systemd with its final mode."""
    if s.user:
        access = "SocketMode=0600\n"
    elif s.group is not None:
        access = f"SocketMode=0660\nSocketUser=root\nSocketGroup={s.group}\n"
    else:
        access = "SocketMode=0600\nSocketUser=root\n"
    return f"""\
[Unit]
Description=netmon daemon socket{" (user)" if s.user else ""}

[Socket]
ListenStream={s.socket_path}
{access}RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""


def render(kind: str, s: ServiceSettings) -> str:
    """One file as text."""
    if kind.startswith("launchd-"):
        return launchd_plist(s).decode()
    if kind.endswith("-socket"):
        return systemd_socket(s)
    return systemd_service(s)


# Where each kind's copy lives in the repository.
REFERENCE_FILES = {
    "launchd-daemon": f"launchd/LaunchDaemons/{PLIST_NAME}",
    "launchd-agent": f"launchd/LaunchAgents/{PLIST_NAME}",
    "systemd-service": f"systemd/system/{UNIT}.service",
    "systemd-socket": f"systemd/system/{UNIT}.socket",
    "systemd-user-service": f"systemd/user/{UNIT}.service",
    "systemd-user-socket": f"systemd/user/{UNIT}.socket",
}


def write_reference_files(repo: str) -> None:
    """Regenerate the repository's copies (after changing a template)."""
    for kind, rel in REFERENCE_FILES.items():
        path = os.path.join(repo, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(render(kind, reference_settings(kind)))


# -- where the files go, and the commands around them ---------------------------------------


@dataclass(frozen=True)
class Plan:
    """The files of one installation and the manager commands around them."""

    files: list[tuple[str, str]]  # (path, content)
    start: list[list[str]]  # after writing
    stop: list[list[str]]  # before removing
    after_remove: list[list[str]]


def plan(manager: str, s: ServiceSettings) -> Plan:
    """Paths and commands for a system or user installation."""
    if manager == "launchd":
        if s.user:
            path = os.path.expanduser(f"~/Library/LaunchAgents/{PLIST_NAME}")
            domain = f"gui/{os.getuid()}"
            kind = "launchd-agent"
        else:
            path, domain, kind = f"/Library/LaunchDaemons/{PLIST_NAME}", "system", "launchd-daemon"
        return Plan(
            files=[(path, render(kind, s))],
            start=[["launchctl", "bootstrap", domain, path]],
            stop=[["launchctl", "bootout", f"{domain}/{LABEL}"]],
            after_remove=[],
        )
    if s.user:
        base = paths.xdg_home("XDG_CONFIG_HOME", "~/.config")  # relative: ignored (XDG spec)
        unit_dir = os.path.join(base, "systemd", "user")
        ctl = ["systemctl", "--user"]
        kinds = ("systemd-user-service", "systemd-user-socket")
    else:
        unit_dir, ctl, kinds = "/etc/systemd/system", ["systemctl"], ("systemd-service", "systemd-socket")
    units = [f"{UNIT}.socket", f"{UNIT}.service"]
    return Plan(
        files=[(os.path.join(unit_dir, f"{UNIT}.service"), render(kinds[0], s)),
               (os.path.join(unit_dir, f"{UNIT}.socket"), render(kinds[1], s))],
        # The service too, not only the socket: a monitor samples from boot,
        # not from the first time someone asks.
        start=[[*ctl, "daemon-reload"], [*ctl, "enable", "--now", *units]],
        stop=[[*ctl, "disable", "--now", *reversed(units)]],
        after_remove=[[*ctl, "daemon-reload"]],
    )


def manager_running(manager: str) -> bool:
    """True when commands for that service manager can take effect here."""
    if manager == "launchd":
        return sys.platform == "darwin" and shutil.which("launchctl") is not None
    # systemd's documented test (sd_booted): this directory exists.
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def _show(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def _run_or_print(cmds: list[list[str]], run: bool, out, check: bool = True) -> int:
    """Run the commands (stop at the first failure when `check`) or print them."""
    for cmd in cmds:
        if not run:
            print(f"  {_show(cmd)}", file=out)
            continue
        print(f"$ {_show(cmd)}", file=out)
        code = subprocess.run(cmd).returncode
        if code != 0 and check:
            print(f"netmond service: `{_show(cmd)}` failed with status {code}", file=sys.stderr)
            return code
    return 0


def _staged(path: str, destdir: str | None) -> str:
    return os.path.join(destdir, path.lstrip("/")) if destdir else path


# -- the subcommands -----------------------------------------------------------------------------


def cmd_print(args: argparse.Namespace, out) -> int:
    manager = args.kind.split("-")[0]
    user = args.kind in ("launchd-agent", "systemd-user-service", "systemd-user-socket")
    program = tuple(args.program) if args.program else None
    out.write(render(args.kind, default_settings(manager, user, args.group, program)))
    return 0


def _check_group(args: argparse.Namespace) -> str | None:
    """Why --group cannot work here, or None."""
    if args.group is None:
        return None
    if args.user:
        return "--group is for the system daemon; a --user daemon's socket is yours alone (0600)"
    if args.manager == "launchd" and args.group == "admin":
        return None  # macOS's own group (gid 80), also when staged elsewhere
    try:
        resolve_group(args.group)
    except KeyError:
        if args.destdir:
            return None  # staged for another machine: the group must exist there
        add = ("sudo dseditgroup -o create " if args.manager == "launchd" else "sudo groupadd ") + args.group
        return (f"no group {args.group!r} on this machine, and netmond would refuse a socket group "
                f"it cannot find: create it first ({add}) or choose an existing one")
    return None


def cmd_install(args: argparse.Namespace, out) -> int:
    problem = _check_group(args)
    if problem is not None:
        print(f"netmond service: {problem}", file=sys.stderr)
        return 2
    s = default_settings(args.manager, args.user, args.group)
    if runs_from_tmp(s) and not args.destdir:
        print(f"netmond service: warning: {s.program[0]} is under a temporary directory, which may be "
              "cleaned at boot; a service should run an installed netmond", file=sys.stderr)
    p = plan(args.manager, s)
    live = not args.dry_run and not args.destdir and manager_running(args.manager)
    for path, content in p.files:
        target = _staged(path, args.destdir)
        if args.dry_run:
            print(f"would write {target}:\n{content}", file=out)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # never a half-written unit
        print(f"wrote {target}", file=out)
    if args.manager == "launchd" and s.user and not args.dry_run and not args.destdir:
        # launchd needs the directories of the log and the socket to exist.
        os.makedirs(os.path.dirname(s.log_path), exist_ok=True)
        os.makedirs(os.path.dirname(s.socket_path), mode=0o700, exist_ok=True)
    if live:
        code = _run_or_print(p.start, True, out)
        if code:
            return code
    else:
        print("to start it now and at every boot" + (" / login" if s.user else "") + ", run:", file=out)
        _run_or_print(p.start, False, out)
    print(_access_hint(args.manager, s), file=out)
    return 0


def cmd_uninstall(args: argparse.Namespace, out) -> int:
    s = default_settings(args.manager, args.user, args.group)
    p = plan(args.manager, s)
    live = not args.dry_run and not args.destdir and manager_running(args.manager)
    if live:
        _run_or_print(p.stop, True, out, check=False)  # "not loaded" is fine
    elif args.dry_run:
        print("would run:", file=out)
        _run_or_print(p.stop, False, out)
    elif not args.destdir:
        # Nothing can have started these files: there is nothing to stop first.
        print(f"{args.manager} does not manage services here: nothing to stop", file=out)
    for path, _ in p.files:
        target = _staged(path, args.destdir)
        if args.dry_run:
            print(f"would remove {target}", file=out)
            continue
        try:
            os.unlink(target)
            print(f"removed {target}", file=out)
        except FileNotFoundError:
            print(f"not installed: {target}", file=out)
    if live:
        _run_or_print(p.after_remove, True, out, check=False)
    return 0


def cmd_status(args: argparse.Namespace, out) -> int:
    from common.client import AccessDenied, Client, DaemonUnavailable  # only here: keeps print/install light

    s = default_settings(args.manager, args.user, args.group)
    p = plan(args.manager, s)
    for path, _ in p.files:
        print(f"{'installed' if os.path.exists(path) else 'missing  '}  {path}", file=out)
    socket_path = s.socket_path.replace("%t", paths.user_runtime_dir())
    try:
        with Client.connect(socket_path, timeout=3) as c:
            info = c.call("status")
    except AccessDenied as exc:
        print(f"running    but {exc.reason} at {socket_path}: {_access_hint(args.manager, s)}", file=out)
        return 0
    except (DaemonUnavailable, OSError) as exc:
        print(f"stopped    {exc}", file=out)
        return EXIT_NOT_RUNNING
    answering = (f"pid {info['pid']}, version {info['version']}, backend {info['backend']}, "
                 f"socket {socket_path}")
    service_pid = managed_pid(args.manager, s.user)
    if service_pid is not None and service_pid == info["pid"]:
        print(f"running    {answering}", file=out)
        return 0
    if not all(os.path.exists(path) for path, _ in p.files):
        why = "the service is not installed"
    elif not manager_running(args.manager):
        why = f"{args.manager} does not manage services here"
    else:
        why = f"the service's own process is {service_pid or 'not running'}"
    print(f"not the service: a netmond answers ({answering}) but {why}; "
          "it was started some other way (by hand, make daemon, ...)", file=out)
    return EXIT_NOT_RUNNING


def managed_pid(manager: str, user: bool) -> int | None:
    """The pid of netmond as the service manager runs it, None if it does not (or cannot tell)."""
    if not manager_running(manager):
        return None
    if manager == "systemd":
        cmd = ["systemctl", *(["--user"] if user else []), "show", "-p", "MainPID", "--value",
               f"{UNIT}.service"]
    else:
        cmd = ["launchctl", "print", f"gui/{os.getuid()}/{LABEL}" if user else f"system/{LABEL}"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if manager == "systemd":
        value = text.strip()
    else:  # launchctl print: a line "pid = 123" while it runs
        value = next((line.split("=", 1)[1].strip() for line in text.splitlines()
                      if line.strip().startswith("pid =")), "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _access_hint(manager: str, s: ServiceSettings) -> str:
    """Who may use the daemon, and how to let someone in."""
    if s.user:
        return "only you (and root) can reach this daemon: its socket is 0600."
    if s.group is None:
        return ("only root can reach this daemon (socket 0600). To let users in, reinstall "
                "with --group GROUP (e.g. `sudo groupadd netmon`, then `sudo usermod -aG netmon USER`).")
    add = (f"sudo dseditgroup -o edit -a USER -t user {s.group}" if manager == "launchd"
           else f"sudo usermod -aG {s.group} USER")
    return (f"members of group {s.group} may query and control it; add a user with "
            f"`{add}` (takes effect at their next login).")


def build_parser() -> argparse.ArgumentParser:
    native = "launchd" if sys.platform == "darwin" else "systemd"
    native_group = platform.system_socket_group(manager_os(native))
    p = argparse.ArgumentParser(prog="netmond service",
                                description="Install netmond as a launchd or systemd service.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--user", action="store_true",
                        help="a per-user agent/unit (sees your own processes) instead of the system daemon")
        sp.add_argument("--group", metavar="GROUP",
                        help=f"socket group of the system daemon (default: {native_group or 'none, root only'})")
        sp.add_argument("--manager", choices=("launchd", "systemd"), default=native,
                        help=f"service manager (default here: {native})")

    sp = sub.add_parser("install", help="write the service files, then enable and start them")
    common(sp)
    sp.add_argument("--dry-run", action="store_true", help="show what would be written and run")
    sp.add_argument("--destdir", metavar="DIR", help="stage the files under DIR (packaging); runs nothing")
    sp.set_defaults(func=cmd_install)
    sp = sub.add_parser("uninstall", help="stop and disable the service, remove its files")
    common(sp)
    sp.add_argument("--dry-run", action="store_true", help="show what would be removed and run")
    sp.add_argument("--destdir", metavar="DIR", help="remove the files staged under DIR; runs nothing")
    sp.set_defaults(func=cmd_uninstall)
    sp = sub.add_parser("status", help="are the files installed, does the daemon answer")
    common(sp)
    sp.set_defaults(func=cmd_status)
    sp = sub.add_parser("print", help="print one service file")
    # A metavar: the choices listed in the usage line would make it 180 columns wide.
    sp.add_argument("kind", choices=KINDS, metavar="KIND", help="one of: " + ", ".join(KINDS))
    sp.add_argument("--group", metavar="GROUP", help="socket group of the system daemon")
    sp.add_argument("--program", nargs="+", metavar="ARG", help="argv that starts netmond (default: this one)")
    sp.set_defaults(func=cmd_print)
    return p


def main(argv: list[str], out=None) -> int:
    """`netmond service ...`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out or sys.stdout)
    except PermissionError as exc:
        print(f"netmond service: {exc.filename}: permission denied"
              + ("" if getattr(args, "user", True) else " (the system service needs sudo)"), file=sys.stderr)
        return 4
