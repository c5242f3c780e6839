"""netmonctl end to end: a real netmond subprocess, real sockets, and the CLI run
both in-process (Click's CliRunner) and as the installed console script.

The module's daemon sees a fixed set of sockets held by this test process and
by a helper process with its own name, so that every filter has rows it must
keep and rows it must drop:

    listen4 / client4 / server4    TCP 127.0.0.1 listener and an established pair
    udp4                           unconnected UDP socket on 127.0.0.1
    listen6 / client6 / server6    the same over ::1 (when IPv6 is available)
    listen_lan / client_lan / ...  the same over this host's own LAN address
    helper                         TCP listener of a process named "nmfixture"

Other processes on the machine may add rows of their own; assertions only
look at these sockets (plus a per-filter predicate every returned row must
satisfy).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import psutil
import pytest
from click.testing import CliRunner

from common.client import Client, wait_for_daemon
from common.models import APP_FIELDS, CONNECTION_FIELDS, HISTORY_FIELDS, INTERFACE_FIELDS, STATS_FIELDS
from netmonctl.cli import cli
from tests.conftest import ProcessDaemon, netmonctl_cmd, netmond_cmd
from tests.helpers import REPO, tcp_pair, wait_until

HELPER_NAME = "nmfixture"
DAEMON_ARGS = ("--backend", "portable", "--interval", "0.2", "--include-loopback")


# -- running netmonctl -----------------------------------------------------------


class Ran(NamedTuple):
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return json.loads(self.out)


def console_script() -> list[str]:
    """The installed `netmonctl` next to this interpreter, else python -m."""
    script = Path(sys.executable).with_name("netmonctl")
    return [str(script)] if script.exists() else netmonctl_cmd()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NETMON_SOCKET", "NO_COLOR")}
    env.update(extra)
    return env


def run_clirunner(socket_path: str | None, *args: str, env: dict[str, str] | None = None) -> Ran:
    argv = (["--socket", socket_path] if socket_path else []) + list(args)
    result = CliRunner(env={"NETMON_SOCKET": None, **(env or {})}).invoke(cli, argv)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_subprocess(
    socket_path: str | None, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> Ran:
    argv = (prefix or []) + console_script() + (["--socket", socket_path] if socket_path else []) + list(args)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env(**(env or {})),
                         cwd="/")
    return Ran(out.returncode, out.stdout, out.stderr)


RUNNERS = {"clirunner": run_clirunner, "subprocess": run_subprocess}


# -- the module's daemon and sockets -------------------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[ProcessDaemon]:
    directory = tempfile.mkdtemp(prefix="nmctl-", dir="/tmp")
    path = os.path.join(directory, "d.sock")
    log_path = os.path.join(directory, "d.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(netmond_cmd("--socket", path, *DAEMON_ARGS),
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    d = ProcessDaemon(path, proc, log_path)
    try:
        wait_for_daemon(path, timeout=15)
        yield d
    except TimeoutError:
        raise AssertionError(f"netmond did not start:\n{d.log()}") from None
    finally:
        d.stop(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=sorted(RUNNERS))
def run(request, daemon) -> Callable[..., Ran]:
    """netmonctl against the module's daemon, in-process or as a subprocess."""
    runner = RUNNERS[request.param]
    return lambda *args, **kw: runner(daemon.socket, *args, **kw)


def row_key(row: dict[str, Any]) -> tuple:
    return (row["protocol"], row["local_addr"], row["remote_addr"])


def addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def lan_address() -> str | None:
    """An IPv4 address of this host that is not loopback, if any."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


@dataclass
class Endpoints:
    """The sockets the filters are checked against, by label."""

    keys: dict[str, tuple] = field(default_factory=dict)
    port4: int = 0
    host_ip: str | None = None
    lan_scope: str | None = None
    self_name: str = ""
    helper_pid: int | None = None


def _pair(ep: Endpoints, stack: list, suffix: str, host: str) -> int:
    cm = tcp_pair(host)
    lst, cli_sock, srv = cm.__enter__()
    stack.append(cm)
    port = lst.getsockname()[1]
    client_addr = addr(host, cli_sock.getsockname()[1])
    ep.keys[f"listen{suffix}"] = ("TCP", addr(host, port), None)
    ep.keys[f"client{suffix}"] = ("TCP", client_addr, addr(host, port))
    ep.keys[f"server{suffix}"] = ("TCP", addr(host, port), client_addr)
    cli_sock.sendall(b"x" * 1000)  # some loopback traffic for the totals
    srv.recv(4096)
    return port


@pytest.fixture(scope="module")
def endpoints(daemon) -> Iterator[Endpoints]:
    ep = Endpoints(self_name=psutil.Process().name())
    stack: list = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    helper = None
    try:
        ep.port4 = _pair(ep, stack, "4", "127.0.0.1")
        udp.bind(("127.0.0.1", 0))
        ep.keys["udp4"] = ("UDP", addr("127.0.0.1", udp.getsockname()[1]), None)
        try:
            _pair(ep, stack, "6", "::1")
        except OSError:
            pass  # no IPv6 here: the cases that need it skip
        ep.host_ip = lan_address()
        if ep.host_ip:
            _pair(ep, stack, "_lan", ep.host_ip)
            ip = ipaddress.ip_address(ep.host_ip)
            ep.lan_scope = "lan" if ip.is_private or ip.is_link_local else "internet"
        if sys.platform.startswith("linux"):
            # A listener owned by another process with another name (comm set
            # with prctl(PR_SET_NAME) before the socket exists).
            code = (
                "import ctypes, socket, sys\n"
                f"ctypes.CDLL(None).prctl(15, b'{HELPER_NAME}', 0, 0, 0)\n"
                "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                "print(s.getsockname()[1], flush=True)\n"
                "sys.stdin.read()\n"
            )
            helper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            port = int(helper.stdout.readline())
            ep.helper_pid = helper.pid
            ep.keys["helper"] = ("TCP", addr("127.0.0.1", port), None)

        wanted = set(ep.keys.values())
        pids = [p for p in (os.getpid(), ep.helper_pid) if p]

        def all_listed() -> bool:
            with Client.connect(daemon.socket, timeout=10) as c:
                seen = set()
                for pid in pids:
                    seen |= {row_key(r) for r in c.call("connections", {"filter": {"pid": pid}})["connections"]}
            return wanted <= seen

        wait_until(all_listed, timeout=20, interval=0.2)
        yield ep
    finally:
        udp.close()
        for cm in reversed(stack):
            cm.__exit__(None, None, None)
        if helper is not None:
            helper.stdin.close()
            try:
                helper.wait(5)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(5)
            helper.stdout.close()


# -- connections -------------------------------------------------------------------


def test_conns_json_is_the_wire_shape_with_our_connection(run, endpoints):
    data = run("conns", "--json").json()
    assert list(data) == ["connections"]
    rows = data["connections"]
    assert rows
    for row in rows:
        assert set(row) == set(CONNECTION_FIELDS), row
    mine = [r for r in rows if row_key(r) == endpoints.keys["client4"]]
    assert len(mine) == 1
    row = mine[0]
    assert row["pid"] == os.getpid()
    assert row["state"] == "ESTABLISHED"
    assert row["remote_addr"] == f"127.0.0.1:{endpoints.port4}"
    assert row["scope"] == "loopback"
    assert row["process_name"] == endpoints.self_name


def test_json_works_as_a_global_option_too(run, endpoints):
    data = run("--json", "conns", "--pid", str(os.getpid())).json()
    assert endpoints.keys["client4"] in {row_key(r) for r in data["connections"]}


def test_conns_table_is_human(run, endpoints):
    r = run("conns", "--pid", str(os.getpid()), "--proto", "tcp", "--family", "4")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["PROTO", "LOCAL", "REMOTE", "STATE", "PID", "PROCESS",
                                "UP", "DOWN", "SENT", "RECV", "AGE"]
    assert any(f"127.0.0.1:{endpoints.port4}" in line and "ESTABLISHED" in line for line in lines)
    assert "\x1b[" not in r.out  # not a terminal: no colour


def test_conns_ndjson_and_csv(run, endpoints):
    pid = str(os.getpid())
    r = run("conns", "--pid", pid, "--format", "ndjson")
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert rows and all(set(row) == set(CONNECTION_FIELDS) for row in rows)
    r = run("conns", "--pid", pid, "--format", "csv")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == ",".join(CONNECTION_FIELDS)
    assert len(lines) == len(rows) + 1


def test_sort_reverse_and_limit(run, endpoints):
    pid = str(os.getpid())
    rows = run("conns", "--pid", pid, "--sort", "local_port", "--json").json()["connections"]
    ports = [r["local_port"] for r in rows]
    assert ports == sorted(ports) and len(ports) >= 4
    rows = run("conns", "--pid", pid, "--sort", "local_port", "--reverse", "--json").json()["connections"]
    assert [r["local_port"] for r in rows] == sorted(ports, reverse=True)
    rows = run("conns", "--pid", pid, "--limit", "2", "--json").json()["connections"]
    assert len(rows) == 2


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Endpoints], list[str]]
    keep: tuple[str, ...]
    drop: tuple[str, ...]
    check: Callable[[dict, Endpoints], bool] | None = None


def _in(network: str) -> Callable[[dict, Endpoints], bool]:
    """Either address in `network`; an IPv4-mapped IPv6 address counts as its IPv4 one."""
    net = ipaddress.ip_network(network)

    def inside(ip: str | None) -> bool:
        if ip is None:
            return False
        a = ipaddress.ip_address(ip)
        a = getattr(a, "ipv4_mapped", None) or a
        return a.version == net.version and a in net

    return lambda row, ep: inside(row["local_ip"]) or inside(row["remote_ip"])


def _listening(row: dict) -> bool:
    return row["state"] == "LISTEN" or (row["protocol"] == "UDP" and row["remote_ip"] is None)


CASES = [
    Case("proc-self", lambda e: ["--proc", e.self_name.upper()],
         ("client4", "listen4", "udp4", "client6"), ("helper",),
         lambda r, e: e.self_name.lower() in (r["process_name"] or "").lower()),
    Case("proc-helper", lambda e: ["--proc", "NMFIX"], ("helper",), ("client4", "listen4", "udp4"),
         lambda r, e: "nmfix" in (r["process_name"] or "").lower()),
    Case("pid", lambda e: ["--pid", str(os.getpid())], ("client4", "udp4", "listen6"), ("helper",),
         lambda r, e: r["pid"] == os.getpid()),
    Case("proto-udp", lambda e: ["--proto", "udp"], ("udp4",), ("client4", "listen4", "helper"),
         lambda r, e: r["protocol"] == "UDP"),
    Case("proto-tcp", lambda e: ["--proto", "TCP"], ("client4", "listen4", "helper"), ("udp4",),
         lambda r, e: r["protocol"] == "TCP"),
    Case("state", lambda e: ["--state", "established"], ("client4", "server4", "client6", "client_lan"),
         ("listen4", "udp4", "helper"), lambda r, e: r["state"] == "ESTABLISHED"),
    Case("state-repeated", lambda e: ["--state", "LISTEN", "--state", "NONE"],
         ("listen4", "udp4", "listen6", "helper"), ("client4", "server4"),
         lambda r, e: r["state"] in ("LISTEN", "NONE")),
    Case("port", lambda e: ["--port", str(e.port4)], ("listen4", "client4", "server4"),
         ("udp4", "listen6", "helper"), lambda r, e: e.port4 in (r["local_port"], r["remote_port"])),
    Case("ip-v4", lambda e: ["--ip", "127.0.0.1"], ("client4", "listen4", "udp4", "helper"),
         ("client6", "listen6", "client_lan"), _in("127.0.0.1/32")),
    Case("ip-cidr", lambda e: ["--ip", "127.0.0.0/8"], ("client4", "server4", "udp4"),
         ("client6", "client_lan", "listen_lan"), _in("127.0.0.0/8")),
    Case("ip-v6", lambda e: ["--ip", "::1"], ("client6", "listen6"), ("client4", "udp4"), _in("::1/128")),
    Case("ip-lan", lambda e: ["--ip", f"{e.host_ip}/32"], ("client_lan", "listen_lan"), ("client4",),
         lambda r, e: e.host_ip in (r["local_ip"], r["remote_ip"])),
    Case("scope-loopback", lambda e: ["--scope", "loopback"], ("client4", "client6", "listen4", "udp4"),
         ("client_lan", "listen_lan"), lambda r, e: r["scope"] == "loopback"),
    Case("scope-lan", lambda e: ["--scope", e.lan_scope], ("client_lan", "server_lan", "listen_lan"),
         ("client4", "client6"), lambda r, e: r["scope"] == e.lan_scope),
    Case("search-port", lambda e: ["--search", str(e.port4)], ("listen4", "client4", "server4"),
         ("udp4", "helper")),
    Case("search-name", lambda e: ["--search", "nmfix"], ("helper",), ("client4", "udp4")),
    Case("search-ip", lambda e: ["--search", "::1"], ("client6", "listen6"), ("client4", "udp4")),
    Case("family-6", lambda e: ["--family", "6"], ("client6", "listen6"), ("client4", "udp4"),
         lambda r, e: r["family"] == "IPv6"),
    Case("family-4", lambda e: ["--family", "4"], ("client4", "udp4", "helper"), ("client6", "listen6"),
         lambda r, e: r["family"] == "IPv4"),
    Case("listening", lambda e: ["--listening"], ("listen4", "udp4", "listen6", "helper"),
         ("client4", "server4", "client6"), lambda r, e: _listening(r)),
    Case("no-listening", lambda e: ["--no-listening"], ("client4", "server4", "client6"),
         ("listen4", "udp4", "helper"), lambda r, e: not _listening(r)),
    Case("remote-only", lambda e: ["--remote-only"], ("client_lan", "server_lan"),
         ("client4", "client6", "listen4", "listen_lan", "udp4"),
         lambda r, e: r["remote_ip"] is not None and r["scope"] != "loopback"),
    Case("combined", lambda e: ["--proto", "tcp", "--state", "LISTEN", "--family", "4"],
         ("listen4", "helper"), ("listen6", "client4", "udp4"),
         lambda r, e: (r["protocol"], r["state"], r["family"]) == ("TCP", "LISTEN", "IPv4")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_filter_keeps_and_drops_exactly(run, endpoints, case):
    keep = [label for label in case.keep if label in endpoints.keys]
    drop = [label for label in case.drop if label in endpoints.keys]
    if not keep or not drop:
        pytest.skip("the sockets this case needs (IPv6, LAN address, helper) are not available here")
    rows = run("conns", "--json", *case.args(endpoints)).json()["connections"]
    got = {row_key(r) for r in rows}
    for label in keep:
        assert endpoints.keys[label] in got, f"{case.id} dropped {label}"
    for label in drop:
        assert endpoints.keys[label] not in got, f"{case.id} kept {label}"
    if case.check:
        bad = [r for r in rows if not case.check(r, endpoints)]
        assert not bad, f"{case.id} returned rows that do not match: {bad[:3]}"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ip", "not-an-ip"], "not an address or CIDR"),
        (["--state", "BOGUS"], "unknown state 'BOGUS'"),
        (["--port", "99999"], "--port"),
    ],
)
def test_bad_filters_are_usage_errors(run, args, needle):
    r = run("conns", *args)
    assert r.code == 2
    assert needle in r.err and "Traceback" not in r.err
    assert r.out == ""


# -- apps, stats, history, status ----------------------------------------------------


def test_apps_json(run, endpoints):
    data = run("apps", "--json").json()
    assert list(data) == ["apps"]
    assert all(set(a) == set(APP_FIELDS) for a in data["apps"])
    mine = run("apps", "--pid", str(os.getpid()), "--json").json()["apps"]
    assert [a["process_name"] for a in mine] == [endpoints.self_name]
    assert os.getpid() in mine[0]["pids"]
    r = run("apps", "--pid", str(os.getpid()))
    assert r.code == 0 and r.out.split()[:7] == ["PROCESS", "PIDS", "CONNS", "UP", "DOWN", "SENT", "RECV"]


def test_stats_json_and_table(run, endpoints):
    data = run("stats", "--json").json()
    assert set(STATS_FIELDS) <= set(data)
    assert data["interfaces"] and all(set(i) == set(INTERFACE_FIELDS) for i in data["interfaces"])
    r = run("stats")
    assert r.code == 0, r.err
    for label in ("upload:", "download:", "attributed:", "unattributed:", "INTERFACE"):
        assert label in r.out


def test_history_json_and_table(run, daemon):
    def points() -> list:
        return run("history", "--seconds", "30", "--json").json()["history"]

    history = wait_until(points, timeout=10)
    assert all(set(p) == set(HISTORY_FIELDS) for p in history)
    stamps = [p["timestamp"] for p in history]
    assert stamps == sorted(stamps)
    # A second look is another window: points may have left it meanwhile (a
    # slow tick adds none), so its points are checked, not their count.
    lines = run("history", "--seconds", "30", "--format", "ndjson").out.splitlines()
    assert lines and all(set(json.loads(line)) == set(HISTORY_FIELDS) for line in lines)
    r = run("history", "--seconds", "30")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].split() == ["TIME", "UP", "DOWN"]
    spark = [line for line in r.out.splitlines() if line.startswith(("up ", "down "))]
    assert len(spark) == 2 and all("peak" in line for line in spark)


def test_status(run, daemon):
    data = run("status", "--json").json()
    assert data["monitoring"] is True and data["backend"] == "portable"
    r = run("status")
    assert r.code == 0, r.err
    for label in ("monitoring:", "backend:", "warnings:", "socket:"):
        assert label in r.out
    assert "per-socket byte counters unavailable" in r.out  # the portable backend's warning


def test_interval_out_of_range_is_a_usage_error(run):
    # Refused before asking the daemon, with the daemon's range (the daemon's own
    # invalid_params answer maps to exit 2 too: see test_daemon_errors_map_to_their_codes).
    r = run("interval", "0")
    assert r.code == 2
    assert "the interval must be between 0.1 and 3600 seconds" in r.err and "Traceback" not in r.err


# -- control: each test has a daemon of its own -------------------------------------


@pytest.fixture
def fresh(start_daemon_process) -> ProcessDaemon:
    return start_daemon_process(*DAEMON_ARGS)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_stop_freezes_ticks_and_start_resumes(fresh, runner):
    ctl = lambda *a: RUNNERS[runner](fresh.socket, *a)  # noqa: E731
    r = ctl("stop")
    assert (r.code, r.out) == (0, "monitoring stopped\n")
    assert ctl("stop", "--json").json() == {"monitoring": False}
    # A tick in flight when stop is answered is not applied (app._sampler):
    # the count is final at once.
    status = ctl("status", "--json").json()
    assert status["monitoring"] is False
    time.sleep(0.6)  # what is tested: nothing ticks over three intervals
    assert ctl("status", "--json").json()["ticks"] == status["ticks"]

    assert ctl("start", "--json").json() == {"monitoring": True}
    wait_until(lambda: ctl("status", "--json").json()["ticks"] > status["ticks"] + 1, timeout=10)


def test_clear_zeroes_totals_and_history(fresh):
    ctl = lambda *a: run_clirunner(fresh.socket, *a)  # noqa: E731
    with tcp_pair() as (_, client, server):
        def traffic() -> bool:
            client.sendall(b"y" * 65536)
            server.recv(1 << 20)
            stats = ctl("stats", "--json").json()
            history = ctl("history", "--json").json()["history"]
            return stats["total_bytes_sent"] > 0 and len(history) > 0

        wait_until(traffic, timeout=10, interval=0.1)
    # Stopped first, so no tick can add bytes between clear and the checks.
    assert ctl("stop").code == 0
    r = ctl("clear")
    assert (r.code, r.out) == (0, "totals and history cleared\n")
    stats = ctl("stats", "--json").json()
    assert (stats["total_bytes_sent"], stats["total_bytes_received"]) == (0, 0)
    assert all(i["bytes_sent"] == 0 and i["bytes_received"] == 0 for i in stats["interfaces"])
    assert ctl("history", "--json").json() == {"history": []}
    assert ctl("clear", "--json").json() == {"monitoring": False}
    assert ctl("start").code == 0


def test_interval_shows_and_sets(fresh):
    r = run_subprocess(fresh.socket, "interval")
    assert (r.code, r.out) == (0, "sampling interval: 0.2s\n")
    r = run_subprocess(fresh.socket, "interval", "500ms")
    assert (r.code, r.out) == (0, "sampling interval set to 0.5s\n")
    assert run_clirunner(fresh.socket, "interval", "--json").json() == {"interval": 0.5}
    assert run_clirunner(fresh.socket, "status", "--json").json()["interval"] == 0.5


# -- unreachable and forbidden daemons -------------------------------------------------


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_no_daemon_is_exit_3_with_a_hint(short_dir, runner):
    path = os.path.join(short_dir, "absent.sock")
    for r in (RUNNERS[runner](path, "status"),
              RUNNERS[runner](None, "conns", "--json", env={"NETMON_SOCKET": path})):
        assert r.code == 3
        assert r.out == ""
        assert f"cannot reach netmond at {path}" in r.err
        assert f"netmond --socket {path} &" in r.err
        assert "NETMON_SOCKET" in r.err
        assert "Traceback" not in r.err


def as_nobody() -> list[str]:
    """argv prefix running a command as nobody, or skip saying why not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    if not shutil.which("setpriv"):
        pytest.skip("setpriv not installed")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(prefix + console_script() + ["--version"], capture_output=True, text=True,
                           timeout=30, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run netmonctl from this venv/checkout: {probe.stderr.strip()[-200:]}")
    return prefix


def test_socket_mode_000_is_exit_4_with_a_hint(short_dir):
    prefix = as_nobody()
    path = os.path.join(short_dir, "root.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        os.chmod(path, 0)
        assert os.stat(path).st_uid == 0 and stat.S_IMODE(os.stat(path).st_mode) == 0
        r = run_subprocess(path, "status", prefix=prefix)
    finally:
        listener.close()
    assert r.code == 4, r
    assert f"access to {path} denied" in r.err
    assert "netmond --socket-group" in r.err and "sudo" in r.err
    assert "Traceback" not in r.err


def test_control_without_rights_is_exit_4(fresh):
    prefix = as_nobody()
    # Let nobody connect (reading is allowed to anyone who can), but nobody is
    # neither root, the daemon's user, nor in its group: control is refused.
    os.chmod(os.path.dirname(fresh.socket), 0o755)
    os.chmod(fresh.socket, 0o666)
    assert run_subprocess(fresh.socket, "status", "--json", prefix=prefix).json()["monitoring"] is True
    r = run_subprocess(fresh.socket, "stop", prefix=prefix)
    assert r.code == 4
    assert "access_denied" in r.err and "sudo" in r.err and "Traceback" not in r.err
    assert run_clirunner(fresh.socket, "status", "--json").json()["monitoring"] is True
