"""`netmonctl top` driven in a real terminal, as a person would: tmux.

Each test starts a private tmux server (-S, a socket of its own) with one
100x30 window running a small script: it prints a marker, runs
`netmonctl top` against the fixture's daemon, then checks that the tty
modes are the same as before and records the exit code. The test generates
paced loopback traffic from its own process, reads the screen with
`capture-pane -p` until it shows what it expects (every wait is bounded)
and sends keys with `send-keys`. The tmux server is killed at teardown.

The layout itself is unit-tested on fixed data in tests/unit/test_topview.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import psutil
import pytest

from netmond.resolver import hosts_file_name
from netmonctl.topview import table_room
from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, tcp_pair, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (see .ci/run)")

DAEMON_ARGS = ("--include-loopback", "--interval", "0.5")
WAIT = 25.0  # seconds: the longest any screen may take to appear on a loaded machine
RATE = re.compile(r"(\d+(?:\.\d+)?) ([kMGTP]?B)/s")


def nonzero_rate(text: str) -> bool:
    """Some rate in text is more than 0 B/s."""
    return any(float(value) > 0 for value, _unit in RATE.findall(text))


class Terminal:
    """A private tmux server with one window running netmonctl top."""

    def __init__(self, directory: str) -> None:
        self.name = f"nmtop-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.directory = directory
        # The server's socket in the test's own directory (not /tmp/tmux-UID):
        # removed with it, whatever happens to the server.
        self.socket = os.path.join(directory, f"{self.name}.tmux")
        self.exit_file = os.path.join(directory, f"{self.name}.exit")

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-u", "-S", self.socket, *args], capture_output=True,
                             text=True, encoding="utf-8", errors="replace", timeout=15)
        assert out.returncode == 0, f"tmux {args[0]} failed: {out.stderr}"
        return out.stdout

    def start(self, socket_path: str, *top_args: str, prefix: str = "", width: int = 100,
              height: int = 30, host: str | None = None) -> None:
        """Run `netmonctl --socket S top ARGS` (with `host`: -H HOST) in a new detached window."""
        where = ("-H", host) if host else ("--socket", socket_path)
        argv = " ".join(f"'{a}'" for a in netmonctl_cmd(*where, "top", *top_args))
        script = os.path.join(self.directory, f"{self.name}.sh")
        with open(script, "w") as f:
            f.write(
                "#!/bin/sh\n"
                f"cd '{REPO}'\n"
                "export LANG=C.UTF-8 LC_ALL=C.UTF-8\n"
                "unset NETMON_SOCKET NO_COLOR\n"
                # Ctrl-C must reach top, not end this script: a trap (unlike
                # ignoring it) leaves top the default SIGINT disposition.
                "trap : INT\n"
                "echo BEFORE-TOP\n"
                'saved=$(stty -g)\n'
                f"{prefix}{argv}\n"
                "rc=$?\n"
                '[ "$saved" = "$(stty -g)" ] && echo TTY-RESTORED\n'
                'echo "AFTER-TOP rc=$rc"\n'
                f"echo $rc > '{self.exit_file}'\n"
                "sleep 60\n"
            )
        os.chmod(script, 0o755)
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height), script)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, predicate: Callable[[str], bool], what: str, timeout: float = WAIT) -> str:
        """The screen, once predicate(screen) holds."""
        return wait_until(self.screen, timeout, 0.2, what=f"the screen to show {what}", until=predicate)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def exit_code(self, timeout: float = 10.0) -> int:
        def written() -> str:
            try:
                with open(self.exit_file) as f:
                    return f.read().strip()
            except OSError:
                return ""

        try:
            return int(wait_until(written, timeout, 0.1, what="top to exit"))
        except AssertionError as e:
            raise AssertionError(f"{e}; the screen:\n{self.screen()}") from None

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=15)


@pytest.fixture
def terminal(short_dir: str) -> Iterator[Terminal]:
    term = Terminal(short_dir)
    try:
        yield term
    finally:
        term.kill()


@contextmanager
def loopback_traffic(chunk: int = 32_000, period: float = 0.02, limit: float = 120.0) -> Iterator[int]:
    """Paced traffic over a loopback pair of this process (~1.5 MB/s) while the
    block runs (at most `limit` seconds); yields the listener's port."""
    with tcp_pair() as (lst, cli, srv):
        srv.settimeout(5)
        stop = threading.Event()

        def pump() -> None:
            deadline = time.monotonic() + limit
            while not stop.is_set() and time.monotonic() < deadline:
                cli.sendall(b"x" * chunk)
                got = 0
                while got < chunk:
                    got += len(srv.recv(65536))
                stop.wait(period)

        thread = threading.Thread(target=pump, name="traffic", daemon=True)
        thread.start()
        try:
            yield lst.getsockname()[1]
        finally:
            stop.set()
            thread.join(10)


