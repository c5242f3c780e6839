"""From nettop's raw counters to the counters netmon reports: pure, no I/O.

nettop (logging mode, no -d) prints, each frame, every socket's kernel
counters since the socket's birth, and each process's totals. Taken as
they are, they are wrong for netmon in four ways; this module fixes each,
frame by frame, and is fed by darwin.py (tests feed it recorded frames).

1. Count from the first frame. A connection that was open when netmond
   started would otherwise be counted since its birth: the first minutes
   of "since start" totals would carry the machine's whole history
   (e.g. an apsd connection at 3,177,530 / 7,189,392 bytes in the first
   frame that moved 170 / 208 bytes in the next two). So the sockets of
   the first frame report 0 and grow from there; a socket first seen
   later is new and all its bytes count, as with the Linux backend. A
   socket's reported counters are therefore "bytes since netmon saw it".

2. Survive a nettop restart. A socket that the previous nettop run
   listed continues: same key, same counters. Whether a new nettop counts
   a socket from its birth (xnu's ntstat.c reads the socket's own
   inp_stat counters, so it should) or from when it first saw it, the
   sources don't settle, so both are handled: counters at or above the
   last ones continue by difference; counters below them, in the first
   frames of a new run, continue from zero. Within one run, counters that
   go down mean a new socket with the same addresses: it gets a new key
   (a generation suffix) and the old one is reported closed.

3. Payload, not retransmissions. In xnu's tcp_output.c a retransmitted
   segment's payload is added both to the socket's txbytes and to
   t_stat.txretransmitbytes (exported as nstat_txbytes and
   nstat_txretransmit, nettop's bytes_out and re-tx); in tcp_input.c
   duplicate data is added to rxbytes and to rxduplicatebytes (rx_dupe).
   netmon reports bytes_sent = bytes_out - re-tx and bytes_received =
   bytes_in - rx_dupe, as deltas per frame. re-tx and rx_dupe are 32-bit
   counters in xnu (u_int32_t nstat_txretransmit and nstat_rxduplicatebytes
   in bsd/net/ntstat.h's nstat_counts, from tcpcb's t_stat), so they wrap:
   a delta is taken modulo 2**32. Out-of-order data (rx_ooo) is added to
   rxbytes once, on arrival, so nothing is taken off for it. Where the
   columns are absent (`-J` without them, UDP rows), nothing is subtracted.

4. Bytes of connections that closed. nettop has no close events, and a
   socket row vanishes with its last interval of bytes. A long-lived
   `-L 0` stream keeps counting closed sockets in the process row
   (deg/beads-utils: a process kept 20.03 MB on its process line once
   the connection line of a 20 MB download was gone; Ffinnis/OpenActivity
   relies on the same), while another source says per-process figures
   sum only open sockets. So: when a process's row grew more than the sum
   of its socket rows, and some of its sockets vanished in that frame,
   the difference is those sockets' last bytes, split among them by size
   (as beads-utils does) and reported with their close. If the process
   row does not keep closed sockets, the difference is never positive and
   nothing is added: both cases come out right. Guarded: a pid whose name
   changes (reused) or whose totals go down starts over, without
   recovering anything. Bytes of connections that opened and closed
   between two frames with no vanished row to carry them stay
   unattributed (they are in the interface totals).

Frames and closes: a frame may arrive in two parts (nettop stalled
mid-burst; darwin.py publishes the first part, then the merged whole),
so a socket missing from the latest frame is carried (still listed, with
its last counters) until the frame is known complete, which is when the
next one starts. Only then is it reported closed, with its final counters:
a stall never closes and reopens anything, and a restart closes nothing.
A socket whose row comes back within RECENT_FRAMES frames (left out of a
frame, or missing from a restarted nettop's first one) is the same socket:
it reappears under a new key (it was reported closed) and counts only
what it moved since, so no byte is counted twice.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Hashable, Sequence, cast

from .base import SocketSample
from .nettop_parser import NettopFlow, NettopSample

#: re-tx and rx_dupe are u_int32_t in xnu: deltas are taken modulo this.
WRAP32 = 1 << 32
#: How many frames a vanished socket is remembered (see _recent).
RECENT_FRAMES = 3
#: Closed sockets kept for the next sample() at most (bounds memory when
#: no one takes them, e.g. a stalled consumer).
MAX_PENDING_CLOSED = 50_000


def wrapped_delta(new: int | None, old: int | None) -> int:
    """Growth of a 32-bit counter from `old` to `new` (0 if either is unknown)."""
    if new is None or old is None:
        return 0
    return (new - old) % WRAP32


def payload_delta(raw_new: int, raw_old: int, extra_new: int | None, extra_old: int | None) -> int:
    """Growth of bytes_out minus re-tx (or bytes_in minus rx_dupe), never < 0."""
    return max(0, (raw_new - raw_old) - wrapped_delta(extra_new, extra_old))


def payload(raw: int | None, extra: int | None) -> int | None:
    """bytes_out - re-tx (bytes_in - rx_dupe) of a socket seen for the first time."""
    if raw is None:
        return None
    return max(0, raw - (extra or 0))


@dataclass(slots=True)
class _Track:
    """One socket as netmon last reported it."""

    key: Hashable  # the key reported (base key + generation suffix)
    generation: int
    pid: int | None
    run: int  # the nettop run that printed `flow`
    flow: NettopFlow  # the raw row last seen
    sample: SocketSample  # what was reported for it


@dataclass(slots=True)
class _Process:
    """A process row and the sum of its socket rows, in one frame."""

    name: str
    run: int
    frame: int
    total_in: int | None
    total_out: int | None
    flows_in: int
    flows_out: int


@dataclass(slots=True)
class _Frame:
    """The latest frame, worked out against the committed state."""

    number: int
    run: int
    tracks: dict[Hashable, _Track]  # by base key
    processes: dict[int, _Process]
    replaced: list[_Track]  # old sockets whose key a new socket took


class NettopAccounting:
    """Turns successive nettop frames into reported sockets and closes.

    Not thread-safe: darwin.py calls it from its reader thread only, and
    takes results under its own lock.
    """

    def __init__(self) -> None:
        self._committed: dict[Hashable, _Track] = {}
        self._processes: dict[int, _Process] = {}
        self._current: _Frame | None = None
        self._run = 0
        self._frames = 0
        self._baseline_done = False
        self._closed: deque[SocketSample] = deque()
        # Sockets closed in the last RECENT_FRAMES frames, by base key, with
        # the frame that closed them: a row nettop left out of a frame or
        # two comes back as the same socket, not as a new one counted in full.
        self._recent: dict[Hashable, tuple[_Track, int]] = {}
        # Keys of the latest frame's replaced sockets already reported closed.
        self._replaced_pushed: set[Hashable] = set()
        #: Closed sockets dropped because nobody took them in time.
        self.closed_dropped = 0
        #: Bytes recovered from process rows for closing sockets, in, out.
        self.recovered_in = 0
        self.recovered_out = 0

    # -- input ------------------------------------------------------------

    def new_run(self) -> None:
        """A new nettop was started. Its predecessor's last frame may have
        been cut short, so nothing missing from it is closed."""
        if self._current is not None:
            self._commit(self._current, close_missing=False)
            self._current = None
        self._run += 1

    def frame(
        self, sample: NettopSample, sockets: Sequence[SocketSample], *, replaces: bool = False
    ) -> list[SocketSample]:
        """The sockets to report for a frame.

        `sockets` are sockets_from_sample(sample) (one per flow, in order:
        their keys and names). `replaces`: this is the latest frame again,
        completed by its continuation (the first part was given before).
        A new frame means the previous one was complete: its missing
        sockets are closed now (see take_closed()).
        """
        if len(sockets) != len(sample.flows):
            raise ValueError("one SocketSample per flow, in order")
        # (The SocketSamples are filled in and handed out: pass fresh ones.)
        if self._current is not None and not replaces:
            self._commit(self._current, close_missing=True)
            self._current = None
        if not replaces or self._current is None:
            self._frames += 1
        frame = self._work_out(sample, sockets, self._frames)
        self._current = frame
        # A socket whose key a new one took is closed now, not when the frame
        # is complete: its row is gone from this very frame's sockets.
        for track in frame.replaced:
            if track.key not in self._replaced_pushed:
                self._replaced_pushed.add(track.key)
                self._push_closed(track.sample)
        out = [t.sample for t in frame.tracks.values()]
        # Not in this frame (yet): still listed until the frame is complete.
        out += [t.sample for k, t in self._committed.items() if k not in frame.tracks]
        return out

    def take_closed(self) -> list[SocketSample]:
        """Sockets closed since the last call, with their final counters."""
        closed = list(self._closed)
        self._closed.clear()
        return closed

    def discard_closed(self) -> None:
        self._closed.clear()

    # -- internals --------------------------------------------------------

    def _work_out(self, sample: NettopSample, sockets: Sequence[SocketSample], number: int) -> _Frame:
        tracks: dict[Hashable, _Track] = {}
        replaced: list[_Track] = []
        baseline = not self._baseline_done
        for flow, base in zip(sample.flows, sockets):
            old = self._committed.get(base.key)
            sent = received = None
            generation = 0
            if old is not None and old.pid == flow.pid:
                continued = self._continue(old, flow)
                if continued is not None:
                    sent, received = continued
                    generation = old.generation
                else:  # the same addresses, a new socket
                    replaced.append(old)
                    generation = old.generation + 1
                    old = None
            elif old is not None:  # another process: a new socket
                replaced.append(old)
                generation = old.generation + 1
                old = None
            revived = None
            if old is None and base.key in self._recent:
                gone = self._recent[base.key][0]
                revived = self._revive(gone, flow)
                # Either way not the key just reported closed.
                generation = max(generation, gone.generation + 1)
            if revived is not None:
                # Back after a frame or two without its row: the same socket.
                # It was reported closed, so it comes back under a new key,
                # counting only what it moved since its last counters.
                generation, sent, received = revived
            elif old is None:
                if baseline:
                    sent = 0 if flow.bytes_out is not None else None
                    received = 0 if flow.bytes_in is not None else None
                else:
                    sent = payload(flow.bytes_out, flow.retransmitted)
                    received = payload(flow.bytes_in, flow.duplicate_in)
            base_key = base.key
            if old is not None and _unchanged(old.sample, base, sent, received):
                # The very object handed out last time: state.py then skips
                # the socket cheaply (nothing moved).
                reported = old.sample
            else:
                # `base` is ours until returned: filled in, not copied (cheap
                # at thousands of sockets a frame).
                if generation:
                    base.key = (*cast(tuple, base_key), f"#{generation}")  # nettop keys are tuples
                base.bytes_sent, base.bytes_received = sent, received
                reported = base
            tracks[base_key] = _Track(reported.key, generation, flow.pid, self._run, flow, reported)
        return _Frame(number, self._run, tracks, self._process_rows(sample, number), replaced)

    def _continue(self, old: _Track, flow: NettopFlow) -> tuple[int | None, int | None] | None:
        """(sent, received) for a socket seen before; None if it is a new one."""
        prev = old.flow
        went_down = _lower(flow.bytes_out, prev.bytes_out) or _lower(flow.bytes_in, prev.bytes_in)
        if went_down and old.run == self._run:
            return None  # within one run, counters only grow: a new socket
        if went_down:
            # A new nettop counting from zero (or a new socket: the same
            # bytes either way): everything it shows is new.
            prev = dataclasses.replace(
                prev, bytes_in=0, bytes_out=0,
                retransmitted=0 if prev.retransmitted is not None else None,
                duplicate_in=0 if prev.duplicate_in is not None else None,
            )
        return (
            _grow(old.sample.bytes_sent, flow.bytes_out, prev.bytes_out, flow.retransmitted, prev.retransmitted),
            _grow(old.sample.bytes_received, flow.bytes_in, prev.bytes_in, flow.duplicate_in, prev.duplicate_in),
        )

    def _revive(self, gone: _Track, flow: NettopFlow) -> tuple[int, int | None, int | None] | None:
        """(generation, sent, received) if `flow` is the socket `gone` was
        (a row missing from a frame or two), else None."""
        if gone.pid != flow.pid:
            return None
        continued = self._continue(gone, flow)
        if continued is None:
            return None
        sent, received = continued
        return (
            gone.generation + 1,
            None if sent is None else sent - (gone.sample.bytes_sent or 0),
            None if received is None else received - (gone.sample.bytes_received or 0),
        )

    def _process_rows(self, sample: NettopSample, number: int) -> dict[int, _Process]:
        flows_in: dict[int, int] = {}
        flows_out: dict[int, int] = {}
        for flow in sample.flows:
            if flow.pid is None:
                continue
            flows_in[flow.pid] = flows_in.get(flow.pid, 0) + (flow.bytes_in or 0)
            flows_out[flow.pid] = flows_out.get(flow.pid, 0) + (flow.bytes_out or 0)
        return {
            p.pid: _Process(
                p.name, self._run, number, p.bytes_in, p.bytes_out,
                flows_in.get(p.pid, 0), flows_out.get(p.pid, 0),
            )
            for p in sample.processes
        }

    def _commit(self, frame: _Frame, close_missing: bool) -> None:
        """The frame is complete (or its run is over): make it the base."""
        closing: list[_Track] = []  # (frame.replaced went out at once)
        self._replaced_pushed.clear()
        if close_missing:
            gone = [(k, t) for k, t in self._committed.items() if k not in frame.tracks]
            closing += self._with_recovered_bytes([t for _, t in gone], frame)
            self._committed = dict(frame.tracks)
            # Remembered a little while, in case the row was only missing.
            self._recent = {
                k: v for k, v in self._recent.items()
                if k not in frame.tracks and frame.number - v[1] < RECENT_FRAMES
            }
            for k, t in gone:
                self._recent[k] = (t, frame.number)
        else:
            self._committed.update(frame.tracks)
        for track in closing:
            self._push_closed(track.sample)
        self._processes = frame.processes
        self._baseline_done = True

    def _with_recovered_bytes(self, gone: list[_Track], frame: _Frame) -> list[_Track]:
        """The vanished sockets, each with its share of what its process row
        grew beyond the sum of its socket rows (see point 4 above)."""
        by_pid: dict[int, list[_Track]] = {}
        for track in gone:
            if track.pid is not None:
                by_pid.setdefault(track.pid, []).append(track)
        for pid, tracks in by_pid.items():
            before = self._processes.get(pid)
            now = frame.processes.get(pid)
            if (
                before is None
                or now is None
                or before.name != now.name  # pid reused
                or before.run != now.run
                or before.frame != frame.number - 1
                or any(t.run != now.run for t in tracks)
            ):
                continue
            for direction in ("in", "out"):
                extra = _unexplained_growth(before, now, direction)
                if extra is None:
                    continue
                extra -= sum(_raw(t.flow, direction) or 0 for t in tracks)
                if extra <= 0:
                    continue  # the process row sums open sockets only
                shares = _split(extra, [_raw(t.flow, direction) or 0 for t in tracks])
                for track, share in zip(tracks, shares):
                    field = "bytes_received" if direction == "in" else "bytes_sent"
                    value = getattr(track.sample, field)
                    if value is None:
                        continue
                    track.sample = dataclasses.replace(track.sample, **{field: value + share})
                    # As if its row had shown the bytes (for a row that comes back).
                    raw_field = "bytes_in" if direction == "in" else "bytes_out"
                    raw = getattr(track.flow, raw_field)
                    if raw is not None:
                        track.flow = dataclasses.replace(track.flow, **{raw_field: raw + share})
                if direction == "in":
                    self.recovered_in += extra
                else:
                    self.recovered_out += extra
        return gone

    def _push_closed(self, sample: SocketSample) -> None:
        if len(self._closed) >= MAX_PENDING_CLOSED:
            self._closed.popleft()
            self.closed_dropped += 1
        self._closed.append(sample)


def _unchanged(old: SocketSample, new: SocketSample, sent: int | None, received: int | None) -> bool:
    """Nothing to report anew: same counters, state and owner."""
    return (
        old.bytes_sent == sent
        and old.bytes_received == received
        and old.state == new.state
        and old.pid == new.pid
        and old.process_name == new.process_name
        and old.user == new.user
    )


def _lower(new: int | None, old: int | None) -> bool:
    return new is not None and old is not None and new < old


def _grow(
    reported: int | None, raw: int | None, raw_old: int | None, extra: int | None, extra_old: int | None
) -> int | None:
    """The reported counter advanced by one frame's payload growth."""
    if raw is None:
        return reported
    if raw_old is None or reported is None:
        # Counters appear where there were none (a listener's row reused):
        # from here on, as from a first frame.
        return reported if reported is not None else 0
    return reported + payload_delta(raw, raw_old, extra, extra_old)


def _raw(flow: NettopFlow, direction: str) -> int | None:
    return flow.bytes_in if direction == "in" else flow.bytes_out


def _unexplained_growth(before: _Process, now: _Process, direction: str) -> int | None:
    """How much more the process row grew than its socket rows; None if
    unknown or if the process's totals went down (they should not)."""
    total_before = before.total_in if direction == "in" else before.total_out
    total_now = now.total_in if direction == "in" else now.total_out
    if total_before is None or total_now is None or total_now < total_before:
        return None
    flows_before = before.flows_in if direction == "in" else before.flows_out
    flows_now = now.flows_in if direction == "in" else now.flows_out
    return (total_now - flows_now) - (total_before - flows_before)


def _split(amount: int, weights: list[int]) -> list[int]:
    """`amount` split by `weights` (evenly if they are all 0); sums exactly."""
    if not weights:
        return []
    total = sum(weights)
    if total <= 0:
        weights, total = [1] * len(weights), len(weights)
    shares = [amount * w // total for w in weights]
    largest = max(range(len(weights)), key=lambda i: weights[i])
    shares[largest] += amount - sum(shares)
    return shares
