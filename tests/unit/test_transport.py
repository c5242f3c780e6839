"""netmonctl's remote plumbing without ssh or a daemon: `-H` parsing, the ssh
command line and its quoting, ssh failures -> errors and exit codes, the
dial-stdio relay, hosts.toml / fleet.json, fleet statuses."""

from __future__ import annotations

import json
import os
import shlex
import socket
import threading

import pytest
from click.testing import CliRunner

from common.client import AccessDenied, DaemonUnavailable, UntrustedSocket
from common.errors import FailureKind
from common.protocol import ProtocolError, RPCError
from netmonctl import fleetfile, transport
from netmonctl.cli import EXIT_ACCESS_DENIED, EXIT_UNREACHABLE, cli, exit_code_for
from netmonctl.commands.dial_stdio import relay
from netmonctl.commands import fleet as fleet_module
from netmonctl.commands.fleet import HostStatus, Poller, classify, hosts_table
from netmonctl.session import Settings
from netmonctl.targets import Target, TargetError, parse_url
from netmonctl.transport import (
    RemoteAccessDenied,
    RemoteUnavailable,
    explain_failure,
    remote_command_line,
    ssh_argv,
)


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """hosts.toml and fleet.json under tmp_path."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(transport.ENV_SSH_COMMAND, raising=False)
    return tmp_path


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, host, user, port, sock",
    [
        ("ssh://nas", "nas", None, None, None),
        ("ssh://nas/", "nas", None, None, None),
        ("ssh://admin@nas.lan:2222", "nas.lan", "admin", 2222, None),
        ("ssh://admin@nas.lan/run/netmond.sock", "nas.lan", "admin", None, "/run/netmond.sock"),
        ("ssh://[::1]:22/tmp/my%20dir/n.sock", "::1", None, 22, "/tmp/my dir/n.sock"),
        ("SSH://a%2Bb@host", "host", "a+b", None, None),
    ],
)
def test_ssh_urls(url, host, user, port, sock):
    t = parse_url(url)
    assert (t.scheme, t.host, t.user, t.port, t.socket) == ("ssh", host, user, port, sock)


def test_unix_url_and_round_trip():
    assert parse_url("unix:///run/netmond.sock") == Target("unix", socket="/run/netmond.sock")
    t = parse_url("ssh://admin@[::1]:2222/run/n.sock")
    assert t.url == "ssh://admin@[::1]:2222/run/n.sock"
    assert parse_url(t.url) == t


@pytest.mark.parametrize(
    "url, needle",
    [
        ("ssh://admin:hunter2@nas", "passwords"),
        ("ssh://nas/run/n.sock?x=1", "queries"),
        ("ssh://nas#frag", "fragments"),
        ("ssh://-oProxyCommand=touch%20x/", "'-'"),
        ("ssh://-oProxyCommand=x@nas", "'-'"),
        ("http://nas", "unsupported scheme"),
        ("unix://relative/n.sock", "unix:///absolute/path"),
        ("unix://", "unix:///absolute/path"),
        ("ssh://", "no host"),
        ("ssh://nas:99999", "nas:99999"),
        ("ssh://na%0As", "control characters"),
    ],
)
def test_refused_urls(url, needle):
    with pytest.raises(TargetError, match=needle.replace("?", r"\?")):
        parse_url(url)


def test_bad_remote_command_is_refused():
    with pytest.raises(TargetError, match="remote_command"):
        parse_url("ssh://nas", remote_command="'unbalanced")


# -- the ssh command line ----------------------------------------------------------


def test_ssh_argv_has_the_documented_shape(monkeypatch):
    monkeypatch.delenv(transport.ENV_SSH_COMMAND, raising=False)
    t = parse_url("ssh://admin@nas:2222/run/netmond.sock")
    assert ssh_argv(t) == [
        "ssh", "-T", "-l", "admin", "-p", "2222",
        "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=2",
        "--", "nas", "netmonctl dial-stdio --socket /run/netmond.sock",
    ]
    # Caller's options first (ssh keeps the first value), then the entry's.
    t2 = parse_url("ssh://nas", ssh_options=("-i", "/k"))
    argv = ssh_argv(t2, ["-o", "BatchMode=yes"])
    assert argv[:6] == ["ssh", "-T", "-o", "BatchMode=yes", "-i", "/k"]
    assert argv[-3:] == ["--", "nas", "netmonctl dial-stdio"]


def test_ssh_command_can_be_replaced(monkeypatch):
    monkeypatch.setenv(transport.ENV_SSH_COMMAND, "ssh -F '/tmp/my config'")
    assert ssh_argv(parse_url("ssh://h"))[:4] == ["ssh", "-F", "/tmp/my config", "-T"]


def test_remote_command_is_quoted_word_by_word():
    evil = "/tmp/a b/$(touch pwned);`id`.sock"
    line = remote_command_line(parse_url("ssh://h", socket_path=evil))
    assert shlex.split(line) == ["netmonctl", "dial-stdio", "--socket", evil]
    line = remote_command_line(parse_url("ssh://h", remote_command="~/.local/bin/netmonctl --timeout 9"))
    assert line == "~/.local/bin/netmonctl --timeout 9 dial-stdio"
    line = remote_command_line(parse_url("ssh://h", remote_command="'/opt/net mon/netmonctl'"))
    assert shlex.split(line) == ["/opt/net mon/netmonctl", "dial-stdio"]


# -- failures -----------------------------------------------------------------------

T = parse_url("ssh://admin@nas:2222")


def test_ssh_success_or_still_running_explains_nothing():
    assert explain_failure(T, 0, "") is None
    assert explain_failure(T, None, "whatever") is None


def test_login_refused_is_access_denied_with_a_hint():
    err = explain_failure(T, 255, "admin@nas: Permission denied (publickey).\r\n")
    assert isinstance(err, RemoteAccessDenied) and err.kind is FailureKind.AUTH
    assert err.hints[0] == "admin@nas: Permission denied (publickey)."
    assert "ssh -p 2222 admin@nas" in err.hints[-1]
    code, lines = exit_code_for(err)
    assert code == EXIT_ACCESS_DENIED and lines[1:] == err.hints


def test_unknown_host_key_says_run_ssh_once():
    text = ("No ED25519 host key is known for [nas]:2222 and you have requested strict checking.\n"
            "Host key verification failed.\n")
    err = explain_failure(T, 255, text)
    assert isinstance(err, RemoteUnavailable) and err.kind is FailureKind.HOST_KEY
    assert err.hints[-1] == "run `ssh -p 2222 admin@nas` once to check and accept its host key"
    code, lines = exit_code_for(err)
    assert code == EXIT_UNREACHABLE and lines[-1] == err.hints[-1]


def test_changed_host_key_points_at_ssh_keygen():
    text = "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n"
    err = explain_failure(T, 255, text)
    assert err.kind is FailureKind.HOST_KEY and "ssh-keygen -R nas" in err.hints[-1]


@pytest.mark.parametrize(
    "stderr, kind",
    [
        ("ssh: connect to host nas port 2222: Connection refused", FailureKind.OFFLINE),
        ("ssh: connect to host nas port 2222: Connection timed out", FailureKind.OFFLINE),
        ("ssh: Could not resolve hostname nas: Name or service not known", FailureKind.OFFLINE),
        ("kex_exchange_identification: something odd", FailureKind.REMOTE_FAILED),
    ],
)
def test_other_ssh_failures(stderr, kind):
    err = explain_failure(T, 255, "Warning: Permanently added 'x' to the list of known hosts.\n" + stderr)
    assert isinstance(err, RemoteUnavailable) and err.kind is kind
    assert err.reason == f"ssh failed: {stderr}"
    assert exit_code_for(err)[0] == EXIT_UNREACHABLE


def test_remote_command_not_found_gives_the_path_hint():
    err = explain_failure(T, 127, "sh: 1: netmonctl: not found\n")
    assert err.kind is FailureKind.NO_REMOTE_COMMAND
    assert err.hints[0] == "sh: 1: netmonctl: not found"
    assert "non-login PATH" in err.hints[-1] and "remote_command" in err.hints[-1]
    assert exit_code_for(err)[0] == EXIT_UNREACHABLE


def test_remote_netmonctl_exit_codes_keep_their_meaning():
    no_daemon = explain_failure(T, 3, "netmonctl: cannot reach netmond at /run/netmond.sock: no socket file\n")
    assert isinstance(no_daemon, DaemonUnavailable) and no_daemon.kind is FailureKind.NO_DAEMON
    assert no_daemon.hints[0] == "remote: cannot reach netmond at /run/netmond.sock: no socket file"
    assert exit_code_for(no_daemon)[0] == EXIT_UNREACHABLE
    denied = explain_failure(T, 4, "netmonctl: access to /run/netmond.sock denied: Permission denied\n")
    assert isinstance(denied, AccessDenied) and denied.kind is FailureKind.ACCESS_DENIED
    assert exit_code_for(denied)[0] == EXIT_ACCESS_DENIED
    old = explain_failure(T, 2, "Error: No such command 'dial-stdio'.\n")
    assert "too old" in old.hints[-1]


def test_fleet_statuses_from_failures():
    assert classify(explain_failure(T, 255, "Permission denied (publickey)."), 5)[0] == "AUTH_FAILED"
    assert classify(explain_failure(T, 255, "Host key verification failed."), 5)[0] == "AUTH_FAILED"
    assert classify(explain_failure(T, 3, ""), 5)[0] == "NO_DAEMON"
    assert classify(explain_failure(T, 255, "Connection refused"), 5)[0] == "OFFLINE"
    status, error, hints = classify(explain_failure(T, 127, "x: not found"), 5)
    assert status == "UNKNOWN" and "PATH" in hints[-1]
    assert classify(TimeoutError(), 5) == ("OFFLINE", "no answer within 5s", [])
    assert classify(DaemonUnavailable("/x", "gone"), 5)[0] == "NO_DAEMON"
    assert classify(AccessDenied("/x", "mode"), 5)[0] == "AUTH_FAILED"
    assert classify(UntrustedSocket("/x", "uid 1234's"), 5)[0] == "AUTH_FAILED"
    # Connected, then the stream ended with nothing from ssh to say why.
    lost = DaemonUnavailable("h", "daemon closed the connection", FailureKind.CONNECTION_LOST)
    assert classify(lost, 5)[0] == "UNKNOWN"
    assert classify(RPCError("internal", "boom"), 5) == ("UNKNOWN", "internal: boom", [])
    assert classify(ProtocolError("not msgpack"), 5)[0] == "UNKNOWN"
    assert classify(ValueError("a bug"), 5) == ("UNKNOWN", "a bug", [])


def test_missing_ssh_binary_is_reported(monkeypatch):
    monkeypatch.setenv(transport.ENV_SSH_COMMAND, "/nonexistent/ssh")
    with pytest.raises(RemoteUnavailable, match="not found") as info:
        with transport.open_client(parse_url("ssh://h"), 1.0):
            pass
    assert info.value.kind is FailureKind.SSH_MISSING


def test_bad_host_value_is_a_usage_error(xdg):
    result = CliRunner().invoke(cli, ["-H", "ssh://u:pw@h", "status"])
    assert result.exit_code == 2 and "passwords in URLs are refused" in result.output
    result = CliRunner(env={"NETMON_HOST": "nosuchhost"}).invoke(cli, ["status"])
    assert result.exit_code == 2 and "unknown host 'nosuchhost'" in result.output


def test_remote_text_cannot_reach_the_terminal_raw():
    rows = [{"name": "evil", "status": "UNKNOWN", "last_seen": None, "connections": None,
             "upload_speed": None, "download_speed": None, "top_app": "\x1b]0;pwned\x07app",
             "version": None, "error": "boom \x1b[2J", "hints": ["remote: \x1b[31mred"]}]
    text = hosts_table(rows, Settings(no_color=True), 0.0)
    assert "\x1b" not in text and "\x07" not in text
    assert "evil: boom ?[2J" in text and "remote: ?[31mred" in text and "?]0;pwned?app" in text


def test_poller_bounds_parallel_polls_and_never_doubles_one_host(monkeypatch):
    running: list[str] = []
    peak = [0]
    calls: list[str] = []
    gate = threading.Event()
    lock = threading.Lock()

    def fake_poll(entry, timeout, sharing, children):
        with lock:
            running.append(entry.name)
            calls.append(entry.name)
            peak[0] = max(peak[0], len(running))
        gate.wait(5)
        with lock:
            running.remove(entry.name)
        return HostStatus(entry.name, entry.url, status="ONLINE")

    monkeypatch.setattr(fleet_module, "poll_host", fake_poll)
    entries = [fleetfile.HostEntry(f"h{i}", f"ssh://h{i}") for i in range(5)]
    poller = Poller(entries, timeout=1, parallel=2)
    try:
        poller.submit_due()
        poller.submit_due()  # all still in flight: nothing new is queued
        assert poller.collect(0.2) == []
        gate.set()
        results = []
        while poller.busy:
            results += poller.collect(5)
        assert sorted(r.name for r in results) == [e.name for e in entries]
        assert sorted(calls) == [e.name for e in entries] and peak[0] == 2
        poller.submit_due()  # done: the next round polls each host again
        while poller.busy:
            poller.collect(5)
        assert len(calls) == 10
    finally:
        poller.close()


def test_ssh_children_end_all_ends_them_and_starts_no_more():
    import subprocess
    import sys

    children = transport.SSHChildren()
    # One that ends on SIGTERM, one that must be killed after the grace.
    polite = children.start(["sleep", "60"])
    stubborn = children.start([sys.executable, "-c",
                               "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print(flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # SIGTERM ignored from here on
    done = children.start(["true"])
    done.wait()
    children.forget(done)
    children.end_all(grace=0.5)
    assert polite.returncode == -15 and stubborn.returncode == -9
    stubborn.stdout.close()
    with pytest.raises(transport.SSHChildren.Ended):
        children.start(["true"])


# -- hosts.toml, fleet.json ------------------------------------------------------------


def test_fleet_add_ls_rm_keep_the_users_comments(xdg):
    path = fleetfile.hosts_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as fh:
        fh.write("# my machines\n[hosts.nas]\nurl = \"ssh://admin@nas\"  # the NAS\ntags = [\"home\"]\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["fleet", "add", "web.1", "ssh://deploy@web1:2222/run/n.sock",
                                 "--tag", "prod", "--remote-command", "/opt/netmon/bin/netmonctl",
                                 "--ssh-option=-oProxyJump=bastion"])
    assert result.exit_code == 0, result.output
    hosts = fleetfile.load_hosts()
    assert list(hosts) == ["nas", "web.1"]
    assert hosts["web.1"].target() == Target(
        "ssh", host="web1", user="deploy", port=2222, socket="/run/n.sock",
        remote_command="/opt/netmon/bin/netmonctl", ssh_options=("-oProxyJump=bastion",), name="web.1",
    )
    assert runner.invoke(cli, ["fleet", "add", "nas", "ssh://x"]).exit_code == 2  # taken
    assert runner.invoke(cli, ["fleet", "add", "bad name", "ssh://x"]).exit_code == 2
    assert runner.invoke(cli, ["fleet", "add", "x", "ssh://u:pw@x"]).exit_code == 2
    listed = json.loads(runner.invoke(cli, ["fleet", "ls", "--json"]).stdout)
    assert [h["name"] for h in listed["hosts"]] == ["nas", "web.1"]
    assert listed["hosts"][0]["tags"] == ["home"]

    fleetfile.save_state({"web.1": {"last_seen": 5.0}})
    result = runner.invoke(cli, ["fleet", "rm", "web.1"])
    assert result.exit_code == 0, result.output
    text = open(path).read()
    assert text.startswith("# my machines\n[hosts.nas]\nurl = \"ssh://admin@nas\"  # the NAS\n")
    assert list(fleetfile.load_hosts()) == ["nas"]
    assert fleetfile.load_state() == {}
    assert runner.invoke(cli, ["fleet", "rm", "web.1"]).exit_code == 2


def test_rm_rewrites_a_layout_it_cannot_cut(xdg):
    path = fleetfile.hosts_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as fh:
        fh.write('hosts = { a = { url = "ssh://a" }, b = { url = "unix:///b.sock" } }\n')
    fleetfile.remove_host("a")
    assert list(fleetfile.load_hosts()) == ["b"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[hosts.a]\nurl = "ssh://a"\ncolour = "red"\n', "unknown key 'colour'"),
        ("[hosts.a]\ntags = []\n", "url is required"),
        ('[hosts.a]\nurl = "ssh://a"\ntags = "x"\n', "list of strings"),
        ('[hosts.a]\nurl = "ssh://-a"\n', "'-'"),
        ("[hosts.a\n", "invalid TOML"),
    ],
)
def test_bad_hosts_files_say_where(xdg, text, needle):
    with pytest.raises(fleetfile.FleetFileError, match=needle):
        fleetfile.parse_hosts(text)


def test_a_name_from_hosts_toml_resolves(xdg):
    fleetfile.add_host(fleetfile.HostEntry("box", "ssh://me@box", socket="/s.sock"))
    t = fleetfile.resolve("box")
    assert (t.host, t.user, t.socket, t.label) == ("box", "me", "/s.sock", "box")
    with pytest.raises(TargetError, match="unknown host"):
        fleetfile.resolve("other")


def test_state_merges_latest_last_seen(xdg):
    fleetfile.save_state({"a": {"last_seen": 10.0}, "b": {"last_seen": 1.0}})
    fleetfile.save_state({"a": {"last_seen": 5.0}, "c": {"last_seen": 3.0}})
    assert fleetfile.load_state() == {
        "a": {"last_seen": 10.0}, "b": {"last_seen": 1.0}, "c": {"last_seen": 3.0},
    }
    with open(fleetfile.state_path(), "w") as fh:
        fh.write("{torn")
    assert fleetfile.load_state() == {}


def test_empty_fleet_says_how_to_add(xdg):
    result = CliRunner().invoke(cli, ["fleet"])
    assert result.exit_code == 0 and "fleet add NAME" in result.stderr
    result = CliRunner().invoke(cli, ["fleet", "--json"])
    assert json.loads(result.stdout) == {"hosts": []}


# -- dial-stdio's relay ---------------------------------------------------------------


def test_relay_copies_both_ways_and_closes_each_direction_separately():
    daemon_side, ours = socket.socketpair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    t = threading.Thread(target=relay, args=(ours, in_r, out_w), daemon=True)
    t.start()
    try:
        os.write(in_w, b"request")
        daemon_side.settimeout(5)
        assert daemon_side.recv(100) == b"request"
        big = os.urandom(1 << 20)
        sender = threading.Thread(target=daemon_side.sendall, args=(big,))
        sender.start()
        got = b""
        while len(got) < len(big):
            got += os.read(out_r, 1 << 16)
        sender.join()
        assert got == big
        os.close(in_w)  # our input ends: the daemon sees EOF, output stays open
        assert daemon_side.recv(100) == b""
        daemon_side.sendall(b"last words")
        assert os.read(out_r, 100) == b"last words"
        daemon_side.close()  # the daemon finishes: our output ends
        t.join(5)
        assert not t.is_alive()
        assert os.read(out_r, 100) == b""
    finally:
        for fd in (in_r, out_r):
            os.close(fd)
        ours.close()