def table_line(text: str, needle: str) -> str:
    """The first screen line below the header block that contains needle ('' if none)."""
    for line in text.splitlines()[5:]:
        if needle in line:
            return line
    return ""


def title(text: str) -> str:
    return text.splitlines()[0] if text else ""


# -- tests ----------------------------------------------------------------------------


def test_top_shows_live_rates_and_answers_every_key(start_daemon_process, terminal):
    daemon = start_daemon_process(*DAEMON_ARGS)
    me = psutil.Process().name()
    with loopback_traffic() as port:
        terminal.start(daemon.socket)

        # Apps view: this process with a non-zero rate, totals and sparkline above.
        screen = terminal.wait_for(lambda s: nonzero_rate(table_line(s, me)),
                                   f"{me} with a non-zero rate")
        lines = screen.splitlines()
        assert "netmon top" in lines[0] and "applications" in lines[0]
        assert lines[1].startswith("up") and lines[2].startswith("down")
        assert "active connections" in lines[3] and "unattributed" in lines[3]
        assert "PROCESS" in screen and "q:quit" in lines[-1]
        terminal.wait_for(lambda s: nonzero_rate(s.splitlines()[1]), "a non-zero total upload rate")

        # c: connections, with our pair's port; a: back to applications.
        terminal.keys("c")
        terminal.wait_for(lambda s: "connections" in title(s) and "REMOTE" in s and f":{port}" in s,
                          "the connections view with our port")
        # h: remote hosts, our pair's peer by its hosts-file name, with its rate.
        terminal.keys("h")
        peer = hosts_file_name("127.0.0.1") or "127.0.0.1"
        terminal.wait_for(lambda s: "remote hosts" in title(s) and "PROCESSES" in s
                          and nonzero_rate(table_line(s, peer)) and me in table_line(s, peer),
                          f"the remote hosts view with {peer}, {me} and a non-zero rate")
        terminal.keys("a")
        terminal.wait_for(lambda s: "applications" in title(s) and "PIDS" in s, "the apps view again")

        # s: next sort column; r: reversed order.
        terminal.keys("s")
        terminal.wait_for(lambda s: "sort: upload_speed ▼" in s and "UP ▼" in s, "sorting by upload")
        terminal.keys("r")
        terminal.wait_for(lambda s: "sort: upload_speed ▲" in s, "reversed order")
        terminal.keys("r", "s", "s", "s", "s", "s")  # back round to speed, descending
        terminal.wait_for(lambda s: "sort: speed (up+down) ▼" in s, "sorting by speed again")

        # /: filter by text; only matching rows stay; Esc clears it.
        terminal.keys("c", "/")
        terminal.wait_for(lambda s: "filter: _" in s, "the filter prompt")
        terminal.keys(*str(port), "Enter")

        def only_our_port(s: str) -> bool:
            rows = [line for line in s.splitlines()[6:-2] if line.strip()]  # -2: detail, keys
            return (f"filter '{port}'" in s and bool(rows)
                    and all(str(port) in line for line in rows))

        terminal.wait_for(only_our_port, "only rows with our port")
        terminal.keys("Escape")
        terminal.wait_for(lambda s: "filter '" not in s and "connections" in title(s), "the filter cleared")

        # p: the display freezes (the clock in the title stops), p again resumes.
        terminal.keys("p")
        frozen = terminal.wait_for(lambda s: "PAUSED" in title(s), "PAUSED")
        time.sleep(1.5)  # what is tested: the title's clock (whole seconds) stands still
        assert title(terminal.screen()) == title(frozen)
        terminal.keys("p")
        terminal.wait_for(lambda s: "PAUSED" not in title(s) and title(s) != title(frozen), "running again")

        # ?: help; any key returns.
        terminal.keys("?")
        terminal.wait_for(lambda s: "any key returns" in s and "+ / -" in s, "the help")
        terminal.keys("x")
        terminal.wait_for(lambda s: "any key returns" not in s and "REMOTE" in s, "the table again")

        # +/-: the daemon's interval doubles and halves (the test runs as the daemon's user).
        terminal.keys("+")
        terminal.wait_for(lambda s: "interval set to 1s" in s and "every 1s" in title(s), "interval 1s")
        terminal.keys("-")
        terminal.wait_for(lambda s: "interval set to 0.5s" in s, "interval 0.5s")

        # Resize to 80x24: the layout adapts, keys line at the bottom.
        terminal.tmux("resize-window", "-x", "80", "-y", "24")
        small = terminal.wait_for(lambda s: len(s.splitlines()) == 24 and "q:quit" in s.splitlines()[-1]
                                  and "LOCAL" not in s, "the 80x24 layout")
        assert all(len(line) <= 80 for line in small.splitlines())

        # q: exit 0, terminal restored (shell output back, tty modes as before).
        terminal.keys("q")
        assert terminal.exit_code() == 0
        after = terminal.wait_for(lambda s: "AFTER-TOP" in s, "the shell script again")
        assert "BEFORE-TOP" in after and "TTY-RESTORED" in after and "AFTER-TOP rc=0" in after
        assert "netmon top" not in after and "q:quit" not in after


