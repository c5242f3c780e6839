"""macOS backend: every socket with its process and byte counters, from nettop.

Why nettop: on macOS, psutil.net_connections() needs root (it walks every
process's file table), and it has no byte counters anyway. nettop reads the
kernel's network statistics without root and lists every TCP and UDP
socket of every process, with pid and cumulative bytes in and out. So
without root, nettop's rows are all we have; with root they are still the
only per-socket byte counters.

How it runs:

* ONE long-lived `nettop -L 0 -s <secs> -x -n`: CSV logging mode forever,
  raw byte numbers, no name resolution. No `-m`: nettop(1) says it
  monitors TCP and UDP sockets by default, whereas `-m` picks one mode
  (`-m tcp` or `-m udp`), so covering both with `-m` would take two
  processes. `-s` takes whole seconds; the interval is rounded up, min 1.
* nettop block-buffers its stdout when that is a pipe, so samples would
  arrive in bursts seconds late (as reported by other tools that read
  it); it is given a pty instead, where it writes line by line as on a
  terminal. `use_pty=False` selects a plain pipe.
* A reader thread feeds the stream to the pure parser (nettop_parser.py)
  and keeps the latest complete sample. A sample is complete when the
  next header arrives or, sooner, when the stream has been quiet for
  QUIET_FLUSH seconds: nettop prints a sample in one burst and then
  sleeps, so a quiet stream means the sample is over.
* Its stdin is a pipe that stays open and silent for its whole life: at
  EOF or /dev/null nettop spins at 100-150 % CPU (exelban/stats PR #1854;
  Ffinnis/OpenActivity). NSUnbufferedIO=YES is set as stats does.
* If nettop exits, it is restarted with exponential backoff (1 s, 2 s, ...
  30 s; back to 1 s once a run has produced a sample), and status() says so.
  If it gives no sample for max(3 x -s, 5 s) it has hung (reported in the
  wild; exelban/stats is reported to kill its nettop after 5 s, in a
  version newer than the one we could read): it is killed, restarted the same
  way, and status() says so. nettop answers a flag it does not know with
  its usage text and exit status 0, so a run whose first line is not a
  CSV header is reported in status() with what it printed.
  close() terminates it (SIGTERM, bounded wait, SIGKILL). It stays in our
  process group so that launchd, which kills a job's process group when
  the job stops, takes it down too if netmond dies without close().

What the numbers mean (nettop_counters.py has the details and sources):
bytes are counted from the first frame nettop gives (a connection open
before netmond started counts only what it moves afterwards), continue
across nettop restarts, and are payload: `bytes_sent` is bytes_out minus
re-tx, `bytes_received` bytes_in minus rx_dupe (xnu adds retransmitted and
duplicate payload to both). Listening sockets have no counters (None,
never 0). nettop reports no destroy events: a socket that vanishes from a
complete frame is reported in Snapshot.closed, with the last bytes its
process row recovered for it where the process row keeps closed sockets.
A connection that opens and closes between two frames is never seen: its
bytes show up only in the interface totals, as unattributed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import selectors
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .base import (
    Backend,
    BackendStatus,
    InterfaceSample,
    Snapshot,
    SocketSample,
    is_root,
    now,
)
from .interfaces import sample_interfaces
from .nettop_counters import MAX_PENDING_CLOSED, NettopAccounting
from .nettop_parser import NettopParser, NettopSample, is_header_line
from .procinfo import ProcessCache

log = logging.getLogger(__name__)

#: Restart backoff after nettop exits (seconds).
RESTART_MIN = 1.0
RESTART_MAX = 30.0
#: Silence on the stream after which the sample being read is complete.
#: Far longer than the gaps inside one of nettop's bursts, far shorter
#: than its 1 s minimum interval.
QUIET_FLUSH = 0.25
#: How long after an unplanned restart status() keeps mentioning it.
RESTART_NOTICE_SECONDS = 300.0
#: A line longer than this is garbage (bounds the reader's memory).
MAX_LINE_BYTES = 1 << 20
#: A nettop that gives no sample for max(HANG_FACTOR x its -s, HANG_MIN_SECONDS)
#: has hung and is killed (then restarted with the usual backoff). nettop
#: has been reported to hang outright; exelban/stats reportedly kills its
#: own after 5 s (not in the stored readers.swift we could read, which
#: runs one-shot `nettop -L 1` and waits for EOF with no limit at all).
HANG_FACTOR = 3
HANG_MIN_SECONDS = 5.0
#: Lines of non-CSV output (nettop's usage text) kept for status().
NOT_CSV_LINES = 3
#: Bounded waits for nettop to go away.
TERMINATE_TIMEOUT = 2.0
REAP_TIMEOUT = 5.0

#: (pid, nettop's process name) -> (process name, user)
Identify = Callable[[int | None, str | None], tuple[str | None, str | None]]


def nettop_seconds(interval: float) -> int:
    """nettop's -s for a sampling interval: whole seconds, rounded up, >= 1."""
    # The epsilon keeps 1.0000000001 (float noise from a config) at 1.
    return max(1, math.ceil(interval - 1e-9))


