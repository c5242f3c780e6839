"""netmond's life under a service manager: signals, reload, its socket file,
and sockets handed over by systemd (LISTEN_FDS) or launchd.
"""

from __future__ import annotations

import ctypes
import grp
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from common import paths
from common.client import Client, DaemonUnavailable, wait_for_daemon
from netmond import listener
from netmond.backends.base import Backend, Snapshot, now
from tests.conftest import ProcessDaemon, netmond_cmd
from tests.helpers import REPO, wait_until

# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def spawn(short_dir):
    """Factory: run netmond exactly with the given argv (no added flags), optionally
    behind a wrapper and with inherited descriptors; stopped at teardown."""
    started: list[ProcessDaemon] = []

    def start(*args: str, socket_path: str, pass_fds: tuple[int, ...] = (),
              prefix: tuple[str, ...] = ()) -> ProcessDaemon:
        log_path = os.path.join(short_dir, f"s{len(started)}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*prefix, *netmond_cmd(*args)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)}, pass_fds=pass_fds,
            )
        d = ProcessDaemon(socket_path, proc, log_path)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def wait_for_log(d: ProcessDaemon, needle: str, timeout: float = 10.0) -> str:
    return wait_until(lambda: needle in d.log() and d.log(), timeout=timeout)


# -- SIGTERM / SIGINT --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_closes_clients_removes_the_socket_and_exits_0(start_daemon_process, sig):
    d = start_daemon_process("--backend", "portable")
    plain = Client.connect(d.socket)
    plain.hello()
    watcher = Client.connect(d.socket)
    watcher.call("subscribe", {"topics": ["stats_update"]})
    assert watcher.next_notification(timeout=5) is not None
    assert d.stop(sig) == 0
    assert not os.path.exists(d.socket)
    with pytest.raises(DaemonUnavailable):
        plain.call("status")
    with pytest.raises(DaemonUnavailable):
        while watcher.next_notification(timeout=5) is not None:
            pass
    log = d.log()
    assert "stopping" in log and "stopped" in log and "Traceback" not in log
    plain.close()
    watcher.close()


class SlowBackend(Backend):
    """Each sample takes 0.5 s; records what happened in order."""

    name = "slow"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.sampling = threading.Event()

    def sample(self) -> Snapshot:
        self.events.append("sample-start")
        self.sampling.set()
        time.sleep(0.5)
        self.events.append("sample-end")
        return Snapshot(*now(), sockets=[])

    def close(self) -> None:
        self.events.append("close")


def test_stop_lets_the_tick_in_progress_finish(start_daemon_thread):
    backend = SlowBackend()
    d = start_daemon_thread(backend, interval=5)
    backend.sampling.clear()
    d.daemon.set_interval(5)  # wakes the sampler: a new tick starts now
    assert backend.sampling.wait(5)
    d.stop()
    assert d.exit_code == [0]
    assert backend.events[-3:] == ["sample-start", "sample-end", "close"]
    assert d.daemon.state.ticks == backend.events.count("sample-end")  # it was applied


# -- SIGHUP --------------------------------------------------------------------------------


