"""What every benchmark needs: sockets to watch, a daemon to measure, a table.

    Holder(n)        a subprocess holding n loopback TCP sockets (n/2 pairs,
                     a few bytes moved on each) until the block ends
    Transfer()       a subprocess pushing bytes over one loopback connection
                     as fast as it can, reporting the rate it achieved
    Daemon(...)      a real `netmond` on a temporary socket, stopped at the end
    Usage(procs)     CPU seconds and peak RSS of processes over a window
    table(...)       an aligned text table; every bench prints our figure
                     beside a peer measured in the same run, and the ratio

The holders raise RLIMIT_NOFILE to its hard limit, use loopback only, close
with RST (no TIME_WAIT left to skew the next run) and exit when their stdin
closes, so that even a benchmark killed halfway leaves nothing behind.

Run as a script, this module IS the holder (`harness.py hold N`,
`harness.py transfer`); the benchmarks start it that way.
(Not named common.py: that would shadow the `common` package.)
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_READY = "ready"
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


# -- child processes ---------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: the child gets SIGTERM when the bench dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux/glibc: the context managers still clean up


def popen(argv: Sequence[str], **kw) -> subprocess.Popen:
    """subprocess.Popen for every process a bench starts: none outlives it."""
    return subprocess.Popen(list(argv), preexec_fn=_die_with_parent, **kw)


# A bench stopped with SIGTERM unwinds like one stopped with Ctrl-C: the
# `with` blocks stop the daemon and the holders.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


# -- descriptors ---------------------------------------------------------------


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def max_sockets() -> int:
    """The most sockets one holder can open here (even, with room to spare)."""
    return (raise_fd_limit() - 64) // 2 * 2


# -- the holder ----------------------------------------------------------------


def _hold(sockets: int) -> None:
    limit = raise_fd_limit()
    if sockets + 64 > limit:
        sys.exit(f"need {sockets + 64} file descriptors, RLIMIT_NOFILE allows {limit}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    addr = listener.getsockname()
    held: list[socket.socket] = []
    try:
        for _ in range(sockets // 2):
            client = socket.create_connection(addr, timeout=5)
            server, _ = listener.accept()
            client.sendall(b"ping")
            server.recv(16)
            held += (client, server)
        listener.close()  # not part of the socket count
        print(_READY, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        for s in held:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
            s.close()
        listener.close()


def _transfer(chunk: int = 1 << 20) -> None:
    """Push bytes over one loopback connection until stdin closes; print the total."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    for s in (sender, receiver):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    stop = threading.Event()
    received = [0]

    def sink() -> None:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = receiver.recv_into(view)
            if n == 0:
                return
            received[0] += n

    def source() -> None:
        data = bytes(chunk)
        try:
            while not stop.is_set():
                sender.sendall(data)
        except OSError:
            pass
        sender.shutdown(socket.SHUT_WR)

    threads = [threading.Thread(target=sink), threading.Thread(target=source)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    print(_READY, flush=True)
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    print(f"{received[0]} {elapsed:.3f}", flush=True)
    for s in (sender, receiver):
        s.close()


class Holder:
    """`with Holder(n) as h:` n loopback TCP sockets are open inside the block."""

    def __init__(self, sockets: int) -> None:
        self.sockets = sockets
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Holder":
        self.proc = _spawn(["hold", str(self.sockets)])
        return self

    def __exit__(self, *exc: object) -> None:
        _finish(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Transfer:
    """`with Transfer() as t:` a saturating loopback transfer runs in the block.

    After the block, `t.rate` is the bytes per second it achieved.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.rate: float | None = None

    def __enter__(self) -> "Transfer":
        self.proc = _spawn(["transfer"])
        return self

    def __exit__(self, *exc: object) -> None:
        out = _finish(self.proc)
        try:
            moved, elapsed = out.split()
            self.rate = int(moved) / float(elapsed)
        except ValueError:
            self.rate = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def _spawn(args: list[str]) -> subprocess.Popen:
    proc = popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip()
    if line != _READY:
        proc.kill()
        proc.wait()
        raise SystemExit(f"bench helper {' '.join(args)!r} failed to start")
    return proc


def _finish(proc: subprocess.Popen | None) -> str:
    """Close the helper's stdin (its signal to clean up and exit); its last output."""
    if proc is None:
        return ""
    out = ""
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return (out or "").strip()


# -- the daemon ------------------------------------------------------------------


class Daemon:
    """A real netmond (`python -m netmond.main`) on a temporary socket.

    `with Daemon(interval=1) as d:` d.pid, d.socket; stopped with SIGTERM after.
    """

    def __init__(self, interval: float = 1.0, *extra: str) -> None:
        self.interval = interval
        self.extra = list(extra)
        self.dir = ""
        self.socket = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Daemon":
        from common.client import wait_for_daemon

        self.dir = tempfile.mkdtemp(prefix="nmb-", dir="/tmp")
        self.socket = os.path.join(self.dir, "d.sock")
        config = os.path.join(self.dir, "netmond.toml")
        open(config, "w").close()  # no system config: the defaults, as documented
        self.proc = popen(
            [sys.executable, "-m", "netmond.main", "--config", config, "--socket", self.socket,
             "--interval", str(self.interval), "--log-level", "warning", *self.extra],
            cwd=ROOT, stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_daemon(self.socket, timeout=20)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ticks(self, ticks: int, timeout: float = 60.0) -> None:
        """Block until the daemon has sampled `ticks` times since it started."""
        from common.client import Client

        deadline = time.monotonic() + timeout
        with Client.connect(self.socket, timeout=10) as c:
            while c.call("status")["ticks"] < ticks:
                if time.monotonic() > deadline:
                    raise SystemExit(f"netmond did not reach {ticks} ticks in {timeout:.0f}s")
                time.sleep(0.1)


# -- measuring ---------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = False) -> float:
    """user + system CPU of a process (all threads; `children`: reaped ones too)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    total = t.user + t.system
    if children:
        total += t.children_user + t.children_system
    return total


class Usage:
    """CPU % of one core and peak RSS of some processes over one window.

        usage = Usage({"netmond": pid, ...}); usage.run(30)
        usage.cpu_percent["netmond"], usage.peak_rss["netmond"]

    RSS is read every `step` seconds; a process given with children=True
    (a shell loop) has its reaped children's CPU added.
    """

    def __init__(self, pids: dict[str, int], children: Iterable[str] = ()) -> None:
        self.pids = pids
        self.children = set(children)
        self.cpu_percent: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.seconds = 0.0

    def run(self, seconds: float, step: float = 0.5) -> "Usage":
        import psutil

        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        start = {name: cpu_seconds(pid, name in self.children) for name, pid in self.pids.items()}
        rss = {name: 0 for name in self.pids}
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            for name, proc in procs.items():
                try:
                    rss[name] = max(rss[name], proc.memory_info().rss)
                except psutil.Error:
                    pass
            now = time.monotonic()
            if now >= end:
                break
            time.sleep(min(step, end - now))
        self.seconds = time.monotonic() - t0
        for name, pid in self.pids.items():
            used = cpu_seconds(pid, name in self.children) - start[name]
            self.cpu_seconds[name] = used
            self.cpu_percent[name] = 100.0 * used / self.seconds
        self.peak_rss = rss
        return self


def median_wall(argv: Sequence[str], runs: int, **kw) -> float:
    """Median wall seconds of running argv to completion (output discarded)."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, **kw)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


# -- output ----------------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> str:
    """ours / theirs as text ('-' when either is unknown or theirs is 0)."""
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned table: first column left, the others right."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    sys.stdout.flush()


def machine_line() -> str:
    """Kernel, Python, CPUs and load: the conditions a table was measured in."""
    import psutil

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Linux {os.uname().release}, Python {sys.version.split()[0]}, psutil {psutil.__version__}, "
            f"{os.cpu_count()} CPUs, load average {load}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        _hold(int(sys.argv[2]))
    elif sys.argv[1:2] == ["transfer"]:
        _transfer()
    else:
        sys.exit("usage: harness.py hold N | harness.py transfer")
