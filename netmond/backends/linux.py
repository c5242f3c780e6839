"""The Linux backend: kernel byte counters for every TCP socket, without root.

Per tick (`sample()`):
  1. one NETLINK_SOCK_DIAG dump of every TCP socket, IPv4 and IPv6 at once
     (TCPDIAG_GETSOCK; one per family on a kernel that refuses it), asking
     for tcp_info, and one per family for UDP (sockets only: the kernel keeps
     no UDP byte counters, so their bytes are None);
  2. socket inode -> pid from /proc/PID/fd (`procfd.SocketOwners`), process
     name and user per pid (`procinfo.ProcessCache`);
  3. the TCP destroy events received since the previous tick (`sockdiag.
     DestroyListener`, drained continuously by its own thread) become
     `Snapshot.closed`, with the final counters of each socket;
  4. interface totals (`interfaces.sample_interfaces`).

What the counters mean (payload acknowledged by the peer / received, SYN and
FIN not counted) and how tcp_info is corrected for it: see `tcpbytes.py`.

Cost: most sockets are idle at any given second. A TCP socket whose
signature is that of the previous dump (same kernel cookie, state, uid,
inode, counters: netlink.RawRecords) comes back from the parser as that very
record object, undecoded, and if its owner is unchanged too it is handed on
as last tick's SocketSample (kept with the parser's entry: `_BUILT_FROM`),
which MonitorState skips. So an idle socket costs one unpack, one byte-string
comparison and a few lookups in C, and leaves nothing new alive for the
garbage collector (bench/tick.py measures it). TIME_WAIT remnants are listed on one
tick in TIMEWAIT_DUMP_EVERY_TICKS (a state filter leaves them out of the
others, in the kernel), and each is looked at once (`_Remnant`): between,
their rows are handed on (bench/timewait.py measures it).

Keys (`SocketSample.key`): the kernel's socket cookie itself (an int),
which the dump and the destroy event both carry (idiag_cookie) and which no
other socket, TCP or UDP, gets in the same boot. An int, not a tuple with
the protocol: nothing to build or keep, and the cheapest key to hash for
every table that holds a row per socket. A 4-tuple used again (a client
port reused, SO_REUSEADDR) is another socket, so another row with its own
bytes and its own close. The cookie is made when first asked for (a dump or
the destroy event); the TIME_WAIT remnant copies the socket's, which is 0
for a socket never dumped: such a remnant gets a cookie of its own, so
remnants are matched to their destroy event by 4-tuple (below). Checked on
Linux 6.18 (tests/integration/test_linux_backend.py).

Closed connections (decisions):
  * A connection's row ends at its destroy event, with its final counters.
    The kernel frees the full socket when it enters TIME_WAIT and keeps a
    small "timewait" socket (inode 0, no tcp_info) on the same 5-tuple for
    60 s; later dumps list it. Such a remnant is NOT reported again when its
    4-tuple was reported destroyed in the last 65 to 130 seconds
    (`RecentKeys`): by 4-tuple, because a socket that was never dumped had
    no cookie yet when the kernel made its remnant, which then gets one of
    its own. A remnant listed before its socket's destroy event arrived is a
    row already: the event ends that row.
    TIME_WAIT sockets with no destroy event seen (closed before the daemon
    started, or the event was lost) are reported as TIME_WAIT, counters None,
    with the owner the latest dumps knew for their cookie when first listed
    (never looked up again). Their rows appear and go up to
    TIMEWAIT_DUMP_EVERY_TICKS ticks (at most TIMEWAIT_DUMP_EVERY_SECONDS)
    late; after destroy events were lost the next dump lists them at once.
  * Destroy events are ignored for sockets without a remote end (listeners;
    a socket aborted with SO_LINGER 0 also arrives so, with its counters
    zeroed by the kernel) and for sockets that never reached ESTABLISHED and
    moved nothing (bytes_acked and bytes_received both 0: failed connects).
  * A closed socket's pid/process come from the last dumps that listed it.
    One that lived shorter than a tick (never in a dump) and was accepted
    (the passive side, see tcpbytes.opened_actively) is its listener's: the
    listener of its local address and port in the latest dumps, whose owner
    the dump knows. Several listeners there (SO_REUSEPORT) or one held by
    several processes (prefork): their common name, pid None; different
    names: unknown. A client socket that lived shorter than a tick has pid
    and process None: the event carries no inode and no pid (its owner's
    uid is known: `user` is filled from it). Final counters are never lower
    than what earlier dumps showed.
  * A key reported in `closed` is never also in `sockets` of the same
    snapshot (a dump may list a socket that is destroyed a moment later).

Owners: a socket closed by its process (or whose process exited) stays
listed, without inode, until the kernel frees it; it keeps the pid seen
before. Without root, other users' /proc/PID/fd cannot be read: their sockets
keep their counters with pid None (user: the socket's uid, which the kernel
reports), and `status()` says so.

Root mode (eBPF, `ebpf/`): when netmond may load BPF programs (root or
CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN, libbpf.so.1, cgroup v2), the kernel
records the owner of every socket as it is created, connected or accepted,
and counts UDP payload bytes per socket. Joined by socket cookie (the
`cookie` of dumps and destroy events):
  * a socket whose owner the /proc scan does not know (it lived shorter than
    a tick, or has no file yet) gets the eBPF owner: an accepted socket its
    listener's, any other the process that created or connected it; a
    process that already exited is named by its kernel comm;
  * UDP rows get bytes_sent/bytes_received (payload, since the daemon
    started; `counters: "ebpf"`), and a UDP socket closed between two ticks
    becomes a closed row with its final counts.
Without it (or with `ebpf=False`) everything above works as before; `status`
says which mode runs and why (`root_mode`).

Failures: a dump the kernel refuses at start() (no IPv6, no udp_diag) is
dropped with a warning; a dump failing later is retried once, then sample()
raises, so that the daemon skips the tick rather than see every socket close.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from itertools import chain, compress, repeat
from operator import attrgetter, eq, is_not, itemgetter, not_, or_
from typing import Hashable, Iterable, NamedTuple, Sequence

from common.models import classify_scope

from .base import Backend, BackendStatus, Snapshot, SocketSample, is_root, now
from .ebpf.attribution import EbpfAttribution
from .interfaces import sample_interfaces
from .netlink import (
    ALL_STATES_MASK,
    CALLER_FIELDS,
    INET_DIAG_EXT_INFO,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    TCP_STATES,
    TCP_SYN_RECV,
    TCP_TIME_WAIT,
    UNSPECIFIED_ADDR,
    AddressFormatter,
    DiagSocket,
    RawRecords,
)
from .procfd import SocketOwners
from .procinfo import ProcessCache, UserNames
from .sockdiag import DestroyListener, SockDiagDumper
from .tcpbytes import opened_actively, payload, peer_fin_assumed

log = logging.getLogger(__name__)

#: A key reported destroyed hides its TIME_WAIT remnant for at least this
#: long: Linux keeps a timewait socket 60 s (TCP_TIMEWAIT_LEN) from the moment
#: the full socket is freed, which is when the destroy event is sent.
TIMEWAIT_HIDE_SECONDS = 65.0
#: Bound on the keys remembered per generation (2 generations): ~170 bytes a
#: key, so at most ~35 MB, reached only at > 1,500 closes/s sustained. Beyond
#: it some remnants show up again as TIME_WAIT rows without counters.
MAX_DESTROYED_KEYS_PER_GENERATION = 100_000
#: Dumps whose owner table is kept to attribute destroy events that arrive
#: after the socket already vanished from the dump (the event is delivered
#: asynchronously, by a kernel work queue then our reader thread).
OWNER_GENERATIONS = 3

_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
_TIMEWAIT_STATES = frozenset({TCP_TIME_WAIT, TCP_FIN_WAIT2})
_NO_BYTES = (None, None)
_KEY_OF = attrgetter("key")
#: (family, protocol, idiag_ext) of the dumps of a tick: TCP of both
#: families in one request where the kernel takes it (each TCP dump walks the
#: whole TCP hash table: ~1.2 ms on a host with 100 sockets), else one each.
_TCP_DUMP_BOTH = (socket.AF_UNSPEC, socket.IPPROTO_TCP, INET_DIAG_EXT_INFO)
_TCP_DUMPS = ((socket.AF_INET, socket.IPPROTO_TCP, INET_DIAG_EXT_INFO), (socket.AF_INET6, socket.IPPROTO_TCP, INET_DIAG_EXT_INFO))
_UDP_DUMPS = ((socket.AF_INET, socket.IPPROTO_UDP, 0), (socket.AF_INET6, socket.IPPROTO_UDP, 0))
#: TIME_WAIT remnants are dumped (and their rows refreshed) on one tick in
#: this many, or after this many seconds, whichever comes first; the other
#: ticks ask the kernel to leave them out (a state filter: they cost it next
#: to nothing) and hand on the remnant rows of the last dump that listed them.
#: A remnant carries no counters and lives 60 s: its row appears or goes at
#: most this late. FIN_WAIT2 remnants are dumped every tick (they become
#: TIME_WAIT ones).
TIMEWAIT_DUMP_EVERY_TICKS = 5
TIMEWAIT_DUMP_EVERY_SECONDS = 5.0
_WITHOUT_TIMEWAIT_MASK = ALL_STATES_MASK & ~(1 << TCP_TIME_WAIT)

class OwnerEntry(NamedTuple):
    """What the next ticks need to know about one connected TCP socket.

    side (True: opened actively, False: accepted, None: not known yet) is
    kept once known, so that the SYN correction of a socket changes at most
    once, upwards (see tcpbytes.py): a counter that went down would read as
    a new socket. The byte counts are a floor for the final ones of its
    destroy event (see _closed_samples).
    """

    pid: int | None
    process_name: str | None
    user: str | None
    side: bool | None
    bytes_sent: int | None
    bytes_received: int | None


#: Owner tables map each connected TCP key to its OwnerEntry.
OwnerTable = dict[Hashable, OwnerEntry]
_NO_OWNER = OwnerEntry(None, None, None, None, None, None)
#: Listening sockets of one dump: (family, raw local address, port) -> the
#: inode of each listener there (SO_REUSEPORT: several) -> its (pid,
#: process_name, user). By inode: an owner known at an earlier tick is this
#: very socket's, never that of another listener on the same address since.
ListenerTable = dict[tuple, dict[int, tuple]]
_NO_HOLDERS: dict[int, tuple] = {}


def netlink_available() -> bool:
    """True when this kernel answers NETLINK_SOCK_DIAG dumps (tiny test dump).

    The daemon's `--backend auto` uses it to pick this backend, or to fall
    back to the portable one (containers without netlink, non-Linux).
    """
    dumper = SockDiagDumper(timeout=2.0)
    try:
        dumper.dump(socket.AF_INET, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
        return True
    except OSError:
        return False
    finally:
        dumper.close()


class LinuxBackend(Backend):
    """inet_diag netlink + /proc inode index + TCP destroy events."""

    name = "linux"
    per_socket_bytes = True

    def __init__(
        self,
        proc_root: str = "/proc",
        destroy_listener: DestroyListener | None = None,
        dumper: SockDiagDumper | None = None,
        max_pending_events: int = 50_000,
        ebpf: bool = False,
    ) -> None:
        """`destroy_listener` (unstarted) and `dumper`: tests inject fakes.
        `ebpf`: use root mode when this machine allows it; the daemon passes
        its `ebpf` setting (default true), a bare backend has it off."""
        self._dumper = dumper or SockDiagDumper()
        self._destroy = destroy_listener or DestroyListener(max_pending=max_pending_events)
        self._destroy_error: str | None = None
        self._owners = SocketOwners(proc_root)
        self._procs = ProcessCache()
        self._addresses = AddressFormatter()
        # Owner tables of the latest dumps, newest first.
        self._owner_history: deque[OwnerTable] = deque(maxlen=OWNER_GENERATIONS)
        # Listeners of the latest dumps with their owners, newest first.
        self._listener_history: deque[ListenerTable] = deque(maxlen=OWNER_GENERATIONS)
        # 4-tuples (local_ip, local_port, remote_ip, remote_port) of recent
        # destroy events: their TIME_WAIT remnants are not rows again.
        self._destroyed = RecentKeys(TIMEWAIT_HIDE_SECONDS, MAX_DESTROYED_KEYS_PER_GENERATION)
        # TIME_WAIT/FIN_WAIT2 remnants of the latest dumps that listed them,
        # by cookie (see _Remnant), and the rows among them: handed on as they
        # are, and on the ticks that leave TIME_WAIT out of the dump. Kept in
        # place from dump to dump (see _forget_unlisted_remnants).
        self._remnants: dict[Hashable, _Remnant] = {}
        self._remnant_rows: dict[Hashable, SocketSample] = {}
        # Remnant rows by 4-tuple -> (remnant id, key); and those of the
        # remnants this tick's dump no longer listed: a destroy event arriving
        # after its remnant was listed ends that row.
        self._timewait_keys: dict[tuple, tuple] = {}
        self._timewait_before: dict[tuple, tuple] = {}
        self._rows_without_cookie: dict[Hashable, tuple] = {}  # remnant rows keyed by 4-tuple -> it
        self._ticks_without_timewait = TIMEWAIT_DUMP_EVERY_TICKS
        self._timewait_dumped_at = float("-inf")
        self._events_lost_seen = 0
        # Destroy events held back a tick for their loopback peer's, and the
        # last tick's reported ones (see _closes_to_report).
        self._held_closes: list[DiagSocket] = []
        self._ended_before: list[DiagSocket] = []
        # The (pid, process_name, user) of each pid that owned a socket at the last tick.
        self._last_owners: dict[int, tuple] = {}
        # The raw records of the latest TCP dump by kernel cookie, which the
        # next one returns again where unchanged; with each full socket's,
        # the sample built from it (see _BUILT_FROM), handed on while neither
        # the record nor the owner changes.
        self._tcp_records = RawRecords()
        self._dumps: list[tuple[int, int, int]] = [_TCP_DUMP_BOTH, *_UDP_DUMPS]
        self._dump_warnings: list[str] = []
        self._attribution_complete = True
        self._started = False
        self._ebpf_wanted = ebpf
        self._ebpf: EbpfAttribution | None = None
        self._ebpf_reason = "not started"

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        """Check which dumps this kernel supports and start the destroy-event reader."""
        self._started = True
        self._probe_dumps()
        self._start_root_mode()
        try:
            self._destroy.start()
        except OSError as exc:
            self._destroy_error = (
                f"TCP destroy events unavailable ({exc.strerror or exc}): connections that open and "
                "close between two samples are not counted"
            )
            log.warning("%s", self._destroy_error)

    def _probe_dumps(self) -> None:
        """Drop the dumps this kernel refuses (no IPv6, no udp_diag), with a warning.

        Once started, a failing dump makes sample() raise instead: returning
        fewer sockets would make every row of that kind look closed.
        """
        kept: list[tuple[int, int, int]] = []
        dumps = self._dumps
        if _TCP_DUMP_BOTH in dumps:
            try:
                self._dumper.dump(*_TCP_DUMP_BOTH, 1 << TCP_LISTEN)
            except OSError as exc:  # a kernel without the old request: one dump per family
                log.info("TCP sockets of both families in one dump refused (%s): one dump each", exc)
                dumps = [*_TCP_DUMPS, *(d for d in dumps if d != _TCP_DUMP_BOTH)]
            else:
                kept.append(_TCP_DUMP_BOTH)
                dumps = [d for d in dumps if d != _TCP_DUMP_BOTH]
        for family, protocol, ext in dumps:
            try:
                self._dumper.dump(family, protocol, ext, 1 << TCP_LISTEN)
                kept.append((family, protocol, ext))
            except OSError as exc:
                what = f"{'TCP' if protocol == socket.IPPROTO_TCP else 'UDP'} {_FAMILY_NAMES[family]}"
                self._dump_warnings.append(f"{what} sockets not listed: the kernel refused the dump ({exc})")
                log.warning("%s", self._dump_warnings[-1])
        self._dumps = kept

    def _start_root_mode(self) -> None:
        """Load the eBPF programs if wanted and possible; otherwise say why, once."""
        if not self._ebpf_wanted:
            self._ebpf_reason = "turned off (--no-ebpf / ebpf = false)"
            log.info("root mode (eBPF) %s", self._ebpf_reason)
            return
        try:
            from .ebpf.loader import EbpfUnavailable, Probe

            try:
                self._ebpf = EbpfAttribution(Probe.open())
            except EbpfUnavailable as exc:
                self._ebpf_reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - root mode is optional: never a crash
            self._ebpf_reason = f"loading the eBPF programs failed ({type(exc).__name__}: {exc})"
        if self._ebpf is not None:
            self._ebpf_reason = ("eBPF programs attached: every socket's process is recorded by the "
                                 "kernel, UDP bytes are counted")
            log.info("root mode on: %s", self._ebpf_reason)
        else:
            log.warning("%s", self._root_mode_off_warning())

    def _root_mode_off_warning(self) -> str:
        """Why root mode is off, and what that costs (said here only: the reason alone is status' root_mode)."""
        return (f"root mode (eBPF) off: {self._ebpf_reason}; connections shorter than a tick "
                "may be shown without process, UDP rows have no byte counters")

    def close(self) -> None:
        self._destroy.close()
        self._dumper.close()
        if self._ebpf is not None:
            self._ebpf.close()
            self._ebpf = None

    def discard_pending(self) -> None:
        self._destroy.take()
        if self._ebpf is not None:
            self._ebpf.discard_released()

    # -- the tick ----------------------------------------------------------------
    def sample(self) -> Snapshot:
        if not self._started:
            self.start()
        mono, wall = now()
        tcp: list[DiagSocket] = []
        udp: list[DiagSocket] = []
        # Remnants are listed at once after destroy events were lost: those of
        # the lost connections then continue their rows (same cookie).
        lost = self._destroy.events_lost
        with_timewait = (self._ticks_without_timewait + 1 >= TIMEWAIT_DUMP_EVERY_TICKS
                         or mono - self._timewait_dumped_at >= TIMEWAIT_DUMP_EVERY_SECONDS
                         or lost != self._events_lost_seen)
        self._events_lost_seen = lost
        tcp_states = ALL_STATES_MASK if with_timewait else _WITHOUT_TIMEWAIT_MASK
        for family, protocol, ext in self._dumps:
            if protocol == socket.IPPROTO_TCP:
                tcp += self._dump(family, protocol, ext, self._tcp_records, tcp_states)
        listed = self._tcp_records.rotate(tcp, every_state=with_timewait)
        if with_timewait:
            self._ticks_without_timewait, self._timewait_dumped_at = 0, mono
        else:
            self._ticks_without_timewait += 1
        # Interface counters right after the TCP counters: the closer the two
        # readings, the less a tick sees sockets move more than interfaces.
        interfaces = sample_interfaces()
        for family, protocol, ext in self._dumps:
            if protocol == socket.IPPROTO_UDP:
                udp += self._dump(family, protocol, ext)
        # Taken after the dumps, so that a socket destroyed just after the
        # dump listed it is reported closed, not open (its key is removed
        # from `sockets` below).
        events = self._destroy.take()
        # Their TIME_WAIT remnants, which this very dump may list, are hidden.
        self._remember_destroyed(events, mono)
        ebpf = self._ebpf
        if ebpf is not None:
            ebpf.refresh()  # after the dumps: every socket they list is in the maps

        self._owners.refresh(list(filter(None, map(_INODE_OF_RECORD, chain(tcp, udp)))))
        reattributed, self._owners.changed = self._owners.changed, set()
        self._attribution_complete = is_root() or self._only_own_sockets(tcp, udp)

        owner_of = _OwnerLookup(self._procs, self._owners)
        owner_table: OwnerTable = {}
        listeners: ListenerTable = {}
        owners_as_before = ebpf is None and self._owners_as_before(owner_of)
        sockets = self._tcp_samples(tcp, owner_of, owner_table, listeners, with_timewait, owners_as_before,
                                    reattributed, listed)
        sockets += self._udp_samples(udp, owner_of)
        self._owner_history.appendleft(owner_table)
        self._listener_history.appendleft(listeners)
        self._last_owners = dict(owner_of.by_pid)

        events, settled = self._closes_to_report(events, tcp)
        closed = self._closed_samples(events, settled, owner_of, mono)
        if ebpf is not None:
            live_cookies = {rec.cookie for rec in chain(tcp, udp)}
            closed += self._closed_udp_samples(ebpf, live_cookies, owner_of)
            ebpf.finish_tick(live_cookies, (event.cookie for event in events))
        if closed:
            # In C, not a Python loop: under churn this runs every tick.
            listed_closed = map({s.key for s in closed}.__contains__, map(_KEY_OF, sockets))
            sockets = list(compress(sockets, map(not_, listed_closed)))
        self._destroyed.expire(mono)
        self._procs.forget_missing(owner_of.live_pids())
        return Snapshot(
            monotonic=mono, wall=wall, sockets=sockets, interfaces=interfaces, closed=closed
        )

    def _dump(
        self, family: int, protocol: int, ext: int, known: RawRecords | None = None, states: int = ALL_STATES_MASK
    ) -> list[DiagSocket]:
        """One dump, retried once (the dumper reopens its socket after a failure)."""
        try:
            return self._dumper.dump(family, protocol, ext, states, known)
        except OSError as exc:
            log.info("sock_diag dump failed (%s), retrying once", exc)
            return self._dumper.dump(family, protocol, ext, states, known)

    def _tcp_samples(
        self,
        records: list[DiagSocket],
        owner_of: _OwnerLookup,
        owner_table: OwnerTable,
        listeners: ListenerTable,
        with_timewait: bool = True,
        owners_as_before: bool = False,
        reattributed: set[int] | None = None,
        listed: set[int] | None = None,
    ) -> list[SocketSample]:
        """SocketSamples of a TCP dump; fills owner_table and listeners for destroy events.

        A full socket whose record (state, addresses, counters: everything
        the dump says) and owner are what they were at the previous tick is
        handed on as the very SocketSample object of that tick (see
        `_BUILT_FROM`): most sockets of a busy machine are idle at any given
        second, and `MonitorState.apply` then skips them just as cheaply.
        A remnant is looked at once (see `_Remnant`); on the ticks that list
        remnants, those listed before are sorted out first, so that the
        passes over the other sockets never see them. `with_timewait`: the
        dump listed TIME_WAIT remnants; without, those of the last dump that
        did are handed on. `owners_as_before`: every socket but those of the
        inodes `reattributed` has the owner it had at the last tick (see
        _owners_as_before): unchanged sockets are then handed on in bulk, by
        maps that run in C, not one by one.
        """
        # The backend's hot loop (10,000 sockets a tick): attribute and
        # method lookups are hoisted into locals, caches are read inline.
        endpoints = self._endpoints
        inode_owner = self._owners.owners.get
        shared_inodes = self._owners.shared
        owner_info, by_pid, by_uid = owner_of.info, owner_of.by_pid, owner_of.by_uid
        previous = self._owner_history[0] if self._owner_history else {}
        entries = self._tcp_records.entries
        all_records = records
        destroyed = self._destroyed
        remnants, remnant_rows, timewait_keys = self._remnants, self._remnant_rows, self._timewait_keys
        remnants_before = remnants.get
        self._timewait_before = {}
        kept_remnants = stored_remnants = 0  # remnants listed again as they were / made anew
        family_names = _FAMILY_NAMES
        state_names = TCP_STATES
        last_tick = entries.get
        ebpf_owner = self._ebpf_owner if self._ebpf is not None else None
        list_listeners = not owners_as_before
        if with_timewait and self._rows_without_cookie:
            self._forget_rows_without_cookie()
        if with_timewait and remnants:
            # First: in a TIME_WAIT storm most of this dump is remnants listed
            # before, which the passes below then never look at.
            records, kept_remnants = self._hand_on_remnants(records, remnants)
        # The samples in the dump's order, each where its socket is (None for
        # a record that makes none; remnants, which make none here, are left
        # out): a socket that did not change keeps its place in the list from
        # tick to tick, which MonitorState relies on to tell it unchanged
        # without looking its key up.
        sample_at: list[SocketSample | None]
        rest_at: Sequence[int]
        if owners_as_before:
            self._list_listeners(records, listeners, owner_of)  # all of them: not again below
            sample_at, records, rest_at = self._hand_on_unchanged(records, reattributed)
        else:
            sample_at, rest_at = [None] * len(records), range(len(records))
        for at, record in zip(rest_at, records):
            family, state, sport, dport, src, dst, uid, inode, counters, cookie = record
            # The parser's entry for this socket (None: no cookie, or not kept):
            # what was built from it at the last tick, looked up once.
            entry = last_tick(cookie)
            if inode:
                pid = inode_owner(inode)
                found = by_pid.get(pid) if pid is not None else by_uid.get(uid)
                info = found if found is not None else owner_info(pid, uid)
                if info[0] is None and ebpf_owner is not None:
                    info = ebpf_owner(cookie, owner_of) or info
                if state == TCP_LISTEN and list_listeners:
                    _note_listener(listeners, (family, src, sport), inode, info, shared_inodes)
                # The dump returns an unchanged record as last tick's object.
                if entry is not None and entry[_BUILT_FROM] is record and entry[_BUILT_OWNER] == info:
                    sample_at[at] = entry[_BUILT_SAMPLE]
                    continue
            elif counters is None and state in _TIMEWAIT_STATES:
                remnant = remnants_before(cookie) if cookie else None
                if remnant is None or remnant.record is not record:
                    remnant = self._remnant(record, destroyed)
                    if cookie and remnant.sample is None:
                        remnant_rows.pop(cookie, None)  # hidden now (its destroy event came)
                sample = remnant.sample
                if cookie:
                    remnants[cookie] = remnant
                    stored_remnants += 1
                if sample is not None:
                    ident = cookie or sample.key
                    remnant_rows[ident] = sample
                    timewait_keys[remnant.endpoints] = (ident, sample.key)
                    if not cookie:
                        self._rows_without_cookie[ident] = remnant.endpoints
                continue
            state_name = state_names.get(state)
            if state_name is None:
                continue  # a pseudo-state (bound-only sockets) we did not ask for
            if state == TCP_SYN_RECV and not inode and counters is None:
                # A handshake in progress (a request socket, with a cookie of
                # its own): the connection is the socket it becomes, listed
                # once established. Keyed by cookie it would be a second row.
                continue
            local_ip, remote_ip, remote_port, key = endpoints("TCP", family, src, sport, dst, dport, inode, cookie)
            known = previous.get(key)
            if known is None and entry is not None:  # handed on unchanged at the last tick
                known = _built_owner_entry(entry)
            if inode:
                pid, name, user = info
            elif known is not None:  # orphaned by close() or exit: its last owner
                pid, name, user = known.pid, known.process_name, known.user
            else:  # in the accept queue (no file yet), or never seen with one
                pid = name = user = None
            if pid is None and ebpf_owner is not None and cookie:
                pid, name, user = ebpf_owner(cookie, owner_of) or (None, name, user)
            side = None
            if remote_ip is None:  # a listener: it moves no bytes itself
                sent = received = 0 if counters is not None else None
            else:
                # The SYN side, from the socket's own counters once they tell
                # (tcpbytes.opened_actively); kept once known. Undecided
                # (None) counts as active: at most one byte low, never high.
                side = known.side if known is not None else None
                if side is None and counters is not None:
                    side = opened_actively(counters, state)
                sent, received = payload(counters, state, side is not False) if counters is not None else _NO_BYTES
                if not (inode and cookie):  # else made from what is kept below, when asked
                    owner_table[key] = OwnerEntry(pid, name, user, side, sent, received)
            sample = SocketSample(key, "TCP", family_names[family], local_ip, sport, remote_ip,
                                  remote_port, state_name, pid, name, user, sent, received)
            sample_at[at] = sample
            if entry is not None and entry[_RECORD] is record:
                if inode:
                    # Its owner entry (pid, name, user, side, bytes) is made
                    # from this when asked (_built_owner_entry), not kept in
                    # this tick's owner_table too: on a first tick, or a busy
                    # one, that is 100,000 entries kept OWNER_GENERATIONS ticks.
                    entries[cookie] = (*entry[:_BUILT_FROM], record, info, sample, side)
                elif entry[_BUILT_FROM] is not None:  # orphaned: its entry is in owner_table now
                    entries[cookie] = (*entry[:_BUILT_FROM], *_NOTHING_BUILT)
            elif inode and cookie and remote_ip is not None:
                # A record the parser does not keep (a layout it could not
                # learn): a destroy event finds its owner here.
                owner_table[key] = OwnerEntry(pid, name, user, side, sent, received)
        self._take_superseded(owner_table)
        self._name_listeners_as_before(listeners)
        if with_timewait and len(remnants) != kept_remnants + stored_remnants:
            self._forget_unlisted_remnants(all_records, listed)
        out: list[SocketSample] = list(filter(None, sample_at))
        out += remnant_rows.values()
        return out

    def _take_superseded(self, owner_table: OwnerTable) -> None:
        """The parser's entries that went with a sample built (their socket no
        longer listed, or no longer a full socket): their owner entries go to
        this tick's owner_table, where a late destroy event finds them for
        OWNER_GENERATIONS ticks."""
        known = self._tcp_records
        for gone in known.superseded:
            entry = _built_owner_entry(gone)
            if entry is not None:
                owner_table.setdefault(gone[_BUILT_SAMPLE].key, entry)
        known.superseded.clear()

    def _owners_as_before(self, owner_of: _OwnerLookup) -> bool:
        """True when each process that owned a socket at the last tick is still
        there, as it was (same name and user): then every socket the inode
        index did not re-attribute since (SocketOwners.changed) has the owner
        it had. Looks each of those processes up (this tick's owner_of keeps
        them)."""
        for pid, info in self._last_owners.items():
            if pid is None:
                continue
            name, user = self._procs.lookup(pid)
            if name is None and user is None:
                return False  # gone, or unreadable now: looked at socket by socket
            now = owner_of.by_pid[pid] = (pid, name, user)
            if now != info:
                return False
        return True

    def _list_listeners(self, records: list[DiagSocket], listeners: ListenerTable, owner_of: _OwnerLookup) -> None:
        """Fill `listeners` with the listening sockets among `records` (see _tcp_samples)."""
        inode_owner = self._owners.owners.get
        shared_inodes = self._owners.shared
        for family, _state, sport, _dport, src, _dst, uid, inode, _counters, _cookie in compress(
            records, map(eq, map(_STATE_OF, records), repeat(TCP_LISTEN))
        ):
            if inode:
                _note_listener(listeners, (family, src, sport), inode, owner_of.info(inode_owner(inode), uid),
                               shared_inodes)

    def _name_listeners_as_before(self, listeners: ListenerTable) -> None:
        """Give a listener whose owner this tick does not know the owner it had
        at the latest tick that knew it (the same inode: the same socket).

        A server that exits once it has served its last connections does so
        after the dump listed its listener but before the tick looks its pid
        up (after a /proc walk: up to its time budget under load): the pid
        is gone, _OwnerLookup drops what it held, and the listener is listed
        with no owner, which hid the owner of the tables before it. Yet the
        connections it accepted that closed within this tick are that
        process's (see _closed_samples): they have no other owner to find.
        Carried from table to table, an owner once known stays while the
        listener is listed (an index that lost it for longer than
        OWNER_GENERATIONS ticks too); a new listener on the same address is
        another inode and gets nothing.
        """
        history = self._listener_history
        if not history:
            return
        for key, holders in listeners.items():
            for inode, info in holders.items():
                if info[1] is not None:
                    continue
                for before in history:
                    known = before.get(key, _NO_HOLDERS).get(inode)
                    if known is not None and known[1] is not None:
                        holders[inode] = known
                        break

    def _hand_on_unchanged(
        self, records: list[DiagSocket], reattributed: set[int] | None,
    ) -> tuple[list[SocketSample | None], list[DiagSocket], list[int]]:
        """Hand on, in bulk, the sockets whose record is last tick's and whose inode
        the index did not re-attribute (their owner is last tick's too: see
        _owners_as_before); their entries stay as they are (where destroy
        events find their owner). Returns the samples by place in `records`
        (None where not handed on), the other records and their places."""
        # Each list here is 8 bytes a socket (0.8 MB at 100,000): dropped as
        # soon as done with, they are not all alive at once at the tick's peak.
        last = list(map(self._tcp_records.entries.get, map(_COOKIE_OF_RECORD, records), repeat(_NOT_SEEN)))
        changed = list(map(is_not, records, map(_BUILT_FROM_OF, last)))
        if reattributed:  # another record, or an owner that may have changed
            changed = list(map(or_, changed, map(reattributed.__contains__, map(_INODE_OF_RECORD, records))))
        sample_at: list[SocketSample | None] = list(map(_BUILT_SAMPLE_OF, last))
        del last
        rest_at = list(compress(range(len(records)), changed))
        rest = list(compress(records, changed))
        del changed
        for at in rest_at:
            sample_at[at] = None  # last tick's sample of a socket that changed, or none
        return sample_at, rest, rest_at

    @staticmethod
    def _hand_on_remnants(
        records: list[DiagSocket], remnants: dict[Hashable, _Remnant],
    ) -> tuple[list[DiagSocket], int]:
        """Sort out, in bulk (in C), the remnants the dump returned as the records
        of the last dump that listed remnants (see _Remnant): they stay in
        `remnants` as they are, their rows too. Returns the other records, in
        their order, and how many stayed. A TIME_WAIT storm leaves tens of
        thousands of them, listed again 1 tick in 5."""
        last = map(remnants.get, map(_COOKIE_OF_RECORD, records), repeat(_NOT_A_REMNANT))
        rest = list(compress(records, map(is_not, records, map(_RECORD_OF, last))))
        return rest, len(records) - len(rest)

    def _forget_unlisted_remnants(self, records: list[DiagSocket], listed: set[int] | None) -> None:
        """Drop the remnants (and their rows) that a dump listing every state
        no longer lists: gone from the kernel. Their 4-tuples stay for this
        tick in _timewait_before, for a destroy event still on its way.
        `listed`: the dump's cookies, if already gathered."""
        if listed is None:
            listed = set(map(_COOKIE_OF_RECORD, records))
        remnants, remnant_rows = self._remnants, self._remnant_rows
        for cookie in remnants.keys() - listed:
            gone = remnants.pop(cookie)
            remnant_rows.pop(cookie, None)
            found = self._timewait_keys.pop(gone.endpoints, None)
            if found is not None:
                self._timewait_before[gone.endpoints] = found

    def _forget_rows_without_cookie(self) -> None:
        """Before a dump that lists every state: drop the remnant rows keyed by
        4-tuple (a remnant without a cookie, never seen on kernels we
        support): the dump lists them again if they are still there."""
        for ident, endpoints in self._rows_without_cookie.items():
            self._remnant_rows.pop(ident, None)
            self._timewait_keys.pop(endpoints, None)
        self._rows_without_cookie.clear()

    def _remnant(self, record: DiagSocket, destroyed: RecentKeys) -> _Remnant:
        """What a TIME_WAIT/FIN_WAIT2 remnant (no inode, no counters) is: the row
        of a connection whose close the daemon did not see, or nothing (its
        row ended at its destroy event)."""
        family, state, sport, dport, src, dst, _uid, _inode, _counters, cookie = record
        local_ip, remote_ip, remote_port, key = self._endpoints("TCP", family, src, sport, dst, dport, 0, cookie)
        # By 4-tuple, not cookie: a socket never dumped had no cookie yet
        # when its remnant was made, so the remnant got another.
        endpoints_key = (local_ip, sport, remote_ip, remote_port)
        if endpoints_key in destroyed:
            return _Remnant(record, None, endpoints_key)  # its row already ended at the destroy event
        # The full socket is gone; the latest dumps may still know its owner,
        # which the remnant keeps (it is not attributed again).
        gone = self._remembered_owner(key) or _NO_OWNER
        pid, name, user = gone.pid, gone.process_name, gone.user
        return _Remnant(record, SocketSample(key, "TCP", _FAMILY_NAMES[family], local_ip, sport, remote_ip,
                                             remote_port, TCP_STATES[state], pid, name, user), endpoints_key)

    def _udp_samples(self, records: list[DiagSocket], owner_of: _OwnerLookup) -> list[SocketSample]:
        """SocketSamples of a UDP dump: bytes only in root mode (the kernel keeps none)."""
        endpoints = self._endpoints
        inode_owner = self._owners.owners.get
        owner_info = owner_of.info
        ebpf = self._ebpf
        out: list[SocketSample] = []
        for family, _state, sport, dport, src, dst, uid, inode, _counters, cookie in records:
            local_ip, remote_ip, remote_port, key = endpoints("UDP", family, src, sport, dst, dport, inode, cookie)
            pid, name, user = owner_info(inode_owner(inode), uid)
            if ebpf is None:
                out.append(SocketSample(key, "UDP", _FAMILY_NAMES[family], local_ip, sport, remote_ip,
                                        remote_port, "NONE", pid, name, user))
                continue
            if pid is None:
                pid, name, user = self._ebpf_owner(cookie, owner_of) or (pid, name, user)
            sent, received = ebpf.udp_bytes(cookie)
            out.append(SocketSample(key, "UDP", _FAMILY_NAMES[family], local_ip, sport, remote_ip,
                                    remote_port, "NONE", pid, name, user, sent, received, "ebpf"))
        return out

    def _closed_udp_samples(
        self, ebpf: EbpfAttribution, live_cookies: set[int], owner_of: _OwnerLookup
    ) -> list[SocketSample]:
        """Closed rows, with final counts, of the UDP sockets closed since the last tick
        (keyed by cookie, like their rows: a row a dump listed ends there)."""
        out = []
        for cookie, counts, (sent, received) in ebpf.closed_udp(live_cookies):
            family, src, dst = counts.family, counts.local_addr, counts.remote_addr
            if family not in _FAMILY_NAMES:
                continue
            local_ip, remote_ip, remote_port, key = self._endpoints(
                "UDP", family, src, counts.local_port, dst, counts.remote_port, 0, cookie)
            pid, name, user = self._ebpf_owner(cookie, owner_of) or (None, None, None)
            out.append(SocketSample(key, "UDP", _FAMILY_NAMES[family], local_ip, counts.local_port, remote_ip,
                                    remote_port, "NONE", pid, name, user, sent, received, "ebpf"))
        return out

    def _ebpf_owner(self, cookie: int, owner_of: _OwnerLookup) -> tuple | None:
        """(pid, process_name, user) the eBPF maps know for a socket, or None.

        A live process is named as /proc names it; one that exited (or whose
        pid now belongs to another program) by the comm the kernel recorded.
        """
        known = self._ebpf.owner(cookie) if self._ebpf is not None else None
        if known is None:
            return None
        info = owner_of.info(known.pid, known.uid)
        if info[0] is None or not (info[1] or "").startswith(known.comm):
            info = (known.pid, known.comm, owner_of.user_name(known.uid))
        return info

    def _closes_to_report(self, events: list[DiagSocket], dumped: list[DiagSocket],
                          ) -> tuple[list[DiagSocket], dict[tuple, int]]:
        """This tick's destroy events to report, and for those whose one open
        reading their peer settles, the peer's final payload sent, by the
        end's connection (family, local addr, port, remote addr, port).

        tcp_info leaves one reading open (tcpbytes.peer_fin_assumed): whether
        an end that closed first was destroyed before its peer's FIN came.
        When the peer is on this machine (loopback, or our own address), the
        payload it sent settles it, read where the kernel counts it exactly
        (4.19+): in its own destroy event, of this tick or the last, or in
        this tick's dump if it is still open with nothing in flight. A peer in
        none of them, and not destroyed in an earlier tick, was destroyed after
        the dump (it had our FIN, so it was closing), and its event comes next
        tick: the end waits one tick for it, once. Only the ends with that
        open reading are looked at; the other ends are indexed when one is."""
        held, self._held_closes = self._held_closes, []
        if held:
            events = held + events
        ended_before, self._ended_before = self._ended_before, events
        report: list[DiagSocket] = []
        settled: dict[tuple, int] = {}
        ended: dict[tuple, DiagSocket] | None = None
        still_open: dict[tuple, DiagSocket] | None = None
        for at, event in enumerate(events):
            family, state, sport, dport, src, dst, _uid, _inode, counters, cookie = event
            if (counters is None or not dport or counters.bytes_sent is None
                    or not peer_fin_assumed(counters, state, bool(opened_actively(counters, state)))):
                report.append(event)  # nothing open (or, before 4.19, nothing exact to settle it with)
                continue
            local_ip, remote_ip, _, _ = self._endpoints("TCP", family, src, sport, dst, dport, 0, cookie)
            if remote_ip != local_ip and classify_scope(remote_ip) != "loopback":
                report.append(event)  # the peer is on another machine: nothing here settles it
                continue
            peer = (family, dst, dport, src, sport)
            if ended is None:
                ended = _by_connection(chain(ended_before, events))
            other = ended.get(peer)
            if other is None:
                if still_open is None:
                    still_open = _by_connection(dumped)
                other = still_open.get(peer)
            if other is not None:
                sent = _exact_payload_sent(other)
                if sent is not None:
                    settled[(family, src, sport, dst, dport)] = sent
            elif at >= len(held) and (remote_ip, dport, local_ip, sport) not in self._destroyed:
                self._held_closes.append(event)  # its peer is closing: its event comes next tick
                continue
            report.append(event)
        return report, settled

    def _closed_samples(self, events: list[DiagSocket], settled: dict[tuple, int], owner_of: _OwnerLookup,
                        mono: float) -> list[SocketSample]:
        """SocketSamples (final counters) of the destroy events worth reporting;
        `settled`: the final payload sent of the loopback peers that settle an
        end's one open reading, by the end's connection (see _closes_to_report)."""
        out: list[SocketSample] = []
        for family, state, sport, dport, src, dst, uid, _inode, counters, cookie in events:
            if counters is None or dport == 0:
                continue  # a listener, an aborted socket (zeroed by the kernel), an old kernel
            if counters.bytes_acked == 0 and counters.bytes_received == 0:
                continue  # never established, nothing moved: a failed connect
            local_ip, remote_ip, _, key = self._endpoints("TCP", family, src, sport, dst, dport, 0, cookie)
            known = self._remembered_owner(key)
            remnant_row = self._end_remnant_row((local_ip, sport, remote_ip, dport))
            if known is None and remnant_row is not None:
                # Never dumped, but its remnant was, and became a row before
                # this event came: that row is this connection's, and ends now.
                key = remnant_row
            # Final counters say which side opened, but for one reading (see
            # tcpbytes): then what a dump saw, else the passive side, which
            # a graceful close (by far the commonest) gives.
            side = opened_actively(counters, state)
            if side is None:
                side = known.side if known is not None and known.side is not None else False
            if known is not None:
                pid, name, user, _side, last_sent, last_received = known  # an OwnerEntry
                sent, received = payload(counters, state, side)
                # What a dump showed, in a state where the FINs are known, is
                # exact: the final count cannot be lower. This settles the
                # one case tcpbytes cannot (closed before the peer's FIN).
                if last_sent is not None and last_sent > sent:
                    sent = last_sent
                if last_received is not None and last_received > received:
                    received = last_received
                if name is None and not side:
                    # Only ever seen in the accept queue (no file, so no
                    # owner yet): its listener's, as below.
                    pid, name, user = self._listener_owner(family, src, sport) or (pid, name, user)
            else:  # lived shorter than a tick: never in a dump
                # An accepted socket is its listener's owner's; a client's
                # owner cannot be known from the event (no inode, no pid).
                listener = None if side else self._listener_owner(family, src, sport)
                pid, name, user = listener or owner_of.info(None, uid)
                sent, received = payload(counters, state, side)
            # tcpbytes took the peer's FIN as counted; the peer's payload
            # sent, where known, says whether it was (see _closes_to_report).
            if settled and settled.get((family, src, sport, dst, dport)) == received + 1:
                received += 1
            if pid is None and self._ebpf is not None:  # root mode knows who it was
                pid, name, user = self._ebpf_owner(cookie, owner_of) or (pid, name, user)
            out.append(SocketSample(
                key, "TCP", _FAMILY_NAMES[family], local_ip, sport, remote_ip, dport,
                TCP_STATES.get(state, "CLOSE"), pid, name, user, sent, received,
            ))
            # The connection is over: a later event on this 5-tuple (a port
            # reused) is another socket and must not inherit its owner or bytes.
            for table in self._owner_history:
                table.pop(key, None)
            self._tcp_records.entries.pop(key, None)  # type: ignore[call-overload]
        return out

    # -- helpers -----------------------------------------------------------------
    def _endpoints(
        self, protocol: str, family: int, src: bytes, sport: int, dst: bytes, dport: int, inode: int,
        cookie: int,
    ) -> tuple[str, str | None, int | None, Hashable]:
        """(local_ip, remote_ip, remote_port, key) of a dump record or destroy event.

        The one place that builds `SocketSample.key` (see the module docstring):
        the kernel socket cookie; without one (never seen on a kernel we
        support) the 5-tuple with the protocol, plus the inode for a socket
        without a remote end.
        """
        texts = self._addresses.by_family[family]
        local_ip = texts.get(src) or self._addresses.format(family, src)
        if dport == 0 and dst == UNSPECIFIED_ADDR:
            return local_ip, None, None, cookie or (protocol, local_ip, sport, None, None, inode)
        remote_ip = texts.get(dst) or self._addresses.format(family, dst)
        return local_ip, remote_ip, dport, cookie or (protocol, local_ip, sport, remote_ip, dport)

    def _end_remnant_row(self, endpoints: tuple) -> Hashable | None:
        """The key of the remnant row of these endpoints, which a destroy event
        ends now, if there is one; it is not handed on any more."""
        found = self._timewait_keys.pop(endpoints, None) or self._timewait_before.pop(endpoints, None)
        if found is None:
            return None
        ident, key = found
        self._remnant_rows.pop(ident, None)
        self._remnants.pop(ident, None)
        return key

    def _remember_destroyed(self, events: list[DiagSocket], mono: float) -> None:
        """Note the 4-tuples of the destroy events worth reporting (see _closed_samples)."""
        remember = self._destroyed.add
        for family, _state, sport, dport, src, dst, _uid, _inode, counters, cookie in events:
            if counters is None or dport == 0 or (counters.bytes_acked == 0 and counters.bytes_received == 0):
                continue
            local_ip, remote_ip, _, _ = self._endpoints("TCP", family, src, sport, dst, dport, 0, cookie)
            remember((local_ip, sport, remote_ip, dport), mono)

    def _listener_owner(self, family: int, src: bytes, sport: int) -> tuple | None:
        """(pid, process_name, user) of the listener that accepted a connection
        on (src, sport), from the latest dumps; None if unknown.

        Several listeners (SO_REUSEPORT) or a listener held by several
        processes: the name when they all share it, pid None.
        """
        for listeners in self._listener_history:
            holders = listeners.get((family, src, sport)) or listeners.get((family, UNSPECIFIED_ADDR, sport))
            if holders:
                pids = {h[0] for h in holders.values()}
                names = {h[1] for h in holders.values()}
                users = {h[2] for h in holders.values()}
                name = names.pop() if len(names) == 1 else None
                if name is None:
                    return None
                return (pids.pop() if len(pids) == 1 else None, name, users.pop() if len(users) == 1 else None)
        return None

    def _remembered_owner(self, key: Hashable) -> OwnerEntry | None:
        """The OwnerTable entry of key in the latest dump that listed it."""
        for table in self._owner_history:
            known = table.get(key)
            if known is not None:
                return known
        # Listed, unchanged, at the last tick: its entry is where it was made.
        last = self._tcp_records.entries.get(key)  # type: ignore[call-overload]
        return _built_owner_entry(last) if last is not None else None

    @staticmethod
    def _only_own_sockets(*dumps: list[DiagSocket]) -> bool:
        """True when every full socket belongs to our uid (so we can read its owner)."""
        euid = os.geteuid()
        # In C, not a generator: a daemon without root runs this every tick.
        records = list(chain.from_iterable(dumps))
        full = compress(records, map(_INODE_OF_RECORD, records))
        return all(map(eq, map(_UID_OF, full), repeat(euid)))

    # -- status ------------------------------------------------------------------
    def status(self) -> BackendStatus:
        warnings = list(self._dump_warnings)
        if not self._attribution_complete:
            warnings.append(
                f"running as uid {os.geteuid()} without root: sockets of other users are shown "
                "without process; run as root to attribute them"
            )
        if self._destroy_error:
            warnings.append(self._destroy_error)
        if self._destroy.failure:
            warnings.append(self._destroy.failure + ": connections that open and close between two samples "
                            "are not counted any more")
        lost = self._destroy.events_lost
        if lost:
            warnings.append(
                f"{lost} TCP destroy events lost (netlink buffer overflow): bytes of connections "
                "that closed then are missing from per-connection totals"
            )
        if self._ebpf is not None:
            warnings += self._ebpf.warnings()
        elif self._ebpf_wanted and self._started:
            warnings.append(self._root_mode_off_warning())
        return BackendStatus(
            privileged=is_root(),
            attribution_complete=self._attribution_complete,
            warnings=warnings,
            events_lost=lost,
            root_mode={"active": self._ebpf is not None, "reason": self._ebpf_reason},
        )


#: What LinuxBackend keeps with each of the parser's entries (netlink.RawRecords:
#: its CALLER_FIELDS): the record the socket's latest SocketSample was built
#: from, its owner then (pid, process_name, user), that sample, and
#: OwnerEntry.side (None: not known yet, or no remote end). While the dump
#: returns that very record and the owner is equal, the sample is handed on:
#: nothing derived from them could differ. The socket's OwnerTable entry is
#: not kept but made from them when asked (a destroy event, a change).
_RECORD = 3  # the parser's record, the latest one the dump listed
_BUILT_FROM, _BUILT_OWNER, _BUILT_SAMPLE, _BUILT_SIDE = 4, 5, 6, 7
_NOTHING_BUILT = (None,) * CALLER_FIELDS
assert _BUILT_SIDE + 1 - _BUILT_FROM == CALLER_FIELDS


def _note_listener(listeners: ListenerTable, where: tuple, inode: int, info: tuple, shared: set[int]) -> None:
    """Note a listening socket and its owner in a tick's ListenerTable. One
    held by several processes (forked workers) has no one pid: its name
    still counts."""
    holders = listeners.get(where)
    if holders is None:
        holders = listeners[where] = {}
    holders[inode] = info if inode not in shared else (None,) + info[1:]


def _built_owner_entry(entry: tuple) -> OwnerEntry | None:
    """The OwnerTable entry of the socket of a parser entry, made from the
    sample built from it; None if none was, or for a listener (no entry)."""
    s = entry[_BUILT_SAMPLE]
    if s is None or s.remote_ip is None:
        return None
    return OwnerEntry(s.pid, s.process_name, s.user, entry[_BUILT_SIDE], s.bytes_sent, s.bytes_received)


def _by_connection(records: Iterable[DiagSocket]) -> dict[tuple, DiagSocket]:
    """Connected records (dump or destroy events) by (family, local addr,
    port, remote addr, port): where an end looks its peer up."""
    return {(r.family, r.local_addr, r.local_port, r.remote_addr, r.remote_port): r
            for r in records if r.remote_port}


def _exact_payload_sent(record: DiagSocket) -> int | None:
    """The payload a TCP socket sent, when its counters give it exactly: the
    kernel counts the payload sent (4.19+) and nothing is in flight (a
    destroy event's queues are purged: never). None otherwise."""
    c = record.counters
    if c is None or c.bytes_sent is None or c.unacked:
        return None
    return payload(c, record.state, bool(opened_actively(c, record.state)))[0]


class _Remnant(NamedTuple):
    """A TIME_WAIT/FIN_WAIT2 remnant as the dumps list it, by its cookie.

    The kernel's record of a remnant does not change while it lives (but for
    FIN_WAIT2 becoming TIME_WAIT): while the dump returns it as this very
    record, it is what it was the first time, a row (`sample`, handed on as
    is) or nothing (None: the destroy event ended the connection's row).
    """

    record: DiagSocket
    sample: SocketSample | None
    endpoints: tuple  # (local_ip, local_port, remote_ip, remote_port)


_NOT_SEEN = (None,) * (_BUILT_SIDE + 1)
_NOT_A_REMNANT = _Remnant(None, None, ())  # type: ignore[arg-type]

_COOKIE_OF_RECORD = itemgetter(9)
_INODE_OF_RECORD = itemgetter(7)
_STATE_OF = itemgetter(1)
_UID_OF = itemgetter(6)
_RECORD_OF = itemgetter(0)  # of a _Remnant
_BUILT_FROM_OF = itemgetter(_BUILT_FROM)
_BUILT_SAMPLE_OF = itemgetter(_BUILT_SAMPLE)


class RecentKeys:
    """A set of keys, each remembered for between `ttl` and 2 * `ttl` seconds.

    Two generations of plain sets, rotated every `ttl` seconds: cheaper than
    an expiry time per key (no per-key float, no ordered dict), and a key is
    kept at least `ttl` as long as a generation holds fewer than `max_keys`
    (past that it rotates early: memory stays bounded under any churn).
    """

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._ttl = ttl
        self._max_keys = max_keys
        self._current: set = set()
        self._previous: set = set()
        self._rotated_at: float | None = None

    def add(self, key, now: float) -> None:
        if self._rotated_at is None:
            self._rotated_at = now
        self._current.add(key)
        if len(self._current) >= self._max_keys:
            self._rotate(now)

    def __contains__(self, key) -> bool:
        return key in self._current or key in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def expire(self, now: float) -> None:
        """Forget the generation older than ttl, if it is time."""
        if self._rotated_at is not None and now - self._rotated_at >= self._ttl:
            self._rotate(now)

    def _rotate(self, now: float) -> None:
        self._previous, self._current = self._current, set()
        self._rotated_at = now


class _OwnerLookup:
    """(pid, process_name, user) of sockets during one tick, each pid looked up once.

    A pid whose process is gone is dropped from the inode index (its sockets
    may have passed to another process) and reported as None. Without a pid,
    the user is the socket's owner uid, which the kernel reports for every
    full socket.
    """

    def __init__(self, processes: ProcessCache, owners: SocketOwners) -> None:
        self._processes = processes
        self._owners = owners
        self._user_names: UserNames = processes.user_names
        #: What info() answered so far, for hot loops to read inline first.
        self.by_pid: dict[int, tuple] = {}
        self.by_uid: dict[int, tuple] = {}

    def info(self, pid: int | None, uid: int) -> tuple:
        """(pid or None, process_name, user) of a socket held by pid, owned by uid."""
        if pid is not None:
            known = self.by_pid.get(pid)
            if known is None:
                known = self.by_pid[pid] = self._look_up(pid, uid)
            return known
        known = self.by_uid.get(uid)
        if known is None:
            known = self.by_uid[uid] = (None, None, self._user_names(uid))
        return known

    def _look_up(self, pid: int, uid: int) -> tuple:
        name, user = self._processes.lookup(pid)
        if name is None and user is None and not os.path.exists(f"/proc/{pid}"):
            self._owners.forget_pid(pid)
            return (None, None, self._user_names(uid))
        return (pid, name, user)

    def user_name(self, uid: int) -> str | None:
        return self._user_names(uid)

    def live_pids(self) -> set[int]:
        return {info[0] for info in self.by_pid.values() if info[0] is not None}
