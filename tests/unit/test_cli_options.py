"""netmonctl without a daemon: options -> filter map, output options, sorting,
the exit-code mapping, lazy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from common.client import AccessDenied, DaemonUnavailable, UntrustedSocket
from common.errors import FailureKind, UsageProblem, failure_kind, short_reason
from common.protocol import ProtocolError, RPCError
from netmonctl import cli as cli_module
from netmonctl.cli import COMMANDS, EXIT_CODES, cli, command_for, exit_code_for
from netmonctl.options import FILTER_KEYS, build_filter, filter_options, output_options
from netmonctl.session import Settings, pass_settings
from netmonctl.sorting import order_rows, sort_rows



# -- filter options -> wire map -------------------------------------------------


@click.command()
@filter_options
def show_filter(flt):
    click.echo(json.dumps(flt))


def filter_for(*args: str) -> dict:
    result = CliRunner().invoke(show_filter, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_no_filter_options_give_an_empty_filter():
    assert filter_for() == {}


def test_every_filter_option_maps_to_its_wire_key():
    flt = filter_for(
        "--proc", "Chrome", "--pid", "42", "--proto", "TCP", "--state", "established",
        "--state", "time-wait", "--scope", "lan", "--remote-only", "--listening",
        "--port", "443", "--ip", "10.0.0.0/8", "--search", "github", "--family", "6",
        "--host", "Example.COM",
    )
    assert flt == {
        "proc": "Chrome", "pid": 42, "proto": "TCP", "state": ["ESTABLISHED", "TIME_WAIT"],
        "scope": "lan", "remote_only": True, "listening": True, "port": 443,
        "ip": "10.0.0.0/8", "search": "github", "family": 6, "host": "Example.COM",
    }
    assert set(flt) == set(FILTER_KEYS)


def test_negative_flags_are_criteria_and_absent_flags_are_not():
    assert filter_for("--no-listening") == {"listening": False}
    assert filter_for("--proto", "udp", "--family", "4") == {"proto": "UDP", "family": 4}
    assert build_filter({"proc": None, "pid": 0, "port": None}) == {"pid": 0}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ip", "not-an-ip"], "not an address or CIDR"),
        (["--ip", "10.0.0.0/33"], "not an address or CIDR"),
        (["--state", "BOGUS"], "unknown state 'BOGUS'"),
        (["--proto", "icmp"], "--proto"),
        (["--port", "70000"], "--port"),
        (["--pid", "-1"], "--pid"),
        (["--family", "5"], "--family"),
        (["--scope", "mars"], "--scope"),
        (["--proc", ""], "non-empty"),
    ],
)
def test_bad_filter_values_are_usage_errors(args, needle):
    result = CliRunner().invoke(show_filter, args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output


# -- output options: global and per command --------------------------------------


@click.group()
@output_options
def group():
    pass


@group.command()
@output_options
@pass_settings
def fmt(settings: Settings):
    click.echo(f"{settings.format} {settings.no_color}")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["fmt"], "table False"),
        (["--json", "fmt"], "json False"),
        (["fmt", "--json"], "json False"),
        (["--format", "csv", "fmt"], "csv False"),
        (["fmt", "--format", "ndjson"], "ndjson False"),
        (["--format", "csv", "fmt", "--json"], "json False"),   # the command's own wins
        (["--json", "fmt", "--format", "csv"], "csv False"),
        (["fmt", "--no-color"], "table True"),
        (["--no-color", "fmt"], "table True"),
    ],
)
def test_output_options_work_before_and_after_the_command(args, expected):
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == expected


def test_every_command_is_registered_and_takes_the_output_options():
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == list(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        if name == "completion":  # prints shell code: no output format to choose
            continue
        assert {"--json", "--format"} <= opts, name
    assert cli.get_command(ctx, "nope") is None


def test_filter_commands_take_the_filter_and_sort_options():
    ctx = click.Context(cli)
    for name in ("conns", "apps"):
        opts = {o for p in cli.get_command(ctx, name).params for o in getattr(p, "opts", [])}
        assert {f"--{k.replace('_', '-')}" for k in FILTER_KEYS} <= opts
        assert {"--sort", "--reverse", "--limit"} <= opts


# -- sorting -------------------------------------------------------------------


def rows(*specs):
    return [dict(zip(("name", "upload_speed", "download_speed", "bytes_sent", "bytes_received"), s))
            for s in specs]


def names(ordered):
    return [r["name"] for r in ordered]


def test_default_sort_is_total_speed_then_bytes_descending_with_unknown_last():
    data = rows(
        ("unknown", None, None, None, None),
        ("slow", 1.0, 0.0, 10, 10),
        ("fast", 100.0, 50.0, 0, 0),
        ("idle-big", 0.0, 0.0, 900, 100),
        ("idle-small", 0.0, 0.0, 1, 1),
        ("bytes-only", None, None, 5000, None),
    )
    assert names(sort_rows(data, "speed")) == [
        "fast", "slow", "idle-big", "idle-small", "bytes-only", "unknown",
    ]
    # --reverse flips the known values; unknown stays last.
    assert names(sort_rows(data, "speed", reverse=True)) == [
        "idle-small", "idle-big", "slow", "fast", "bytes-only", "unknown",
    ]
    assert names(sort_rows(data, "bytes"))[:2] == ["bytes-only", "idle-big"]


def test_text_fields_sort_ascending_and_none_sorts_last_both_ways():
    data = [{"process_name": n} for n in ("b", None, "a", "c")]
    assert [r["process_name"] for r in sort_rows(data, "process_name")] == ["a", "b", "c", None]
    assert [r["process_name"] for r in sort_rows(data, "process_name", True)] == ["c", "b", "a", None]
    assert [r["process_name"] for r in sort_rows(data, "pid")] == ["b", None, "a", "c"]  # all unknown: stable


def test_numeric_fields_sort_largest_first_and_ties_stay_stable():
    data = [{"id": i, "bytes_sent": v} for i, v in enumerate([5, None, 7, 5, 0])]
    assert [r["id"] for r in sort_rows(data, "bytes_sent")] == [2, 0, 3, 4, 1]
    assert [r["id"] for r in order_rows(data, "bytes_sent", False, 2)] == [2, 0]
    assert [r["id"] for r in order_rows(data, "bytes_sent", True, None)] == [4, 0, 3, 2, 1]


# -- exit codes ------------------------------------------------------------------


def test_unreachable_daemon_is_exit_3_with_how_to_start_it(tmp_path):
    path = str(tmp_path / "none.sock")
    code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path)
    assert code == 3
    text = "\n".join(lines)
    assert path in lines[0]
    assert f"{command_for('netmond')} --socket {path} &" in text
    assert "NETMON_SOCKET" in text


def test_unreachable_hint_creates_a_missing_directory(tmp_path):
    path = str(tmp_path / "sub" / "none.sock")
    code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path)
    assert f"mkdir -p {tmp_path / 'sub'} && {command_for('netmond')} --socket {path} &" in lines[1]


def test_a_path_that_is_not_a_socket_is_not_called_stale(tmp_path):
    path = tmp_path / "plain"
    path.write_text("x")
    code, lines = exit_code_for(DaemonUnavailable(str(path), "connection refused (stale socket)"), str(path))
    assert code == 3
    assert lines[0].endswith("that is a regular file, not a socket")
    assert "start the daemon" not in "\n".join(lines)  # no daemon can listen on a file


def test_default_path_hint_starts_the_default_daemon(monkeypatch):
    from common.paths import client_socket_candidates, default_daemon_socket

    monkeypatch.delenv("NETMON_SOCKET", raising=False)
    path = client_socket_candidates()[0]
    if os.path.exists(path):
        pytest.skip(f"{path} exists here")
    code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path, explicit=False)
    # As root the default daemon listens on the system path, not the user path tried first.
    assert lines[1] == f"start the daemon with: {command_for('netmond')} &   (it listens on {default_daemon_socket()})"
    assert "--socket" not in lines[1]


def test_system_socket_hint_uses_sudo_for_others(monkeypatch):
    from common import paths

    monkeypatch.setattr(paths, "is_root", lambda: False)
    path = paths.system_socket_path()
    code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path)
    assert code == 3 and lines[1].startswith("start the system daemon with: sudo -b ")


def test_sudo_names_a_command_outside_sudos_path_by_its_path(monkeypatch, tmp_path):
    import shutil

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("python", "netmond"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    assert command_for("netmond") == "netmond"  # on PATH: the name
    assert command_for("netmond", sudo=True) == f"sudo {bindir}/netmond"  # sudo's PATH lacks bindir
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_for("netmond") == f"{bindir}/netmond"
    assert shutil.which("netmond") is None or command_for("netmond") != "netmond"


def test_access_denied_is_exit_4_with_how_to_get_access():
    code, lines = exit_code_for(AccessDenied("/", "Permission denied"), "/")  # "/" is root's
    assert code == 4
    assert "socket group" in lines[-1] and "netmond --socket-group" in lines[-1] and "sudo" in lines[-1]
    code, lines = exit_code_for(RPCError("access_denied", "control needs root"), "/")
    assert code == 4
    assert lines[0] == "access_denied: control needs root"
    assert "sudo" in lines[-1]


def test_access_hint_names_the_owner_of_a_user_daemon(tmp_path):
    path = tmp_path / "other.sock"
    path.touch()
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    os.chown(path, 65534, -1)
    code, lines = exit_code_for(AccessDenied(str(path), "Permission denied"), str(path))
    assert code == 4 and "belongs to uid 65534" in lines[-1]


@pytest.mark.parametrize(
    "exc, code, first_line",
    [
        (RPCError("invalid_params", "interval: must be between 0.1 and 3600"), 2,
         "invalid_params: interval: must be between 0.1 and 3600"),
        (RPCError("internal", "boom"), 1, "internal: boom"),
        (RPCError("a_future_code", "new"), 1, "a_future_code: new"),  # unknown codes: like internal
        (RPCError("too_many_clients", "busy"), 1, "too_many_clients: busy"),
    ],
)
def test_daemon_errors_map_to_their_codes(exc, code, first_line):
    got_code, lines = exit_code_for(exc, "/x.sock")
    assert (got_code, lines[0]) == (code, first_line)


def test_every_failure_kind_has_one_exit_code():
    assert set(EXIT_CODES) == set(FailureKind)
    assert set(EXIT_CODES.values()) == {1, 2, 3, 4}  # the README's list (0 is success)


@pytest.mark.parametrize(
    "exc, kind",
    [
        (DaemonUnavailable("/x.sock", "no socket file"), FailureKind.NO_DAEMON),
        (DaemonUnavailable("/x.sock", "daemon closed the connection", FailureKind.CONNECTION_LOST),
         FailureKind.CONNECTION_LOST),
        (AccessDenied("/x.sock", "Permission denied"), FailureKind.ACCESS_DENIED),
        (UntrustedSocket("/x.sock", "uid 1234's"), FailureKind.UNTRUSTED),
        (RPCError("access_denied", "control needs root"), FailureKind.ACCESS_DENIED),
        (RPCError("invalid_params", "bad"), FailureKind.USAGE),
        (RPCError("internal", "boom"), FailureKind.DAEMON_ERROR),
        (ProtocolError("garbage"), FailureKind.PROTOCOL),
        (TimeoutError(), FailureKind.TIMEOUT),
        (UsageProblem("top needs a terminal"), FailureKind.USAGE),
        (ValueError("a bug"), None),
    ],
)
def test_failures_carry_their_kind(exc, kind):
    assert failure_kind(exc) is kind


def test_short_reasons_for_a_lost_connection():
    assert short_reason(DaemonUnavailable("/x", "daemon closed the connection")) == "daemon closed the connection"
    assert short_reason(AccessDenied("/x", "Permission denied")) == "Permission denied"
    assert short_reason(ProtocolError("garbage")) == "unexpected data (garbage)"
    assert short_reason(TimeoutError()) == "no answer in time"
    assert short_reason(ConnectionResetError(104, "Connection reset by peer")) == "Connection reset by peer"
    assert short_reason(RPCError("internal", "boom")) == "internal: boom"


def test_usage_problems_found_after_parsing_are_exit_2():
    assert exit_code_for(UsageProblem("top needs a terminal")) == (2, ["top needs a terminal"])


def test_other_failures():
    code, lines = exit_code_for(ProtocolError("garbage"), "/x.sock")
    assert code == 1 and "/x.sock" in lines[0]
    code, lines = exit_code_for(TimeoutError(), "/x.sock")
    assert code == 3 and "--timeout" in lines[0]
    assert exit_code_for(ValueError("a bug"), "/x.sock") is None  # bugs keep their traceback


def test_cli_prints_the_mapping_without_a_traceback(tmp_path):
    path = str(tmp_path / "absent.sock")
    result = CliRunner().invoke(cli, ["--socket", path, "status"])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.startswith(f"netmonctl: cannot reach netmond at {path}")
    assert "Traceback" not in result.output
    # NETMON_SOCKET is the same as --socket.
    result = CliRunner(env={"NETMON_SOCKET": path}).invoke(cli, ["conns", "--json"])
    assert result.exit_code == 3 and path in result.stderr


def test_stale_socket_file_is_unreachable(tmp_path):
    import socket

    path = os.path.join(tmp_path, "s")
    if len(path) > 100:
        pytest.skip("tmp path too long for AF_UNIX")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    result = CliRunner().invoke(cli, ["--socket", path, "stats"])
    assert result.exit_code == 3 and "refused" in result.stderr


def test_usage_errors_are_exit_2():
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2 and "No such command" in result.stderr
    result = CliRunner().invoke(cli, ["--timeout", "0", "status"])
    assert result.exit_code == 2
    result = CliRunner().invoke(cli, ["interval", "soon"])
    assert result.exit_code == 2 and "not a duration" in result.stderr


# -- startup and layering ----------------------------------------------------------


def test_importing_the_cli_loads_nothing_heavy():
    code = (
        "import sys, netmonctl.cli; "
        "print([m for m in ('tabulate', 'psutil', 'msgpack', 'netmond') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_version_imports_nothing_heavy():
    """What keeps start-up fast is what a command imports: `--version` loads
    none of the libraries the data commands need. (The time itself is
    measured against a peer in bench/roundtrip.py, not here: a wall-clock
    limit in a test fails on a loaded machine.)"""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['netmonctl', '--version']\n"
        "try:\n    runpy.run_module('netmonctl.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('psutil', 'msgpack', 'tabulate', 'curses', 'ssl', 'asyncio', 'netmond')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("netmonctl ")
    assert out.stdout.splitlines()[-1] == "[]"


# -- help that says what the command does (issue 13, item 9) --------------------------

HELP_COMMANDS = [[], *([name] for name in COMMANDS), ["fleet", "ls"]]


def run_cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    env.pop("NETMON_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "netmonctl.cli", *args], capture_output=True, text=True,
                          timeout=30, env=env, cwd=str(Path(__file__).resolve().parents[2]))


@pytest.mark.parametrize("columns", [80, 200])
def test_every_help_fits_80_columns(columns):
    for args in HELP_COMMANDS:
        out = run_cli(*args, "--help", columns=columns)
        assert out.returncode == 0, (args, out.stderr)
        wide = [line for line in out.stdout.splitlines() if len(line) > 80]
        assert wide == [], (args, wide)
    for args in ([], ["service"], ["service", "install"], ["service", "uninstall"], ["service", "status"],
                 ["service", "print"]):
        out = subprocess.run([sys.executable, "-m", "netmond.main", *args, "--help"], capture_output=True,
                             text=True, timeout=30, env={**os.environ, "COLUMNS": "80"})
        assert out.returncode == 0, (args, out.stderr)
        assert [line for line in out.stdout.splitlines() if len(line) > 80] == [], args


def test_top_lists_no_output_format_and_explains_one():
    helped = run_cli("top", "--help").stdout
    assert "--json" not in helped and "--format" not in helped and "--no-color" in helped
    for args in (["top", "--json"], ["top", "--format", "csv"], ["--json", "top"]):
        out = run_cli(*args)
        assert out.returncode == 2, args
        assert "top is a screen; for JSON use `netmonctl watch --json`" in out.stderr, args


def test_json_help_says_what_is_printed():
    assert "Print the daemon's JSON" in run_cli("conns", "--help").stdout
    for args in (["fleet"], ["fleet", "ls"], ["dial-stdio"], []):
        helped = run_cli(*args, "--help").stdout
        assert "--json" in helped and "daemon's JSON" not in helped, args


def test_top_sort_names_its_fields():
    helped = " ".join(run_cli("top", "--help").stdout.split())
    assert "speed, upload_speed, download_speed, bytes, connections, process_name, duration" in helped
    out = run_cli("top", "--sort", "pid")
    assert out.returncode == 2 and "'pid' is not one of" in out.stderr


def test_pid_range_is_explained():
    out = run_cli("--socket", "/nonexistent.sock", "conns", "--pid", "1-5")
    assert out.returncode == 2
    assert "'1-5' is not a process id: give one number" in out.stderr and "--proc NAME" in out.stderr


@pytest.mark.parametrize("value", ["-1", "0", "0.05", "3601", "-5ms"])
def test_interval_out_of_range_says_the_range(value):
    out = run_cli("--socket", "/nonexistent.sock", "interval", value)
    assert out.returncode == 2
    assert f"{value}: the interval must be between 0.1 and 3600 seconds" in out.stderr
    assert "No such option" not in out.stderr


def test_interval_range_is_the_daemons():
    from netmond.config import ConfigError, build_config
    from netmonctl.options import INTERVAL_RANGE

    low, high = INTERVAL_RANGE
    for ok in (low, high):
        assert build_config({}, interval=ok).interval == ok
    for bad in (low / 2, high + 1):
        with pytest.raises(ConfigError):
            build_config({}, interval=bad)


def test_json_and_another_format_are_refused_together():
    out = run_cli("--socket", "/nonexistent.sock", "conns", "--format", "csv", "--json")
    assert out.returncode == 2 and "--json and --format csv contradict each other" in out.stderr
    # The same format twice agrees; a command's own choice overrides the global one.
    assert run_cli("--socket", "/nonexistent.sock", "conns", "--json", "--format", "json").returncode == 3
    assert run_cli("--socket", "/nonexistent.sock", "--format", "csv", "conns", "--json").returncode == 3


def test_hint_does_not_suggest_a_directory_netmond_refuses(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # others could replace the socket: netmond refuses it
    path = str(shared / "x.sock")
    code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path)
    text = "\n".join(lines)
    assert f"--socket {path}" not in text and "writable by other users" in text


def test_service_hint_only_where_a_service_manager_runs(monkeypatch):
    from common import paths

    monkeypatch.setattr(paths, "is_root", lambda: False)
    path = paths.system_socket_path()
    monkeypatch.setattr(cli_module, "_service_manager_runs", lambda: False)
    _code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path)
    assert not any("as a service" in line for line in lines)
    monkeypatch.setattr(cli_module, "_service_manager_runs", lambda: True)
    _code, lines = exit_code_for(DaemonUnavailable(path, "no socket file"), path)
    assert any("as a service: sudo " in line for line in lines)
