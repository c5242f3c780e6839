"""`netmonctl -H ssh://...` and `netmonctl fleet` against real sshd instances.

The module's fixture builds a small fleet on 127.0.0.1:

    alpha   sshd + its own netmond           (SetEnv NETMON_SOCKET=alpha.sock)
    beta    sshd + its own netmond           (stopped and restarted by a test)
    gamma   sshd whose PATH lacks netmonctl  (NETMON_SOCKET points at alpha's)

plus ssh_config aliases for the failure cases: `wrongkey` (a key that is not
authorized), `newhost` (a host key nobody accepted yet), and `forced` (a key
limited to `command="netmonctl dial-stdio",restrict` in authorized_keys). The client side
reads only that ssh_config, through NETMON_SSH_COMMAND="ssh -F ...": OpenSSH
takes ~/.ssh from the passwd entry, not $HOME, so a HOME override would not
isolate it.

Remote logins use a dedicated user whose password field is `*` (no password,
not locked: with `UsePAM no`, sshd refuses a locked `!` account even for
keys). That user must be able to run this checkout: with this Python, or
the system Python of the same version and this venv's packages when this
one lives where the user cannot go (pyenv under /root). If neither works,
the fixture logs in as root by key only, and prints which it chose.
Daemons run as root with `--socket-group` of that user, as `sudo netmond
--socket-group netmon` would in production.

Everything started here is stopped at teardown: shared ssh connections
(`ssh -O exit`), sshd, netmond, the user, the directory.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from common.client import wait_for_daemon
from tests.conftest import netmond_cmd
from tests.helpers import REPO, wait_until

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HOSTS = ("alpha", "beta", "gamma")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen")),
    reason="needs OpenSSH (sshd, ssh, ssh-keygen): .ci/run installs openssh-server and openssh-client",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)


@dataclass
class Fleet:
    base: str
    user: str
    env: dict[str, str]
    sockets: dict[str, str]
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    sshds: list[subprocess.Popen] = field(default_factory=list)
    socket_group: str | None = None

    def netmonctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run netmonctl like a user would, without a terminal ssh could prompt on."""
        return subprocess.run(
            [sys.executable, "-m", "netmonctl.cli", *args],
            capture_output=True, text=True, timeout=timeout, env=self.env, cwd=REPO,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def fleet_json(self, *args: str) -> dict[str, dict[str, Any]]:
        res = self.netmonctl("fleet", "--json", "--host-timeout", "10", *args)
        assert res.returncode == 0, res.stderr
        return {h["name"]: h for h in json.loads(res.stdout)["hosts"]}

    def start_daemon(self, name: str) -> None:
        path = self.sockets[name]
        argv = netmond_cmd("--socket", path, "--backend", "portable", "--interval", "0.2")
        if self.socket_group:
            argv += ["--socket-group", self.socket_group]
        log = open(os.path.join(self.base, f"{name}-netmond.log"), "ab")
        self.daemons[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        log.close()
        wait_for_daemon(path, timeout=15)

    def stop_daemon(self, name: str) -> None:
        proc = self.daemons.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _write_wrapper(path: str, python: str, pythonpath: str) -> None:
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\nPYTHONPATH={pythonpath} exec {python} -m netmonctl.cli \"$@\"\n")
    os.chmod(path, 0o755)


def _make_user(base: str, wrapper: str) -> tuple[str, str | None, str]:
    """(login, socket group, note): a dedicated user if it can run netmonctl, else root.

    Writes `wrapper`, the remote `netmonctl`: this checkout, run by this
    Python or, when the user cannot reach that one (pyenv under /root), by
    the system Python of the same version with this venv's packages (same
    ABI, and /work is readable where /root is not).
    """
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("the sshd fixture needs root (to run sshd and add a test user)")
    _write_wrapper(wrapper, sys.executable, str(REPO))
    name = f"nmft{os.getpid() % 100000}"
    home = os.path.join(base, "home")
    os.makedirs(home, mode=0o755)
    made = run(["useradd", "--system", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
                "--password", "*", "--user-group", name])
    if made.returncode != 0:
        return "root", None, f"logging in as root: useradd failed ({made.stderr.strip()[:120]})"
    pw = pwd.getpwnam(name)
    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [(sys.executable, str(REPO)), (system_python, f"{REPO}:{sysconfig.get_paths()['purelib']}")]
    tried = []
    for python, pythonpath in candidates:
        # Through a shell, as sshd runs it (setpriv's own exec of a path under
        # an unreadable directory succeeded here where sh's failed).
        probe = run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--",
                     "/bin/sh", "-c", 'exec "$@"', "sh",
                     python, "-c", "import click, msgpack, psutil, tabulate, netmonctl.transport"],
                    env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath}, cwd="/")
        if probe.returncode == 0:
            _write_wrapper(wrapper, python, pythonpath)
            return name, name, f"logging in as dedicated user {name}, remote netmonctl run by {python}"
        tried.append(f"{python}: {(probe.stderr or probe.stdout).strip().splitlines()[-1:]}")
    run(["userdel", name])
    return "root", None, f"logging in as root: user {name} cannot run netmonctl ({'; '.join(tried)})"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    base = tempfile.mkdtemp(prefix="nmf-", dir="/tmp")
    os.chmod(base, 0o755)
    user = None
    fl: Fleet | None = None
    try:
        # What "netmonctl" is on the remote PATH: this checkout, run by this Python.
        bindir = os.path.join(base, "bin")
        os.makedirs(bindir)
        wrapper = os.path.join(bindir, "netmonctl")
        user, group, note = _make_user(base, wrapper)
        print(f"\n[fleet fixture] {note}")  # shown with -s, and with a failure

        for key in ("host", "good", "wrong", "forced"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", os.path.join(base, f"id_{key}")])
        with open(os.path.join(base, "authorized_keys"), "w") as fh:
            fh.write(Path(base, "id_good.pub").read_text())
            # A key that can do nothing but reach netmond.
            fh.write('command="netmonctl dial-stdio",restrict ' + Path(base, "id_forced.pub").read_text())
        host_pub = " ".join(Path(base, "id_host.pub").read_text().split()[:2])
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory

        sockets = {name: os.path.join(base, f"{name}.sock") for name in ("alpha", "beta")}
        sockets["gamma"] = sockets["alpha"]
        ports = {name: free_port() for name in HOSTS}
        env = {k: v for k, v in os.environ.items() if k not in ("NETMON_SOCKET", "NETMON_HOST", "NO_COLOR")}
        env.update(
            NETMON_SSH_COMMAND=f"ssh -F {base}/ssh_config",
            XDG_CONFIG_HOME=f"{base}/xdg/config",
            XDG_STATE_HOME=f"{base}/xdg/state",
            XDG_CACHE_HOME=f"{base}/xdg/cache",
            PYTHONPATH=str(REPO),
        )
        fl = Fleet(base, user, env, sockets, socket_group=group)

        known = []
        for name in HOSTS:
            path = "/usr/bin:/bin" if name == "gamma" else f"{bindir}:/usr/bin:/bin"
            cfg = os.path.join(base, f"sshd_{name}")
            with open(cfg, "w") as fh:
                fh.write(
                    f"Port {ports[name]}\nListenAddress 127.0.0.1\nHostKey {base}/id_host\n"
                    f"PidFile {base}/sshd_{name}.pid\nAuthorizedKeysFile {base}/authorized_keys\n"
                    "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                    f"AllowUsers {user}\nLogLevel VERBOSE\n"
                    f"SetEnv NETMON_SOCKET={sockets[name]} PATH={path}\n"
                )
            log = open(os.path.join(base, f"sshd_{name}.log"), "ab")
            fl.sshds.append(subprocess.Popen([SSHD, "-D", "-e", "-f", cfg], stdout=log, stderr=subprocess.STDOUT))
            log.close()
            known.append(f"[127.0.0.1]:{ports[name]} {host_pub}\n")
        Path(base, "known_hosts").write_text("".join(known))
        Path(base, "known_hosts_empty").write_text("")

        blocks = [f"Host {name}\n  HostName 127.0.0.1\n  Port {ports[name]}\n  IdentityFile {base}/id_good\n"
                  for name in HOSTS]
        blocks.append(f"Host wrongkey\n  HostName 127.0.0.1\n  Port {ports['alpha']}\n"
                      f"  IdentityFile {base}/id_wrong\n")
        blocks.append(f"Host forced\n  HostName 127.0.0.1\n  Port {ports['alpha']}\n"
                      f"  IdentityFile {base}/id_forced\n")
        blocks.append(f"Host newhost\n  HostName 127.0.0.1\n  Port {ports['alpha']}\n"
                      f"  IdentityFile {base}/id_good\n  UserKnownHostsFile {base}/known_hosts_empty\n")
        blocks.append(
            f"Host *\n  User {user}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
            "  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n"
            f"  GlobalKnownHostsFile /dev/null\n  UserKnownHostsFile {base}/known_hosts\n"
        )
        Path(base, "ssh_config").write_text("".join(blocks))

        hosts = {
            "alpha": ("ssh://alpha", ["ok"], None),
            "beta": ("ssh://beta", ["ok"], None),
            "gamma": ("ssh://gamma", ["path"], None),
            "gamma-fixed": ("ssh://gamma", ["path"], wrapper),
            "wrongkey": ("ssh://wrongkey", ["bad"], None),
            "newhost": ("ssh://newhost", ["hostkey"], None),
        }
        for name, (url, tags, remote) in hosts.items():
            argv = ["fleet", "add", name, url, *(a for t in tags for a in ("--tag", t))]
            if remote:
                argv += ["--remote-command", remote]
            res = fl.netmonctl(*argv)
            assert res.returncode == 0, res.stderr

        for name in ("alpha", "beta"):
            fl.start_daemon(name)
        for name, proc in zip(HOSTS, fl.sshds):
            wait_until(lambda: proc.poll() is not None or _accepts(ports[name]), timeout=10)
            assert proc.poll() is None, Path(base, f"sshd_{name}.log").read_text()
        yield fl
    finally:
        if fl is not None:
            _stop_shared_connections(fl)
            for proc in fl.sshds:
                proc.terminate()
            for proc in fl.sshds:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for name in list(fl.daemons):
                fl.stop_daemon(name)
        if user not in (None, "root"):
            run(["userdel", user])
        shutil.rmtree(base, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _stop_shared_connections(fl: Fleet) -> None:
    """`ssh -O exit` every ControlMaster that fleet polls left running."""
    directory = Path(fl.env["XDG_CACHE_HOME"], "netmon")
    for path in directory.glob("ssh-*") if directory.is_dir() else ():
        run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "netmon-test"])