def test_sighup_reloads_the_config_file_and_logs_what_changed(spawn, short_dir):
    sock = os.path.join(short_dir, "hup.sock")
    conf = os.path.join(short_dir, "netmond.toml")
    with open(conf, "w") as fh:
        fh.write("interval = 0.2\nhistory_seconds = 60\nbackend = 'portable'\n")
    d = spawn("--config", conf, "--socket", sock, socket_path=sock)
    wait_for_daemon(sock)
    with Client.connect(sock) as c:
        wait_until(lambda: c.call("status")["ticks"] > 0)
        before = c.call("status")
        assert (before["interval"], before["history_seconds"]) == (0.2, 60)

        group = next((g for g in grp.getgrall() if g.gr_gid != 0), None)
        group_line = f"socket_group = {group.gr_name!r}\n" if os.geteuid() == 0 and group else ""
        with open(conf, "w") as fh:
            fh.write("interval = 0.5\nhistory_seconds = 120\nbackend = 'portable'\n" + group_line)
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: c.call("status")["interval"] == 0.5)
        assert c.call("status")["history_seconds"] == 120
        log = wait_for_log(d, "config reloaded:")
        assert "interval 0.2 -> 0.5" in log and "history_seconds 60 -> 120" in log
        if group_line:
            st_ = os.stat(sock)
            assert (oct(st_.st_mode & 0o777), st_.st_gid) == ("0o660", group.gr_gid)
            assert f"socket_group None -> {group.gr_name!r}" in log

        # A broken file changes nothing; a restart-only key is reported, not applied.
        with open(conf, "w") as fh:
            fh.write("interval = = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for_log(d, "reload failed, keeping the running config")
        with open(conf, "w") as fh:
            fh.write("interval = 0.5\nhistory_seconds = 120\nbackend = 'auto'\n" + group_line)
        d.proc.send_signal(signal.SIGHUP)
        log = wait_for_log(d, "backend changed in the config file; restart netmond")
        status = c.call("status")
        assert status["interval"] == 0.5 and status["backend"] == "portable"
    assert d.stop() == 0
    assert "Traceback" not in d.log()


# -- the socket file -------------------------------------------------------------------------


def test_a_file_that_is_not_a_socket_is_never_replaced(start_daemon_process, short_dir):
    path = os.path.join(short_dir, "precious.sock")
    with open(path, "w") as fh:
        fh.write("not a socket")
    d = start_daemon_process("--backend", "portable", socket_path=path, wait=False)
    assert d.proc.wait(15) == 1
    assert "exists and is not a socket" in d.log() and "Traceback" not in d.log()
    assert open(path).read() == "not a socket"


def test_startup_errors_are_one_clear_line(start_daemon_process):
    d = start_daemon_process("--backend", "portable", "--socket-group", "no-such-group-xyz", wait=False)
    assert d.proc.wait(15) == 1
    assert "socket_group 'no-such-group-xyz': no such group" in d.log()
    assert "Traceback" not in d.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_a_directory_others_control_is_refused(short_dir):
    foreign = os.path.join(short_dir, "foreign")
    os.mkdir(foreign)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(listener.UnsafeDirectory, match="belongs to uid 65534"):
        listener.bind_unix_socket(os.path.join(foreign, "s.sock"))
    open_dir = os.path.join(short_dir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    with pytest.raises(listener.UnsafeDirectory, match="writable by other users"):
        listener.bind_unix_socket(os.path.join(open_dir, "s.sock"))
    os.chmod(open_dir, 0o1777)  # sticky, like /tmp: others cannot remove our file
    listener.bind_unix_socket(os.path.join(open_dir, "s.sock")).close()
    assert not os.path.exists(os.path.join(foreign, "s.sock"))


def test_the_private_directory_is_created_0700(short_dir, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", short_dir)
    path = paths.user_socket_path()
    assert path.startswith(short_dir + "/netmon-")
    sock = listener.bind_unix_socket(path)
    sock.close()
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    os.chmod(os.path.dirname(path), 0o755)  # loosened by someone: tightened again
    os.unlink(path)
    listener.bind_unix_socket(path).close()
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


@pytest.mark.parametrize("group", [None, "root"])
def test_the_socket_has_its_final_mode_before_listen(short_dir, monkeypatch, group):
    seen: list[tuple[int, int]] = []

    class Recording(socket.socket):
        def listen(self, *args):  # noqa: D102 - records the file's mode at listen()
            st_ = os.stat(self.getsockname())
            seen.append((stat.S_IMODE(st_.st_mode), st_.st_gid))
            return super().listen(*args)

    monkeypatch.setattr(listener.socket, "socket", Recording)
    path = os.path.join(short_dir, "m.sock")
    listener.bind_unix_socket(path, group).close()
    expected = (0o600, os.getegid()) if group is None else (0o660, 0)
    assert seen == [expected]


def test_a_root_daemon_on_macos_defaults_to_group_admin(monkeypatch):
    monkeypatch.setattr(paths, "is_root", lambda: True)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert listener.default_group() == "admin"
    monkeypatch.setattr(sys, "platform", "linux")
    assert listener.default_group() is None


# -- socket activation --------------------------------------------------------------------------

# Runs as the service manager would: the listening socket on fd 3, LISTEN_PID
# naming the process that will run netmond (exec keeps the pid).
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="netmond.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_systemd_socket_activation_serves_on_the_passed_socket(spawn, short_dir):
    path = os.path.join(short_dir, "activated.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(16)
    inode = os.stat(path).st_ino
    try:
        d = spawn("--backend", "portable", "--interval", "0.2", socket_path=path,
                  pass_fds=(lst.fileno(),), prefix=(sys.executable, "-c", ACTIVATE, str(lst.fileno())))
        log = wait_for_log(d, "netmond listening on")
        assert "passed by the service manager" in log
        with Client.connect(path) as c:
            info = c.hello()
            assert info["pid"] == d.proc.pid
            assert c.call("status")["socket"] == path
        assert d.stop() == 0
        # The socket belongs to the service manager: left in place, still listening.
        assert os.stat(path).st_ino == inode
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(path)
        probe.close()
    finally:
        lst.close()


def test_a_passed_socket_that_is_not_a_unix_listener_is_ignored(spawn, short_dir):
    path = os.path.join(short_dir, "fallback.sock")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        d = spawn("--backend", "portable", "--interval", "0.2", "--socket", path, socket_path=path,
                  pass_fds=(udp.fileno(),), prefix=(sys.executable, "-c", ACTIVATE, str(udp.fileno())))
        log = wait_for_log(d, "netmond listening on")
        assert "not a listening Unix stream socket" in log
        with Client.connect(path) as c:
            assert c.hello()["pid"] == d.proc.pid
    finally:
        udp.close()


def test_launchd_activation_through_launch_activate_socket(short_dir):
    """Drive listener.launchd_socket() with a fake libc whose
    launch_activate_socket is a C callback filling the fd array as launchd does."""
    path = os.path.join(short_dir, "launchd.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(4)
    spare = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd_array = (ctypes.c_int * 2)(os.dup(lst.fileno()), spare.detach())
    names: list[bytes] = []
    freed: list[int] = []

    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p,
                             ctypes.POINTER(ctypes.POINTER(ctypes.c_int)), ctypes.POINTER(ctypes.c_size_t))

    @proto
    def activate(name, fds, count):
        names.append(name)
        fds[0] = ctypes.cast(fd_array, ctypes.POINTER(ctypes.c_int))
        count[0] = 2
        return 0

    class FakeLibc:
        launch_activate_socket = activate

        @staticmethod
        def free(ptr):
            freed.append(ctypes.cast(ptr, ctypes.c_void_p).value)

    try:
        sock = listener.launchd_socket(FakeLibc())
        assert names == [b"Listeners"]
        assert freed == [ctypes.addressof(fd_array)]
        assert sock is not None and sock.fileno() == fd_array[0]
        assert sock.getsockname() == path
        with pytest.raises(OSError):
            os.fstat(fd_array[1])  # the extra fd was closed, not leaked
        sock.close()
    finally:
        lst.close()

    @proto
    def not_launched(name, fds, count):
        return 3  # ESRCH: not started by launchd with a Sockets key

    class NotLaunched:
        launch_activate_socket = not_launched

    assert listener.launchd_socket(NotLaunched()) is None
    assert listener.launchd_socket() is None  # not macOS: no libc lookup at all
