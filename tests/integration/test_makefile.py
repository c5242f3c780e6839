"""The README's first commands, on a clean clone (issue 13, items 1 and 2).

A `git clone` of this checkout gets a light venv instead of `make install`
(which would download and build for a minute): a venv whose .pth file points
at the running venv's site-packages (the dependencies) and at the clone
(our code), with `netmond`/`netmonctl` scripts like pip's, and the install
stamp touched, so `make` runs the clone's own Makefile and code in seconds.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make"
)

SCRIPT = """#!{python}
import sys
from {module} import main
sys.exit(main())
"""


def light_venv(checkout: Path) -> Path:
    """checkout/.venv running checkout's code with this interpreter's dependencies."""
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    deps = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    # Our checkout first, so that nothing from the running venv's editable install shadows it.
    Path(purelib, "netmon_test.pth").write_text("\n".join([str(checkout), *deps]) + "\n")
    for name, module in (("netmond", "netmond.main"), ("netmonctl", "netmonctl.cli")):
        script = venv / "bin" / name
        script.write_text(SCRIPT.format(python=python, module=module))
        script.chmod(0o755)
    # The stamp newer than pyproject.toml, whatever the clone's mtimes: no reinstall.
    earlier = time.time() - 60
    os.utime(checkout / "pyproject.toml", (earlier, earlier))
    (venv / ".installed").touch()
    return venv


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    dest = tmp_path / "netmon"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=60)
    # The working tree's Makefile and README, committed or not: what is being tested.
    for name in ("Makefile", "README.md"):
        shutil.copy(REPO / name, dest / name)
    light_venv(dest)
    return dest


def make(clone: Path, target: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(clone), target], env=env, capture_output=True,
                          text=True, timeout=timeout)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's shell: no venv on PATH, state and runtime dirs of its own."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not p.startswith(sys.prefix))
    env = {"PATH": path, "HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "NETMON_DATA_DIR": str(tmp_path / "data"), "LANG": "C.UTF-8", **extra}
    return env


def test_readme_opening_says_how_to_reach_the_commands_and_stop_the_daemon():
    opening = "\n".join((REPO / "README.md").read_text().splitlines()[:20])
    lines = [line.strip() for line in opening.splitlines() if line.startswith("    make ")]
    assert lines[0].startswith("make run") and lines[1].startswith("make test")  # CI runs `make test`
    assert ". .venv/bin/activate" in opening
    assert "make stop" in opening


def test_activate_puts_the_commands_on_path(clone, tmp_path):
    env = clean_env(tmp_path)
    bare = subprocess.run(["bash", "-c", "netmonctl --version"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=30)
    assert bare.returncode == 127  # what a new shell gives without the README's advice
    activated = subprocess.run(["bash", "-c", ". .venv/bin/activate && netmonctl --version && "
                                "command -v netmond"], cwd=clone, env=env, capture_output=True,
                               text=True, timeout=30)
    assert activated.returncode == 0, activated.stderr
    assert activated.stdout.startswith("netmonctl ")
    assert activated.stdout.strip().endswith(".venv/bin/netmond")


def test_make_daemon_fails_with_the_logs_last_line_when_netmond_cannot_start(clone, tmp_path):
    env = clean_env(tmp_path, NETMON_SOCKET="/proc/x.sock", DAEMON_WAIT="20")
    result = make(clone, "daemon", env)
    assert result.returncode != 0
    assert "netmond started" not in result.stdout
    assert "netmond exited; last line of" in result.stderr
    log = (tmp_path / "state" / "netmon" / "netmond.log").read_text().splitlines()
    assert log[-1] in result.stderr  # the reason, not just "see the log"
    assert "cannot start" in log[-1]  # netmond's own words (their wording is issue 10's)


def test_make_run_does_not_open_top_when_the_daemon_failed(clone, tmp_path):
    env = clean_env(tmp_path, NETMON_SOCKET="/proc/x.sock", DAEMON_WAIT="20")
    result = make(clone, "run", env)
    assert result.returncode != 0
    # top would have said it needs a terminal (exit 2); it must not have run at all.
    assert "top needs a terminal" not in result.stderr
    assert "keeps running" not in result.stdout


def test_make_daemon_then_stop(clone, tmp_path):
    sock = tmp_path / "run" / "n.sock"
    sock.parent.mkdir()
    env = clean_env(tmp_path, NETMON_SOCKET=str(sock), DAEMON_WAIT="30")
    try:
        started = make(clone, "daemon", env)
        assert started.returncode == 0, started.stderr
        assert "netmond started (pid" in started.stdout
        again = make(clone, "daemon", env)
        assert again.returncode == 0 and "already answers" in again.stdout
    finally:
        stopped = make(clone, "stop", env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    # it removes its socket on SIGTERM: really gone
    wait_until(lambda: not sock.exists(), 10, 0.1, what=f"netmond to remove {sock}")