def interval_note(interval: float) -> str | None:
    """A line for status/interval output when nettop can't sample at `interval`."""
    seconds = nettop_seconds(interval)
    if abs(seconds - interval) < 1e-6:
        return None
    # deg/beads-utils measured that `-s 0.2` gives no samples at all, so
    # the interval is rounded up rather than passed on as a fraction.
    return (
        f"nettop samples every {seconds}s, not every {interval:g}s as asked: "
        "its -s takes whole seconds (a fraction gives no samples at all)"
    )


def nettop_command(path: str, interval: float) -> list[str]:
    """The nettop command line for a sampling interval."""
    return [path, "-L", "0", "-s", str(nettop_seconds(interval)), "-x", "-n"]


def _check_interval(interval: float) -> float:
    if not isinstance(interval, (int, float)) or not math.isfinite(interval) or interval <= 0:
        raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
    return float(interval)


def sockets_from_sample(sample: NettopSample, identify: Identify | None = None) -> list[SocketSample]:
    """SocketSamples for the socket rows of one nettop sample.

    `identify(pid, nettop_name)` gives the (name, user) to report; without
    it, nettop's (truncated) name is used and the user is unknown.
    """
    sockets: list[SocketSample] = []
    seen: dict[tuple, int] = {}
    for flow in sample.flows:
        # nettop prints "*" for an unbound address; netmon shows the
        # unspecified address, as ss and psutil do.
        local_ip = flow.local_ip or ("::" if flow.family == "IPv6" else "0.0.0.0")
        local_port = flow.local_port if flow.local_port is not None else 0
        key: tuple = (flow.protocol, local_ip, local_port, flow.remote_ip, flow.remote_port)
        if flow.remote_ip is None:
            # Listeners and unconnected UDP sockets: several processes may
            # hold the same address (SO_REUSEPORT; everyone on *:5353).
            key += (flow.pid,)
        # The same tuple twice within one process: nettop's row order, which
        # is stable from sample to sample, tells them apart.
        repeat = seen.get(key, 0)
        seen[key] = repeat + 1
        if repeat:
            key += (repeat,)
        if identify is not None:
            name, user = identify(flow.pid, flow.process_name)
        else:
            name, user = flow.process_name, None
        sockets.append(
            SocketSample(
                key=key,
                protocol=flow.protocol,
                family=flow.family,
                local_ip=local_ip,
                local_port=local_port,
                remote_ip=flow.remote_ip,
                remote_port=flow.remote_port,
                state=flow.state if flow.protocol == "TCP" else "NONE",
                pid=flow.pid,
                process_name=name,
                user=user,
                bytes_sent=flow.bytes_out,
                bytes_received=flow.bytes_in,
            )
        )
    return sockets


def _describe_exit(code: int | None) -> str:
    """'exit status 3', 'killed by SIGKILL': for status() and the log."""
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _configure_pty(fd: int) -> None:
    """Raw output, wide window: nettop's lines reach us unchanged.

    Without this the pty turns "\\n" into "\\r\\n" (harmless, the parser
    strips it) and a program that looks at the window size sees 0x0.
    """
    try:
        attrs = termios.tcgetattr(fd)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 4096, 0, 0))
    except (termios.error, OSError):
        pass


