"""What every benchmark needs: sockets to watch, a daemon to measure, a table.

    Holder(n)        n loopback TCP sockets (n/2 pairs, a few bytes moved on
                     each) held until the block ends, spread over as many
                     subprocesses as RLIMIT_NOFILE needs (50k and 100k rows)
    Churn(...)       a subprocess opening and closing loopback connections
                     at a set rate, reporting what it made and moved
    Hog()            a process burning one core until the block ends
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

import math
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
from typing import Iterable, Iterator, Sequence

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


#: Holder processes one benchmark may start (100,000 sockets need 6 here).
MAX_HOLDERS = 16


def holders_needed(sockets: int) -> int:
    """Holder processes n sockets take under this RLIMIT_NOFILE."""
    return max(1, -(-sockets // max_sockets()))


def can_hold(sockets: int) -> str | None:
    """None if Holder(n) can open n sockets here, else why not."""
    if holders_needed(sockets) > MAX_HOLDERS:
        return f"more than {MAX_HOLDERS} holders of {max_sockets()} sockets (RLIMIT_NOFILE)"
    return None


def holdable(sizes: Sequence[int]) -> Iterator[int]:
    """The socket counts of `sizes` this machine can hold, in order; each
    one it cannot gets a row saying why ("n/a") instead of a measurement."""
    for n in sizes:
        why_not = can_hold(n)
        if why_not:
            print(f"\n{n} sockets: n/a ({why_not})")
            continue
        yield n


def _set_comm(name: str) -> None:
    """Name this process (what netmond shows as process_name) on Linux."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name)
    except OSError:
        pass


CHURN_ADDR = "127.0.0.2"


def _churn(rate: float, seconds: float, nbytes: int, listeners: int = 8) -> None:
    """Open, use and close `rate` loopback connections a second for `seconds`.

    Each connection carries `nbytes` from client to server; the server end
    reads them all, then both ends close (client first: its TIME_WAIT is
    spread over `listeners` ports, so ephemeral ports never run out). The
    listeners are on CHURN_ADDR, so that a peer can tell these connections
    from the holders' (127.0.0.1).
    Paced by a schedule, not by sleeps per connection: a late loop catches
    up. Prints "connections bytes_moved elapsed" at the end.
    """
    _set_comm("nm-churn")
    socks = []
    for _ in range(listeners):
        lst = socket.socket()
        lst.bind((CHURN_ADDR, 0))
        lst.listen(128)
        socks.append(lst)
    payload = b"x" * nbytes
    buf = bytearray(65536)
    made = moved = 0
    print(_READY, flush=True)
    t0 = time.monotonic()
    end = t0 + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = t0 + made / rate
        if due > now:
            time.sleep(min(due - now, end - now))
            continue
        lst = socks[made % listeners]
        client = socket.create_connection(lst.getsockname(), timeout=5)
        server, _ = lst.accept()
        client.sendall(payload)
        got = 0
        while got < nbytes:
            n = server.recv_into(buf)
            if n == 0:
                break
            got += n
        client.close()
        server.close()
        made += 1
        moved += got
    elapsed = time.monotonic() - t0
    for lst in socks:
        lst.close()
    print(f"{made} {moved} {elapsed:.3f}", flush=True)


def _hog() -> None:
    """Burn one core until stdin closes (a reader thread watches it)."""
    _set_comm("nm-hog")
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(_READY, flush=True)
    x = 0
    while not done.is_set():
        for _ in range(100_000):
            x += 1


class Churn:
    """`with Churn(rate, seconds, nbytes) as c:` connections come and go.

    After the block (which waits for the run to end), c.connections,
    c.bytes_moved and c.rate (achieved connections a second).
    """

    def __init__(self, rate: float, seconds: float, nbytes: int = 1000) -> None:
        self.args = ["churn", str(rate), str(seconds), str(nbytes)]
        self.proc: subprocess.Popen | None = None
        self.connections = self.bytes_moved = 0
        self.rate = 0.0

    def __enter__(self) -> "Churn":
        self.proc = _spawn(self.args)
        return self

    def wait(self, timeout: float) -> None:
        """Wait for the run to end and read what it made."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        try:
            made, moved, elapsed = out.split()
            self.connections, self.bytes_moved = int(made), int(moved)
            self.rate = self.connections / float(elapsed)
        except ValueError:
            pass

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Hog:
    """`with Hog(n):` n processes each burn a core inside the block."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Hog":
        for _ in range(self.processes):
            self.procs.append(_spawn(["hog"]))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            _finish(proc)


class Holder:
    """`with Holder(n) as h:` n loopback TCP sockets are open inside the block.

    One process holds at most max_sockets() of them (RLIMIT_NOFILE, 20,000
    here), so larger counts are spread evenly over several processes.
    """

    def __init__(self, sockets: int) -> None:
        self.sockets = sockets
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Holder":
        n = holders_needed(self.sockets)
        shares = [self.sockets // 2 // n * 2] * n
        shares[0] += self.sockets - sum(shares)
        try:
            for share in shares:
                self.procs.append(_spawn(["hold", str(share)]))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # all of them start closing at once
        for proc in self.procs:
            _finish(proc)

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


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
        if proc.stdin is not None and proc.stdin.closed:
            proc.stdin = None  # communicate() would flush it
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
             "--interval", str(self.interval), "--log-level", "warning", *self._data_dir(), *self.extra],
            cwd=ROOT, stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_daemon(self.socket, timeout=20)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _data_dir(self) -> list[str]:
        """Usage stored in the bench's temporary directory unless the bench says where."""
        if "--data-dir" in self.extra or "--no-store-usage" in self.extra:
            return []
        return ["--data-dir", os.path.join(self.dir, "data")]

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


class StatusProbe:
    """A thread asking the daemon for `status` every `every` seconds, as a
    user's `netmonctl status` would, over one connection: how long each
    answer took, and what the answers said.

        with StatusProbe(socket) as probe: ...
        probe.latencies (seconds), probe.replies (the Status maps)
    """

    def __init__(self, socket_path: str, every: float = 0.1) -> None:
        self.socket_path = socket_path
        self.every = every
        self.latencies: list[float] = []
        self.replies: list[dict] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "StatusProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        from common.client import Client

        with Client.connect(self.socket_path, timeout=60) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    reply = c.call("status")
                except Exception:  # noqa: BLE001 - counted, the probe goes on
                    self.errors += 1
                    self._stop.wait(self.every)
                    continue
                self.latencies.append(time.perf_counter() - t0)
                self.replies.append(reply)
                self._stop.wait(self.every)

    def percentile(self, p: float) -> float | None:
        """The p-th percentile latency (nearest rank), seconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0; root or owner)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, bytes (empty where /proc has none)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value, _unit = line.split()
                    out[name.rstrip(":")] = int(value) * 1024
    except OSError:
        pass
    return out


def median_wall(argv: Sequence[str], runs: int, **kw) -> float:
    """Median wall seconds of running argv to completion (output discarded)."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, **kw)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


# -- output ----------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def sizes(size: str, small: list[int], large: list[int]) -> list[int]:
    """The socket counts of a bench for --size small|large (large adds the
    50,000 and 100,000 rows: minutes more, several holder processes)."""
    return small if size == "small" else small + large


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
    elif sys.argv[1:2] == ["churn"]:
        _churn(float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["hog"]:
        _hog()
    else:
        sys.exit("usage: harness.py hold N | transfer | churn RATE SECONDS BYTES | hog")
