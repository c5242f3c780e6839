"""Fix-it lines are commands that work as written (issue 13, item 6).

netmonctl is run as a new user would (no venv on PATH), the command of its
"start the daemon with:" line is pasted into a shell as is, and netmonctl,
run again the same way, must then reach the daemon it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_until

NOBODY = 65534
PREFIX = "netmonctl: start the daemon with: "


def bare_path() -> str:
    """PATH without this venv's bin: netmond and netmonctl are not found by name."""
    venv_bin = os.path.dirname(sys.executable)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)


def netmonctl(args: list[str], env: dict[str, str], as_nobody: bool) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "netmonctl")
    argv = [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "netmonctl.cli"]
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    return subprocess.run(prefix + argv + args, env=env, capture_output=True, text=True, timeout=30,
                          cwd="/")


def start_hint(stderr: str) -> str:
    """The command of the "start the daemon with:" line, without its trailing ` &` and comment."""
    lines = [line for line in stderr.splitlines() if line.startswith(PREFIX)]
    assert lines, stderr
    match = re.fullmatch(r"(.*) &(   \(.*\))?", lines[0][len(PREFIX):])
    assert match, lines[0]
    return match.group(1)


def paste_and_check(command: str, args: list[str], env: dict[str, str], as_nobody: bool,
                    log: Path) -> None:
    """Run `command` in a shell as the hint says, then netmonctl `args` must answer."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    with open(log, "wb") as out:
        shell = subprocess.Popen(prefix + ["bash", "-c", command], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
    try:
        def ask() -> subprocess.CompletedProcess:
            ran = netmonctl(args, env, as_nobody)
            assert ran.returncode == 0 or shell.poll() is None, f"the hint's command exited:\n{log.read_text()}"
            return ran

        try:
            wait_until(ask, 30, 0.3, what="netmonctl to answer after the hint", until=lambda r: r.returncode == 0)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log.read_text()}") from None
    finally:
        os.killpg(shell.pid, signal.SIGTERM)  # the hint's shell and its daemon: ours
        try:
            shell.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(5)


def default_daemon_scenario(workdir: str) -> None:
    """Root, no daemon anywhere, no --socket: run inside a mount namespace whose
    /run is empty (see the test), so the daemon the hint starts is private."""
    env = {"PATH": bare_path(), "XDG_RUNTIME_DIR": workdir, "HOME": workdir, "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO)}
    first = netmonctl(["status"], env, as_nobody=False)
    assert first.returncode == 3, first.stderr
    print(first.stderr)
    command = start_hint(first.stderr)
    assert "--socket" not in command  # the default daemon, which netmonctl finds by itself
    paste_and_check(command, ["status"], env, as_nobody=False, log=Path(workdir, "hint.log"))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private /run")
def test_root_default_daemon_hint_works_as_written(short_dir):
    # As root, netmond listens on /run/netmond.sock: give this scenario its own
    # empty /run (a tmpfs in a private mount namespace), not the machine's.
    script = (f"mount -t tmpfs tmpfs /run && exec {sys.executable} -c "
              "'import sys; from tests.integration.test_hints import default_daemon_scenario as s; "
              "s(sys.argv[1])' " + short_dir)
    ran = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         cwd=REPO, capture_output=True, text=True, timeout=90,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "it listens on /run/netmond.sock" in ran.stdout  # root's default, not /tmp/netmon-0


def test_explicit_socket_hint_works_as_written(short_dir):
    sock = os.path.join(short_dir, "new dir", "n.sock")  # missing, and needs quoting
    env = {"PATH": bare_path(), "HOME": short_dir, "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)}
    first = netmonctl(["--socket", sock, "status"], env, as_nobody=False)
    assert first.returncode == 3
    command = start_hint(first.stderr)
    assert command.startswith("mkdir -p ")
    paste_and_check(command, ["--socket", sock, "status"], env, as_nobody=False,
                    log=Path(short_dir, "hint.log"))


def test_a_regular_file_is_not_a_stale_socket():
    ran = netmonctl(["--socket", "/etc/passwd", "status"], dict(os.environ), as_nobody=False)
    assert ran.returncode == 3
    assert "stale" not in ran.stderr and "netmond --socket /etc/passwd" not in ran.stderr
    assert "/etc/passwd: that is a regular file, not a socket" in ran.stderr