def _read(fd: int) -> bytes | None:
    """One chunk; b"" at EOF; None if there was nothing after all.

    A pty whose other side has closed gives EIO on Linux rather than EOF.
    """
    try:
        return os.read(fd, 65536)
    except OSError as err:
        if err.errno in (errno.EIO, errno.EBADF):
            return b""
        if err.errno in (errno.EAGAIN, errno.EINTR):
            return None
        raise


def _terminate(child: subprocess.Popen, timeout: float = TERMINATE_TIMEOUT) -> int | None:
    """SIGTERM, wait a bounded time, then SIGKILL. Returns the exit code."""
    if child.poll() is not None:
        return child.returncode
    try:
        child.terminate()
        return child.wait(timeout)
    except ProcessLookupError:
        return child.poll()
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            return child.wait(timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
            log.error("nettop (pid %d) survives SIGKILL", child.pid)
            return None


@dataclass(slots=True)
class _Child:
    """A running nettop and the descriptors we read it through."""

    process: subprocess.Popen
    out_fd: int
    err_fd: int
    pty_master: int | None
    #: Our end of nettop's stdin: held open, never written (see _spawn).
    stdin_w: int | None = None

    def close_fds(self) -> None:
        if self.pty_master is not None:
            os.close(self.pty_master)
            self.pty_master = None
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def close_stdin(self) -> None:
        """Only once nettop has exited: EOF on its stdin makes it spin."""
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None


class NettopRunner:
    """Keeps one nettop running and hands each complete sample to `on_sample`.

    All the work happens in one daemon thread: spawn, read, parse, respawn.
    `on_sample(sample, run, replaces)` is called from that thread, with
    samples in order; `run` counts the nettop processes started (1, 2,
    ...); a sample flushed early and then continued arrives again, merged,
    with `replaces` True.
    """

    def __init__(
        self,
        interval: float,
        on_sample: Callable[[NettopSample, int, bool], None],
        nettop_path: str | None = None,
        use_pty: bool = True,
    ) -> None:
        self._interval = _check_interval(interval)
        self._on_sample = on_sample
        self._nettop_path = nettop_path
        self._use_pty = use_pty
        self._lock = threading.Lock()  # guards everything below
        self._stopping = threading.Event()
        self._wake = threading.Event()  # cuts a backoff wait short
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None
        self._restart_requested = False
        self._latest: NettopSample | None = None  # for merging continuations
        # What status() reports.
        self._problem: str | None = None  # why nettop can't be started
        self._exits = 0  # unplanned exits
        self._last_exit: str | None = None
        self._last_exit_at: float | None = None
        self._next_start_at: float | None = None
        self._skipped_lines = 0
        self._last_sample_at: float | None = None
        self._stderr_tail = b""
        self._hang_note: str | None = None  # why the running nettop was killed
        self._hangs = 0
        self._runs = 0  # nettop processes started so far
        self._not_csv: str | None = None  # what nettop printed instead of CSV

    # -- control (any thread) ---------------------------------------------

    def start(self) -> None:
        """Start the reader thread (and nettop). Idempotent."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="netmond-nettop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate nettop and end the thread; waits at most ~timeout."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            child = self._child
        if child is not None:
            _terminate(child)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - defensive
                log.warning("nettop reader thread did not stop within %.1fs", timeout)

    def set_interval(self, interval: float) -> None:
        """Use a new interval; restarts nettop if its -s changes."""
        interval = _check_interval(interval)
        with self._lock:
            changed = nettop_seconds(interval) != nettop_seconds(self._interval)
            self._interval = interval
            if not changed:
                return
            self._restart_requested = True
            child = self._child
        self._wake.set()
        if child is not None:
            _terminate(child)  # the thread sees EOF and starts the new one

    # -- state (any thread) -----------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running nettop's pid, or None."""
        with self._lock:
            return self._child.pid if self._child is not None else None

    @property
    def exits(self) -> int:
        """How many times nettop exited unasked (each one was restarted)."""
        with self._lock:
            return self._exits

    @property
    def hangs(self) -> int:
        """How many times nettop hung and was killed."""
        with self._lock:
            return self._hangs

    @property
    def skipped_lines(self) -> int:
        with self._lock:
            return self._skipped_lines

    def warnings(self) -> list[str]:
        """Problems worth a line in `netmonctl status`."""
        out: list[str] = []
        with self._lock:
            t = time.monotonic()
            running = self._child is not None
            if self._problem is not None:
                out.append(self._problem + self._retry_note(t))
            elif not running and self._last_exit is not None:
                out.append(f"nettop is not running ({self._last_exit})" + self._retry_note(t))
            elif self._exits and self._last_exit_at is not None:
                ago = t - self._last_exit_at
                if ago < RESTART_NOTICE_SECONDS:
                    out.append(
                        f"nettop exited or hung {self._exits} time(s) and was restarted; "
                        f"last: {self._last_exit}, {ago:.0f}s ago"
                    )
            if running and self._last_sample_at is not None:
                silent = t - self._last_sample_at
                if silent > 3 * nettop_seconds(self._interval) + 5:
                    out.append(f"no sample from nettop for {silent:.0f}s; data is stale")
            if self._not_csv is not None:
                out.append(self._not_csv)
            if self._skipped_lines:
                out.append(
                    f"{self._skipped_lines} line(s) of nettop output could not be parsed "
                    "and were skipped"
                )
            effective = interval_note(self._interval)
            if effective:
                out.append(effective)
        return out

    @property
    def effective_interval(self) -> float:
        """The interval nettop really samples at (whole seconds)."""
        with self._lock:
            return float(nettop_seconds(self._interval))

    def _retry_note(self, t: float) -> str:
        if self._next_start_at is None:
            return ""
        return f"; next attempt in {max(0.0, self._next_start_at - t):.0f}s"

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        delay = RESTART_MIN
        while not self._stopping.is_set():
            try:
                produced = self._run_once()
            except Exception:  # never let the thread die: keep retrying
                log.exception("nettop reader failed")
                produced = 0
            if self._stopping.is_set():
                break
            with self._lock:
                requested, self._restart_requested = self._restart_requested, False
            if requested:
                delay = RESTART_MIN
                continue  # a new interval: start the new nettop at once
            if produced:
                delay = RESTART_MIN
            with self._lock:
                self._next_start_at = time.monotonic() + delay
            self._wake.wait(delay)
            self._wake.clear()
            with self._lock:
                self._next_start_at = None
            delay = min(delay * 2, RESTART_MAX)

    def _run_once(self) -> int:
        """Run nettop until it exits; returns how many samples it gave."""
        path = self._nettop_path or shutil.which("nettop")
        if path is None:
            self._set_problem(
                "nettop not found on PATH: no connections can be listed "
                "(the darwin backend reads macOS's /usr/bin/nettop)"
            )
            return 0
        with self._lock:
            argv = nettop_command(path, self._interval)
        try:
            child = self._spawn(argv)
        except OSError as err:
            self._set_problem(f"cannot start {path}: {err.strerror or err}")
            return 0
        with self._lock:
            self._child = child.process
            self._problem = None
            self._stderr_tail = b""
            self._runs += 1
            self._latest = None
            stopping = self._stopping.is_set()
        log.info("nettop started (pid %d): %s", child.process.pid, " ".join(argv))
        if stopping:  # stop() ran while we were spawning: it missed this one
            _terminate(child.process)
        produced = 0
        try:
            produced = self._pump(child)
        finally:
            child.close_fds()
            code = self._reap(child.process)
            child.close_stdin()
            with self._lock:
                self._child = None
                unplanned = not (self._restart_requested or self._stopping.is_set())
                if unplanned:
                    tail = self._stderr_tail.decode("utf-8", "replace").strip().splitlines()
                    how = _describe_exit(code) + (f": {tail[-1]}" if tail else "")
                    if self._hang_note is not None:
                        how = self._hang_note
                        self._hang_note = None
                    self._exits += 1
                    self._last_exit = how
                    self._last_exit_at = time.monotonic()
            if unplanned:
                log.warning("nettop exited (%s); restarting", how)
        return produced

    def _spawn(self, argv: list[str]) -> _Child:
        # stdin: a pipe whose write end we hold, never write to and close
        # only once nettop is gone. nettop spins at 100-150 % CPU when its
        # stdin is at EOF or /dev/null, -s or not: exelban/stats PR #1854
        # fixed theirs with a stdin pipe and NSUnbufferedIO=YES, and
        # Ffinnis/OpenActivity keeps its stdin pipe open because at EOF
        # nettop spins. tests/data/fake_nettop refuses to run with stdin at
        # EOF, so this cannot silently come back.
        stdin_r, stdin_w = os.pipe()
        env = {**os.environ, "NSUnbufferedIO": "YES"}
        try:
            if not self._use_pty:
                proc = subprocess.Popen(
                    argv, stdin=stdin_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
                )
                assert proc.stdout is not None and proc.stderr is not None
                return _Child(proc, proc.stdout.fileno(), proc.stderr.fileno(), None, stdin_w)
            master, slave = os.openpty()
            try:
                _configure_pty(slave)
                proc = subprocess.Popen(
                    argv, stdin=stdin_r, stdout=slave, stderr=subprocess.PIPE, env=env
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                # Only nettop may hold the slave: its exit must give us EOF.
                os.close(slave)
        except BaseException:
            os.close(stdin_w)
            raise
        finally:
            os.close(stdin_r)
        assert proc.stderr is not None
        return _Child(proc, master, proc.stderr.fileno(), master, stdin_w)

    def _pump(self, child: _Child) -> int:
        """Read nettop until its stdout closes; returns samples published.

        Kills a nettop that gives no complete sample for hang_seconds()
        (nettop has been reported to hang outright; see HANG_MIN_SECONDS).
        """
        parser = NettopParser()
        produced = 0
        pending = b""  # an incomplete last line
        received = time.monotonic()
        progress = received  # the last sample published, or the start
        hung = False
        skipped_before = 0
        head: list[str] | None = []  # the first lines, until a header shows
        with selectors.DefaultSelector() as sel:  # not select(): fds may be > 1023
            sel.register(child.out_fd, selectors.EVENT_READ, "out")
            sel.register(child.err_fd, selectors.EVENT_READ, "err")
            out_open = True
            while out_open and not self._stopping.is_set():
                events = sel.select(timeout=QUIET_FLUSH)
                if not events and parser.pending:  # quiet: the sample is complete
                    n = self._publish(parser.flush())
                    if n:
                        produced += n
                        progress = time.monotonic()
                for key, _ in events:
                    data = _read(key.fd)
                    if data is None:
                        continue
                    if not data:
                        sel.unregister(key.fd)
                        out_open = out_open and key.data != "out"
                    elif key.data == "err":
                        with self._lock:
                            self._stderr_tail = (self._stderr_tail + data)[-2048:]
                    else:
                        received = time.monotonic()
                        *lines, pending = (pending + data).split(b"\n")
                        if len(pending) > MAX_LINE_BYTES:
                            pending = b""  # no newline in a megabyte: garbage
                            parser.skipped_lines += 1
                        samples: list[NettopSample] = []
                        for line in lines:
                            text = line.decode("utf-8", "replace")
                            if head is not None:
                                head = self._check_head(head, text)
                            samples += parser.feed(text, at=received)
                        n = self._publish(samples)
                        if n:
                            produced += n
                            progress = received
                skipped_before = self._note_skipped(parser, skipped_before)
                # Output that never completes a sample (silence, or lines
                # that are no sample) is a hang all the same.
                silent = time.monotonic() - progress
                if silent > self.hang_seconds() and not hung:
                    self._kill_hung(child, silent)
                    hung = True
        # EOF: a last line without its newline still counts (or is skipped).
        if pending and head is not None:
            head = self._check_head(head, pending.decode("utf-8", "replace"))
        if head:  # never a header: usage text, most likely
            self._set_not_csv(head)
        tail = parser.feed(pending.decode("utf-8", "replace"), at=received) if pending else []
        produced += self._publish(tail + parser.flush())
        self._note_skipped(parser, skipped_before)
        return produced

    def hang_seconds(self) -> float:
        """How long nettop may go without a sample before it is killed."""
        with self._lock:
            return max(HANG_FACTOR * nettop_seconds(self._interval), HANG_MIN_SECONDS)

    def _kill_hung(self, child: _Child, silent: float) -> None:
        note = f"hung: no sample for {silent:.0f}s, killed"
        log.warning("nettop (pid %d) %s; restarting it", child.process.pid, note)
        with self._lock:
            self._hang_note = note
            self._hangs += 1
        _terminate(child.process)

    def _check_head(self, head: list[str], line: str) -> list[str] | None:
        """Watch the run's first lines: None once they began with a header.

        nettop prints its usage and exits 0 on a flag it does not know, so
        the exit status says nothing: the first line must be a CSV header.
        """
        text = line.strip()
        if not text:
            return head
        if not head and is_header_line(text):
            with self._lock:
                self._not_csv = None
            return None
        if len(head) < NOT_CSV_LINES:
            head.append(text[:200])
        return head

    def _set_not_csv(self, head: list[str]) -> None:
        message = "nettop did not print CSV (did it reject its flags?); it said: " + " / ".join(head)
        with self._lock:
            first = self._not_csv != message
            self._not_csv = message
        if first:
            log.warning("%s", message)

    def _note_skipped(self, parser: NettopParser, before: int) -> int:
        if parser.skipped_lines != before:
            with self._lock:
                self._skipped_lines += parser.skipped_lines - before
        return parser.skipped_lines

    def _publish(self, samples: list[NettopSample]) -> int:
        count = 0
        for sample in samples:
            replaces = sample.continuation
            if replaces:
                if self._latest is None:
                    continue  # nothing to continue: cannot place these rows
                sample = self._latest.merged(sample)
            self._latest = sample
            with self._lock:
                self._last_sample_at = time.monotonic()
                run = self._runs
            try:
                self._on_sample(sample, run, replaces)
            except Exception:  # a consumer bug must not stop the stream
                log.exception("nettop sample consumer failed")
            count += 1
        return count

    def _reap(self, process: subprocess.Popen) -> int | None:
        # stdout closed: nettop has exited or is about to. Bounded anyway.
        try:
            return process.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return _terminate(process)

    def _set_problem(self, message: str) -> None:
        with self._lock:
            first = self._problem != message
            self._problem = message
        if first:
            log.warning("%s", message)


@dataclass(frozen=True, slots=True)
class _Tick:
    """A nettop sample, the sockets to report for it, and the interface
    counters read when it arrived."""

    sample: NettopSample
    sockets: list[SocketSample]
    interfaces: list[InterfaceSample]
    seq: int


class DarwinBackend(Backend):
    """Sockets from nettop, names and users from psutil where permitted."""

    name = "darwin"
    per_socket_bytes = True

    def __init__(
        self,
        interval: float = 1.0,
        nettop_path: str | None = None,
        *,
        process_cache: ProcessCache | None = None,
        use_pty: bool = True,
    ) -> None:
        """`interval` in seconds; `nettop_path` None means the first nettop
        on PATH, looked up at every (re)start."""
        self._interval = _check_interval(interval)
        self._procs = process_cache if process_cache is not None else ProcessCache()
        self._cond = threading.Condition()
        self._tick: _Tick | None = None
        self._seq = 0
        self._returned_seq = 0
        # Reader thread only: raw counters -> reported ones (nettop_counters.py).
        self._accounting = NettopAccounting()
        self._run = 0
        # Closed sockets not yet handed out by sample() (guarded by _cond).
        self._closed: list[SocketSample] = []
        self._runner = NettopRunner(interval, self._on_sample, nettop_path, use_pty)

    # -- Backend interface --------------------------------------------------

    def start(self) -> None:
        self._runner.start()

    def sample(self) -> Snapshot:
        """The latest nettop sample as a Snapshot (never raises).

        Snapshot.monotonic is when nettop printed the sample, not when this
        was called: counters and time then match, and rates are right even
        though the sample may be up to one interval old. If the sample was
        already returned, this waits briefly for the next one, so that two
        calls rarely yield the same sample (which gives no time to rate).
        `closed` holds the sockets that vanished from nettop's complete
        frames since the last call, with their final counters.
        """
        tick = self._next_tick(timeout=min(0.5 * self._interval, 1.0))
        with self._cond:
            closed, self._closed = self._closed, []
        mono, wall = now()
        if tick is None:
            return Snapshot(mono, wall, [], sample_interfaces(), closed)
        measured = tick.sample.received_at if tick.sample.received_at is not None else mono
        sockets = tick.sockets
        if closed:
            # A key is never both open and closed in one snapshot (the same
            # addresses reused by a new socket): the new one shows next time.
            gone = {c.key for c in closed}
            sockets = [s for s in sockets if s.key not in gone]
        return Snapshot(
            monotonic=measured,
            wall=wall - (mono - measured),
            sockets=sockets,
            interfaces=tick.interfaces,
            closed=closed,
        )

    def status(self) -> BackendStatus:
        with self._cond:
            tick = self._tick
        complete = tick is None or all(f.pid is not None for f in tick.sample.flows)
        return BackendStatus(
            privileged=is_root(),
            attribution_complete=complete,
            warnings=self._runner.warnings(),
            effective_interval=self._runner.effective_interval,
        )

    def close(self) -> None:
        """Terminate nettop and stop the reader. The backend can't restart."""
        self._runner.stop()

    def discard_pending(self) -> None:
        """Monitoring is stopped: closes seen meanwhile are not counted."""
        with self._cond:
            self._closed = []

    # -- extras -------------------------------------------------------------

    def set_interval(self, interval: float) -> None:
        """A new sampling interval; nettop is restarted if its -s changes."""
        self._runner.set_interval(interval)
        self._interval = _check_interval(interval)

    @property
    def effective_interval(self) -> float:
        """The interval nettop samples at: whole seconds (see interval_note)."""
        return self._runner.effective_interval

    def wait_for_sample(self, timeout: float) -> bool:
        """Wait until nettop has delivered a sample; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._tick is not None, timeout)

    @property
    def nettop_pid(self) -> int | None:
        """pid of the running nettop, or None."""
        return self._runner.pid

    @property
    def nettop_exits(self) -> int:
        """How many times nettop exited (or hung) unasked and was restarted."""
        return self._runner.exits

    @property
    def nettop_hangs(self) -> int:
        """How many times nettop hung and was killed."""
        return self._runner.hangs

    # -- internals ----------------------------------------------------------

    def _on_sample(self, sample: NettopSample, run: int, replaces: bool) -> None:
        # Runs in the reader thread. Interface counters are read now, with
        # the sample, so both keep the same spacing in time: rates from
        # either are right whenever sample() happens to be called.
        interfaces = sample_interfaces()
        if run != self._run:
            self._accounting.new_run()
            self._run = run
        sockets = self._accounting.frame(sample, self._sockets(sample), replaces=replaces)
        closed = self._accounting.take_closed()
        with self._cond:
            self._seq += 1
            self._tick = _Tick(sample, sockets, interfaces, self._seq)
            if closed:
                self._closed.extend(closed)
                del self._closed[:-MAX_PENDING_CLOSED]
            self._cond.notify_all()

    def _next_tick(self, timeout: float) -> _Tick | None:
        with self._cond:
            if self._tick is not None and self._tick.seq == self._returned_seq:
                self._cond.wait_for(lambda: self._tick is None or self._tick.seq != self._returned_seq, timeout)
            if self._tick is not None:
                self._returned_seq = self._tick.seq
            return self._tick

    def _sockets(self, sample: NettopSample) -> list[SocketSample]:
        """One SocketSample per flow, raw counters, names from psutil."""
        found: dict[int, tuple[str | None, str | None]] = {}

        def identify(pid: int | None, nettop_name: str | None) -> tuple[str | None, str | None]:
            if pid is None:
                return nettop_name, None
            if pid not in found:
                found[pid] = self._identify(pid, nettop_name)
            return found[pid]

        sockets = sockets_from_sample(sample, identify)
        self._procs.forget_missing(set(found))
        return sockets

    def _identify(self, pid: int, nettop_name: str | None) -> tuple[str | None, str | None]:
        """(name, user) for a pid nettop reported.

        psutil's name is preferred because nettop truncates names ("Google
        Chrome H"), but only when the two agree on the common part: if they
        don't, the pid has been reused since nettop's sample, and psutil is
        describing another process, so its user is not ours either.
        """
        name, user = self._procs.lookup(pid)
        if nettop_name is None:
            return name, user
        if name is None:
            return nettop_name, None
        if name.startswith(nettop_name) or nettop_name.startswith(name):
            return (name if len(name) >= len(nettop_name) else nettop_name), user
        return nettop_name, None
