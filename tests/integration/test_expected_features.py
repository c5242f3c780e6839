"""What nethogs/bandwhich/nettop users expect (issue 13, item 11): rates in
bits, the process command line and the host name in `top`, shell completion,
and no colour codes on TERM=dumb. A real netmond, loopback traffic, tmux."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, wait_until
from tests.integration.test_top import DAEMON_ARGS, Terminal, loopback_traffic, nonzero_rate, table_line, title

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (see .ci/run)")
BITS = re.compile(r"(\d+(?:\.\d+)?) ([kMGTP]?bps)\b")
ESC = "\x1b["


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(netmonctl_cmd(*args), capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.fixture
def terminal(short_dir):
    term = Terminal(short_dir)
    try:
        yield term
    finally:
        term.kill()


def test_bits_in_tables_bytes_in_json(start_daemon_process):
    daemon = start_daemon_process(*DAEMON_ARGS)
    with loopback_traffic() as port:
        def table_in_bits():
            out = ctl("--socket", daemon.socket, "conns", "--bits", "--port", str(port))
            rows = [line for line in out.stdout.splitlines() if f":{port}" in line]
            moving = [r for r in rows if any(float(v) > 0 for v, _ in BITS.findall(r))]
            return (out, moving) if moving else None

        out, moving = wait_until(table_in_bits, timeout=20)
        assert "B/s" not in out.stdout and "bps" in moving[0]
        raw = ctl("--socket", daemon.socket, "conns", "--bits", "--json", "--port", str(port))
        assert '"upload_speed"' in raw.stdout and "bps" not in raw.stdout  # JSON stays bytes/s
        stats = ctl("--socket", daemon.socket, "--bits", "stats")
        assert stats.returncode == 0 and "bps" in stats.stdout
        plain = ctl("--socket", daemon.socket, "conns", "--port", str(port))
        assert "B/s" in plain.stdout and "bps" not in plain.stdout


@needs_tmux
def test_top_bits_key_command_line_and_host_name(start_daemon_process, terminal, short_dir):
    daemon = start_daemon_process(*DAEMON_ARGS)
    config = Path(short_dir, "cfg")
    env = {"XDG_CONFIG_HOME": str(config)}
    added = ctl("fleet", "add", "lab1", f"unix://{daemon.socket}", env=env)
    assert added.returncode == 0, added.stderr
    me = psutil.Process()
    with loopback_traffic():
        terminal.start(daemon.socket, prefix=f"XDG_CONFIG_HOME='{config}' ", host="lab1")
        screen = terminal.wait_for(lambda s: nonzero_rate(table_line(s, me.name())), "our rates in bytes")
        assert title(screen).startswith("netmon top · lab1 · applications")  # -H lab1: the host's name
        # The selected (first) row is ours, the busiest: its command line above the keys.
        terminal.wait_for(lambda s: f"pid {me.pid}" in s.splitlines()[-2]
                          and Path(me.cmdline()[1]).name in s.splitlines()[-2], "our command line")
        terminal.keys("b")
        terminal.wait_for(lambda s: any(float(v) > 0 for v, _ in BITS.findall(table_line(s, me.name())))
                          and "B/s" not in s, "rates in bits")
        terminal.keys("b")
        terminal.wait_for(lambda s: nonzero_rate(table_line(s, me.name())), "rates in bytes again")
        terminal.keys("q")
        assert terminal.exit_code() == 0


@needs_tmux
def test_term_dumb_gets_no_colour_and_top_says_why(start_daemon_process, terminal, short_dir):
    daemon = start_daemon_process(*DAEMON_ARGS)
    with stack_listener() as listener:
        port = listener.getsockname()[1]
        dumb_terminal_run(daemon, port, terminal, short_dir)


def dumb_terminal_run(daemon, port, terminal, short_dir):
    wait_until(lambda: f":{port}" in ctl("--socket", daemon.socket, "conns", "--port", str(port)).stdout,
               timeout=20)
    argv = " ".join(f"'{a}'" for a in netmonctl_cmd("--socket", daemon.socket, "conns", "--port", str(port)))
    top_argv = " ".join(f"'{a}'" for a in netmonctl_cmd("--socket", daemon.socket, "top"))
    script = Path(short_dir, "dumb.sh")
    script.write_text(f"#!/bin/sh\ncd '{REPO}'\nunset NO_COLOR\n"
                      f"TERM=xterm {argv}\necho XTERM-DONE\n"
                      f"TERM=dumb {argv}\necho DUMB-DONE\n"
                      f"TERM=dumb {top_argv}; echo \"TOP-RC=$?\"\nsleep 60\n")
    script.chmod(0o755)
    terminal.tmux("new-session", "-d", "-x", "200", "-y", "80", str(script))
    terminal.wait_for(lambda s: "TOP-RC=" in s, "both runs")
    colored = terminal.tmux("capture-pane", "-p", "-e", "-S", "-80")
    xterm_part, rest = colored.split("XTERM-DONE", 1)
    dumb_part = rest.split("DUMB-DONE", 1)[0]
    assert "LISTEN" in xterm_part and ESC + "3" in xterm_part  # coloured states on xterm (the fixture)
    assert "LISTEN" in dumb_part and ESC + "3" not in dumb_part  # none on a dumb terminal
    plain = terminal.screen()
    assert "TOP-RC=2" in plain and "top needs a terminal that can move the cursor (TERM='dumb'" in plain


def stack_listener():
    import socket

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    return lst


def test_completion_scripts_complete_commands_options_and_choices():
    for shell in ("bash", "zsh", "fish"):
        out = ctl("completion", shell)
        assert out.returncode == 0 and "_NETMONCTL_COMPLETE" in out.stdout, shell
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    bindir = Path(sys.executable).parent
    if not (bindir / "netmonctl").exists():
        pytest.skip("no netmonctl script beside this interpreter")
    script = ('eval "$(netmonctl completion bash)"\n'
              'ask() { COMPREPLY=(); COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
              '_netmonctl_completion netmonctl; echo "${COMPREPLY[*]}"; }\n'
              'ask netmonctl co\nask netmonctl conns --st\nask netmonctl conns --proto ""\n'
              'ask netmonctl completion ""\n')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["conns completion", "--state", "tcp udp", "bash zsh fish"]
