"""Reverse DNS for remote addresses, off the sampling path.

`ReverseResolver.name(ip)` never blocks: it answers from a cache and, when
the address is not cached (or its entry expired), queues a lookup for a
small pool of worker threads and answers None (or the expired name) for
now; the name appears at a later call once the lookup is done. So a slow or
dead DNS server never delays a tick or a reply: it only delays names.

Bounds (the daemon never grows without bound, whatever the traffic):
- the cache holds at most `max_cache` addresses; past it the oldest entries
  go first;
- at most `max_in_flight` lookups are queued or running; past it a miss
  queues nothing and is asked again at a later call;
- `workers` threads at most, started on the first lookup (none at all when
  no address is ever asked, e.g. with resolving off), daemon threads so
  that a lookup hung in the C library never holds up the daemon's exit.

Entries expire: a name after `ttl` (an hour: getnameinfo does not say the
record's own TTL), no name or a failed lookup after `negative_ttl` (a few
minutes, so that a DNS outage does not hide names for long).

Loopback and link-local addresses are named only by the hosts file
(127.0.0.1 -> localhost): no DNS server knows them, and asking one would
send a query off the machine about addresses that never leave it. Other
addresses go to `lookup`, by default the system's getnameinfo (hosts file
then the configured DNS servers, per nsswitch.conf); tests inject their own.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
import time
from typing import Callable

from common.models import ip_address_of

log = logging.getLogger("netmond.resolver")

#: Addresses cached at most (10,000 names: about 3 MB of RSS; see README, "Remote names").
MAX_CACHE = 16_384
#: Lookups queued or running at most.
MAX_IN_FLIGHT = 256
#: Worker threads: DNS lookups wait on the network, not the CPU.
WORKERS = 4
#: Seconds a name is kept.
TTL = 3600.0
#: Seconds "no name" (or a failed lookup) is kept.
NEGATIVE_TTL = 300.0
#: Longest DNS name (RFC 1035); a longer answer is not a name.
MAX_NAME = 253
#: Largest hosts file read (a real one is a few kB).
MAX_HOSTS_BYTES = 1024 * 1024
HOSTS_PATH = "/etc/hosts"

Lookup = Callable[[str], "str | None"]

# Characters of a host name as shown: letters, digits, '-', '.', '_' (some
# PTR records carry underscores). Anything else (a control character in a
# hostile PTR answer) makes the answer "no name".
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def clean_name(name: object) -> str | None:
    """`name` as a host name to show, or None when it is not one."""
    if not isinstance(name, str):
        return None
    name = name.rstrip(".")
    if not name or len(name) > MAX_NAME or not _NAME_CHARS.issuperset(name):
        return None
    return name


def system_lookup(ip: str) -> str | None:
    """The name the system gives `ip` (getnameinfo, which blocks), None if none."""
    try:
        host, _port = socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError, ValueError):  # gaierror is an OSError
        return None
    return host


def hosts_file_name(ip: str, path: str = HOSTS_PATH) -> str | None:
    """The first name the hosts file gives `ip` (as glibc's files backend does), else None."""
    try:
        want = ipaddress.ip_address(ip.split("%", 1)[0])
        with open(path, "rb") as fh:
            data = fh.read(MAX_HOSTS_BYTES)
    except (OSError, ValueError):
        return None
    for raw in data.decode("utf-8", "replace").splitlines():
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            addr = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        if addr == want:
            for name in fields[1:]:
                cleaned = clean_name(name)
                if cleaned is not None:
                    return cleaned
    return None


def lookup_kind(ip: str) -> tuple[str, str] | None:
    """How `ip` gets a name: ("hosts", address) for loopback and link-local,
    ("dns", address) for the rest, None for what has no name to ask for
    (unspecified, multicast, broadcast, not an address). An IPv4-mapped IPv6
    address is asked as the IPv4 address it maps."""
    addr = ip_address_of(ip)
    if addr is None:
        return None
    # An IPv4 address read from an IPv6 text was IPv4-mapped.
    mapped = addr.version == 4 and ":" in ip
    if addr.is_unspecified or addr.is_multicast or (addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
        return None
    if addr.is_loopback or addr.is_link_local:
        return "hosts", str(addr) if mapped else ip
    return "dns", str(addr)


class ReverseResolver:
    """A non-blocking, bounded, expiring cache of reverse lookups (see the module docstring)."""

    def __init__(
        self,
        lookup: Lookup = system_lookup,
        *,
        hosts_path: str = HOSTS_PATH,
        workers: int = WORKERS,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_cache: int = MAX_CACHE,
        ttl: float = TTL,
        negative_ttl: float = NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._hosts_path = hosts_path
        self._workers = max(1, workers)
        self.max_in_flight = max(1, max_in_flight)
        self.max_cache = max(1, max_cache)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        # ip -> (name or None, expiry on `clock`). Insertion order is age order:
        # an entry is re-inserted when refreshed, so the first is the oldest.
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._pending: set[str] = set()
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Lookups done, and those that gave no name (for status and tests).
        self.lookups = 0
        self.failures = 0

    # -- the caller's side (the daemon's event loop) ------------------------------
    def name(self, ip: str | None) -> str | None:
        """The cached name of `ip`; None while unknown or when it has none.

        A miss or an expired entry queues a lookup (within the bounds); an
        expired name is still returned until the new answer replaces it.
        """
        if not ip:
            return None
        entry = self._cache.get(ip)
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        self._request(ip)
        return entry[0] if entry is not None else None

    def _request(self, ip: str) -> None:
        # Cheap refusals first: this runs for every unnamed row read while
        # the pool is saturated (a dead DNS server and 10,000 remotes).
        if self._closed or ip in self._pending or len(self._pending) >= self.max_in_flight:
            return
        with self._lock:
            if ip in self._pending or len(self._pending) >= self.max_in_flight:
                return
            self._pending.add(ip)
            if len(self._threads) < self._workers and len(self._threads) < len(self._pending):
                thread = threading.Thread(target=self._work, name=f"resolver-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._queue.put(ip)

    def close(self) -> None:
        """Stop the workers once their current lookup returns (not waited for)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)

    # -- figures -------------------------------------------------------------------
    def cached(self) -> int:
        """Addresses in the cache (named or not)."""
        return len(self._cache)

    def in_flight(self) -> int:
        """Lookups queued or running."""
        return len(self._pending)

    def threads(self) -> int:
        return len(self._threads)

    # -- the workers' side ---------------------------------------------------------
    def _work(self) -> None:
        while True:
            ip = self._queue.get()
            if ip is None or self._closed:
                return
            name = None
            try:
                name = self._resolve(ip)
            except Exception:  # noqa: BLE001 - a lookup's failure is "no name", never a dead worker
                log.debug("reverse lookup of %s failed", ip, exc_info=True)
            self._store(ip, name)

    def _resolve(self, ip: str) -> str | None:
        kind = lookup_kind(ip)
        if kind is None:
            return None
        how, addr = kind
        if how == "hosts":
            return hosts_file_name(addr, self._hosts_path)
        return clean_name(self._lookup(addr))

    def _store(self, ip: str, name: str | None) -> None:
        expires = self._clock() + (self.ttl if name is not None else self.negative_ttl)
        with self._lock:
            self.lookups += 1
            if name is None:
                self.failures += 1
            self._cache.pop(ip, None)  # re-inserted last: the newest entry
            self._cache[ip] = (name, expires)
            # Trim to the cap, oldest first (expired or not).
            while len(self._cache) > self.max_cache:
                del self._cache[next(iter(self._cache))]
            self._pending.discard(ip)
