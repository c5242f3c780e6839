"""Root mode's view of one tick: the probe's maps, read once, looked up by socket cookie.

The Linux backend calls, per tick, after its sock_diag dumps and destroy events:

    refresh()                 reads both maps (batch lookups);
    owner(cookie)             who created / connected / listened for the socket;
    udp_bytes(cookie)         payload bytes (sent, received) of a UDP socket;
    closed_udp(live)          final counts of UDP sockets whose file was closed
                              and that no dump lists any more;
    finish_tick(live, ended)  deletes what was read for the last time.

Map hygiene (the maps are bounded LRU maps in the kernel, 65,536 entries):
  * an owner entry is deleted once its TCP socket's destroy event has been
    handled (`ended`), or once its file was closed (RELEASED) and no dump
    lists the socket; such owners are kept here for OWNER_GRACE_TICKS more
    ticks, for destroy events that arrive late (they are asynchronous);
  * a UDP entry is deleted after closed_udp() reported its final counts.
A map that reaches FULL_FRACTION of its capacity is evicting entries it still
needs: `warnings()` says so (and the log, once per episode).

UDP counters restart at 0 when the kernel evicted an entry and recreated it
(LRU): a count lower than the last one read is added to what was read before,
so the row's counters never go backwards.
"""

from __future__ import annotations

import logging
from typing import Iterable

from .loader import OWNERS_CAPACITY, RELEASED, UDP_CAPACITY, Owner, Probe, UdpCounts, owner_from_record

log = logging.getLogger(__name__)

#: Ticks an owner stays known after its entry left the map (late destroy events).
OWNER_GRACE_TICKS = 3
#: Share of a map's capacity at which it is reported full.
FULL_FRACTION = 0.95


class EbpfAttribution:
    """Joins the probe's maps with the backend's dumps, by cookie."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe
        # cookie -> raw owner record (Probe.owner_records): made an Owner
        # only when looked up, which few sockets of a tick are.
        self._owners: dict[int, tuple] = {}
        self._udp: dict[int, UdpCounts] = {}
        # Owners whose map entry was deleted, newest tick first.
        self._gone_owners: list[dict[int, tuple]] = []
        # cookie -> (last sent, last received, added sent, added received)
        self._udp_seen: dict[int, tuple[int, int, int, int]] = {}
        self._udp_reported_closed: list[int] = []
        self._full: set[str] = set()
        self.read_errors = 0

    def refresh(self) -> None:
        """Read both maps; a failed read keeps the previous tick's view (logged)."""
        try:
            self._owners = self._probe.owner_records()
            self._udp = self._probe.udp_counts()
        except OSError as exc:
            self.read_errors += 1
            log.warning("reading the eBPF maps failed (%s): this tick uses the previous view", exc)
            return
        self._check_full("owners", len(self._owners), OWNERS_CAPACITY)
        self._check_full("udp_counts", len(self._udp), UDP_CAPACITY)

    def _check_full(self, name: str, size: int, capacity: int) -> None:
        if size >= FULL_FRACTION * capacity:
            if name not in self._full:
                log.warning("eBPF map %s is full (%d of %d entries): the kernel evicts the least "
                            "recently used", name, size, capacity)
            self._full.add(name)
        else:
            self._full.discard(name)

    # -- lookups -----------------------------------------------------------------------------------
    def owner(self, cookie: int) -> Owner | None:
        record = self._owners.get(cookie)
        if record is None:
            for gone in self._gone_owners:
                record = gone.get(cookie)
                if record is not None:
                    break
            else:
                return None
        return owner_from_record(record)

    def udp_bytes(self, cookie: int) -> tuple[int, int]:
        """(sent, received) payload bytes since the daemon started; (0, 0) if none moved."""
        counts = self._udp.get(cookie)
        if counts is None:
            seen = self._udp_seen.get(cookie)
            return (seen[0] + seen[2], seen[1] + seen[3]) if seen else (0, 0)
        return self._monotonic(cookie, counts.bytes_sent, counts.bytes_received)

    def _monotonic(self, cookie: int, sent: int, received: int) -> tuple[int, int]:
        last = self._udp_seen.get(cookie)
        if last is None:
            self._udp_seen[cookie] = (sent, received, 0, 0)
            return sent, received
        last_sent, last_received, added_sent, added_received = last
        if sent < last_sent or received < last_received:  # evicted, then recreated from 0
            added_sent += last_sent
            added_received += last_received
        if (sent, received) != (last_sent, last_received):
            self._udp_seen[cookie] = (sent, received, added_sent, added_received)
        return sent + added_sent, received + added_received

    def closed_udp(self, live: set[int]) -> list[tuple[int, UdpCounts, tuple[int, int]]]:
        """(cookie, counts, (sent, received)) of UDP sockets closed since the last tick.

        Their entries are deleted at finish_tick(): these are their final counts.
        """
        out = []
        for cookie, counts in self._udp.items():
            if counts.released and cookie not in live:
                out.append((cookie, counts, self._monotonic(cookie, counts.bytes_sent, counts.bytes_received)))
        self._udp_reported_closed = [cookie for cookie, _, _ in out]
        return out

    # -- hygiene ---------------------------------------------------------------------------------------
    def finish_tick(self, live: set[int], ended: Iterable[int]) -> None:
        """Delete the entries read for the last time (see the module docstring)."""
        ended = set(ended)
        done = {cookie: record for cookie, record in self._owners.items()
                if cookie in ended or (record[2] & RELEASED and cookie not in live)}
        if done:
            self._probe.delete_owners(done)
        self._gone_owners.insert(0, done)
        del self._gone_owners[OWNER_GRACE_TICKS:]
        if self._udp_reported_closed:
            self._probe.delete_udp(self._udp_reported_closed)
            for cookie in self._udp_reported_closed:
                self._udp_seen.pop(cookie, None)
                self._udp.pop(cookie, None)
            self._udp_reported_closed = []
        # Sockets the kernel evicted from the map and no dump lists: forget their history.
        if len(self._udp_seen) > len(self._udp):
            for cookie in [c for c in self._udp_seen if c not in self._udp and c not in live]:
                del self._udp_seen[cookie]

    def discard_released(self) -> None:
        """While monitoring is paused: forget UDP sockets closed meanwhile.

        Their datagrams moved while nothing was counted, like the TCP destroy
        events the backend drops then; without this, the first tick after
        `start` would report them as closed rows with all their bytes.
        """
        try:
            released = [cookie for cookie, counts in self._probe.udp_counts().items() if counts.released]
        except OSError as exc:
            log.warning("reading the eBPF UDP map failed (%s)", exc)
            return
        if released:
            self._probe.delete_udp(released)
            for cookie in released:
                self._udp_seen.pop(cookie, None)
                self._udp.pop(cookie, None)

    def warnings(self) -> list[str]:
        out = []
        if self.read_errors:
            out.append(f"reading the eBPF maps failed {self.read_errors} times: those ticks used the "
                       "previous owners and UDP counts (see the log)")
        if "owners" in self._full:
            out.append(f"eBPF owner map full ({OWNERS_CAPACITY} sockets): the oldest entries are evicted, "
                       "some short connections may be shown without process")
        if "udp_counts" in self._full:
            out.append(f"eBPF UDP counter map full ({UDP_CAPACITY} sockets): evicted sockets restart from "
                       "their last count, datagrams of a socket evicted and closed between ticks are lost")
        return out

    def close(self) -> None:
        self._probe.close()