# -- fleet ----------------------------------------------------------------------------


def test_all_online_with_last_seen_kept_and_ssh_connections_shared(fleet: Fleet):
    before = time.time()
    hosts = fleet.fleet_json("--tag", "ok")
    assert set(hosts) == {"alpha", "beta"}
    for h in hosts.values():
        assert h["status"] == "ONLINE", (h["error"], h["hints"])
        assert h["version"] and h["connections"] is not None and h["last_seen"] >= before
    state = json.loads(Path(fleet.env["XDG_STATE_HOME"], "netmon", "fleet.json").read_text())
    assert {n: state["hosts"][n]["last_seen"] for n in hosts} == {n: h["last_seen"] for n, h in hosts.items()}
    # One shared connection per host, reused by the next poll.
    masters = sorted(Path(fleet.env["XDG_CACHE_HOME"], "netmon").glob("ssh-*"))
    assert len(masters) == 2
    assert all(h["status"] == "ONLINE" for h in fleet.fleet_json("--tag", "ok").values())

    table = fleet.netmonctl("fleet", "--tag", "ok")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATUS", "LAST"]
    assert [line.split()[:2] for line in lines[2:]] == [["alpha", "ONLINE"], ["beta", "ONLINE"]]


def test_watch_refreshes_until_interrupted(fleet: Fleet):
    proc = subprocess.Popen(
        [sys.executable, "-m", "netmonctl.cli", "fleet", "--watch", "--json", "--interval", "0.5", "--tag", "ok"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fleet.env, cwd=REPO,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        rounds = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Never leave it polling (and rewriting fleet.json) under the next tests.
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"fleet --watch did not end within 30 s of Ctrl-C; stderr: {err[-2000:]}")
    assert proc.returncode == 0, err
    assert rounds[0]["timestamp"] < rounds[1]["timestamp"] < rounds[2]["timestamp"]
    for r in rounds:
        assert [(h["name"], h["status"]) for h in r["hosts"]] == [("alpha", "ONLINE"), ("beta", "ONLINE")]
    assert rounds[2]["hosts"][0]["checked_at"] > rounds[0]["hosts"][0]["checked_at"]  # polled again


def test_watch_interrupted_while_a_host_stalls_ends_its_ssh(fleet: Fleet):
    """Ctrl-C during a poll of a host that never answers: netmonctl ends at
    once, quietly, and takes that poll's ssh with it (left alone, it would
    wait for the handshake until ConnectTimeout, or for ever for a remote
    command that hangs)."""
    import psutil

    with socket.socket() as stall:
        stall.bind(("127.0.0.1", 0))
        stall.listen(8)  # the kernel accepts; nobody ever sends ssh's banner
        port = stall.getsockname()[1]
        res = fleet.netmonctl("fleet", "add", "stall", f"ssh://127.0.0.1:{port}", "--tag", "stall")
        assert res.returncode == 0, res.stderr
        proc = subprocess.Popen(
            [sys.executable, "-m", "netmonctl.cli", "fleet", "--watch", "--json", "--interval", "0.5",
             "--tag", "stall"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fleet.env, cwd=REPO,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            def stalled_ssh() -> list:
                found = []
                for child in psutil.Process(proc.pid).children():
                    try:
                        argv = child.cmdline()
                    except psutil.Error:  # gone meanwhile (`ssh -G` runs and exits)
                        continue
                    if f"{port}" in argv and "-G" not in argv:
                        found.append(child)
                return found

            ssh = wait_until(stalled_ssh, timeout=15, what="the stalled poll's ssh")
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)
            fleet.netmonctl("fleet", "rm", "stall")
        assert (proc.returncode, out, err) == (0, "", ""), err
        assert took < 10, f"Ctrl-C took {took:.1f} s"  # the handshake's ConnectTimeout is 10 s
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ssh), ssh


def test_stopped_daemon_is_no_daemon_and_keeps_its_last_seen(fleet: Fleet):
    seen = fleet.fleet_json("--tag", "ok")["beta"]["last_seen"]
    fleet.stop_daemon("beta")
    try:
        hosts = fleet.fleet_json("--tag", "ok")
        assert hosts["alpha"]["status"] == "ONLINE"
        beta = hosts["beta"]
        assert beta["status"] == "NO_DAEMON", beta
        assert beta["last_seen"] == seen
        assert any("no socket file" in line or "connection refused" in line for line in beta["hints"]), beta
        res = fleet.netmonctl("-H", "beta", "conns")
        assert res.returncode == 3, res.stderr
        assert "netmond is not running there" in res.stderr
    finally:
        fleet.start_daemon("beta")


def test_wrong_key_is_auth_failed(fleet: Fleet):
    host = fleet.fleet_json("--tag", "bad")["wrongkey"]
    assert host["status"] == "AUTH_FAILED", host
    assert any("Permission denied" in line for line in host["hints"])
    res = fleet.netmonctl("-H", "wrongkey", "status")
    assert res.returncode == 4
    assert "ssh login refused" in res.stderr and "logs in without a prompt" in res.stderr


def test_unknown_host_key_under_batchmode_gives_the_hint(fleet: Fleet):
    host = fleet.fleet_json("--tag", "hostkey")["newhost"]
    assert host["status"] == "AUTH_FAILED", host
    assert host["hints"][-1] == "run `ssh newhost` once to check and accept its host key"
    table = fleet.netmonctl("fleet", "--tag", "hostkey")
    assert "run `ssh newhost` once" in table.stdout
    res = fleet.netmonctl("-H", "ssh://newhost", "status")
    assert res.returncode == 3
    assert "Host key verification failed." in res.stderr and "run `ssh newhost` once" in res.stderr


def test_remote_command_missing_gives_the_path_hint(fleet: Fleet):
    hosts = fleet.fleet_json("--tag", "path")
    assert hosts["gamma"]["status"] == "UNKNOWN"
    assert "non-login PATH" in hosts["gamma"]["hints"][-1]
    assert any("not found" in line for line in hosts["gamma"]["hints"])
    # ...and remote_command is the fix (gamma's NETMON_SOCKET is alpha's daemon).
    assert hosts["gamma-fixed"]["status"] == "ONLINE", hosts["gamma-fixed"]
    res = fleet.netmonctl("-H", "gamma", "status")
    assert res.returncode == 3 and "non-login PATH" in res.stderr


# -- any command over -H --------------------------------------------------------------


def test_conns_json_over_ssh_reaches_that_hosts_daemon(fleet: Fleet):
    with socket.socket() as marker:
        marker.bind(("127.0.0.1", 0))
        marker.listen()
        port = marker.getsockname()[1]

        def listed() -> Any:
            res = fleet.netmonctl("-H", "ssh://alpha", "conns", "--json", "--port", str(port))
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)["connections"]

        rows = wait_until(listed, timeout=10, interval=0.2)
        assert rows[0]["local_port"] == port and rows[0]["state"] == "LISTEN"
    for target in ("ssh://alpha", "alpha", f"ssh://alpha{fleet.sockets['beta']}"):
        res = fleet.netmonctl("-H", target, "status", "--json")
        assert res.returncode == 0, res.stderr
        expected = fleet.sockets["beta"] if target.endswith(".sock") else fleet.sockets["alpha"]
        assert json.loads(res.stdout)["socket"] == expected


def test_a_key_forced_to_dial_stdio_reaches_the_daemon_and_nothing_else(fleet: Fleet):
    res = fleet.netmonctl("-H", "ssh://forced", "status", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["socket"] == fleet.sockets["alpha"]
    shell = subprocess.run(
        ["ssh", "-F", f"{fleet.base}/ssh_config", "forced", "echo", "pwned"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    assert "pwned" not in shell.stdout


def test_watch_json_over_ssh_streams_events_and_ends_cleanly(fleet: Fleet):
    env = {**fleet.env, "NETMON_HOST": "ssh://alpha"}
    res = subprocess.run(
        [sys.executable, "-m", "netmonctl.cli", "watch", "--json", "--events", "stats_update", "--count", "3"],
        capture_output=True, text=True, timeout=30, env=env, cwd=REPO,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["event"] for e in events] == ["stats_update"] * 3
    assert all("active_connections" in e["data"] for e in events)