def test_top_shows_a_daemon_outage_and_reconnects(start_daemon_process, terminal):
    daemon = start_daemon_process(*DAEMON_ARGS)
    me = psutil.Process().name()
    with loopback_traffic():
        terminal.start(daemon.socket)
        terminal.wait_for(lambda s: nonzero_rate(table_line(s, me)), f"{me} with a non-zero rate")

        assert daemon.stop() == 0
        terminal.wait_for(lambda s: "daemon unreachable" in s and "reconnecting" in s, "the outage")

        start_daemon_process(*DAEMON_ARGS, socket_path=daemon.socket)
        terminal.wait_for(lambda s: "daemon unreachable" not in s and "reconnected to netmond" in s,
                          "the reconnection")
        terminal.wait_for(lambda s: nonzero_rate(table_line(s, me)), "rates from the new daemon")

        # Ctrl-C quits like q: exit 0 and the terminal restored.
        terminal.keys("C-c")
        assert terminal.exit_code() == 0
        after = terminal.wait_for(lambda s: "AFTER-TOP" in s, "the shell script again")
        assert "TTY-RESTORED" in after and "Traceback" not in after


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run top as another user")
def test_top_says_when_changing_the_interval_is_denied(start_daemon_process, terminal, short_dir):
    daemon = start_daemon_process(*DAEMON_ARGS)
    os.chmod(daemon.socket, 0o666)  # anyone may connect; control stays with root
    terminal.start(daemon.socket, prefix="setpriv --reuid=65534 --regid=65534 --clear-groups ")
    terminal.wait_for(lambda s: "applications" in title(s) and "every 0.5s" in title(s), "top as nobody")
    terminal.keys("+")
    terminal.wait_for(lambda s: "changing the interval needs root, the daemon's user, or its group" in s,
                      "the access-denied message")
    time.sleep(0.6)  # what is tested: a tick later the interval is still the old one
    assert "every 0.5s" in title(terminal.screen())  # unchanged
    terminal.keys("q")
    assert terminal.exit_code() == 0


def test_top_refuses_without_a_terminal(short_dir):
    out = subprocess.run(netmonctl_cmd("--socket", os.path.join(short_dir, "s"), "top"),
                         capture_output=True, text=True, timeout=30, cwd=REPO, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "top needs a terminal; use `netmonctl watch` or `netmonctl conns`" in out.stderr
    assert out.stdout == ""


SHOWN = re.compile(r"(\d+) connections, rows (\d+)-(\d+) shown")


def shown_range(text: str) -> tuple[int, int, int] | None:
    """(total, first, last) from the status line, when not every row fits."""
    match = SHOWN.search(text)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def test_top_scrolls_through_more_rows_than_the_screen(start_daemon_process, terminal):
    daemon = start_daemon_process(*DAEMON_ARGS)
    with ExitStack() as stack:
        for _ in range(30):  # 90 sockets of this process: more than four screens at 100x30
            stack.enter_context(tcp_pair())
        terminal.start(daemon.socket, "--view", "conns", "--sort", "process_name")
        page = table_room(30)  # rows on a 30-line screen
        first = terminal.wait_for(lambda s: shown_range(s) is not None and shown_range(s)[0] >= 90
                                  and shown_range(s)[1:] == (1, page),
                                  "rows 1-N of at least 90 connections, on the whole screen")
        top_row = table_line(first, "TCP")

        terminal.keys("NPage")  # PgDn: the next page
        second = terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[1] == page + 1,
                                   "the second page")
        assert table_line(second, "TCP") != top_row
        terminal.keys("j", "Down", "k")  # the selection moves within the page
        terminal.keys("End")
        # Other processes' sockets come and go: "the end" is checked exactly in the unit tests.
        terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[1] > 2 * page, "the last page")
        terminal.keys("Home")
        terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[1] == 1, "the first page again")
        terminal.keys("G")  # vi-style End
        terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[1] > 2 * page, "the end via G")
        terminal.keys("PPage")
        terminal.keys("PPage")
        terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[2] < r[0] - page, "two pages up")
        terminal.keys("g")
        terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[1] == 1, "the top via g")
        for _ in range(page + 3):  # past the first page one row at a time: row page+4 selected
            terminal.keys("j")
        terminal.wait_for(lambda s: (r := shown_range(s)) is not None and r[1] == 5 and r[2] == page + 4,
                          "the window following the selection")
        terminal.keys("q")
        assert terminal.exit_code() == 0
